"""`train.py strategy=fsdp2` under torchrun: FSDP2 + context parallelism (Lightning's ModelParallelStrategy, gloo).

Two CPU ranks form a 1 × 2 (dp × cp) mesh: both read the same samples and draw the same noise, each computes half
of every clip's latent frames (3 frames: 2 per rank, one padded), and FSDP2 shards the parameters over both. After
three optimizer steps the exported weights must be those of the same run in one process (`strategy=single`), up to
float32 rounding. The checkpoint is a DCP folder, which a single process reads back (`dcp_to_torch_save`).
"""

from __future__ import annotations

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint
from sana_wm.testing.training import run_in_process_group, write_tiny_latent_shards

COMMON = ["model=tiny", "trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "trainer.max_steps=3",
          "checkpoint.every_n_steps=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
          # eps 1: Adam's update of a near-zero gradient is then about lr·g, not lr·sign(g), so float32 rounding of
          # such gradients (summed in another order across ranks) moves the weights by rounding, not by lr.
          # Clipping runs but never bites (a clipped step would hide a gradient off by a constant factor).
          "optim.lr=0.2", "optim.eps=1.0", "optim.grad_clip=100", "objective.caption_dropout=0", "logger=csv"]


@pytest.mark.slow
def test_fsdp2_with_cp2_matches_one_process(tmp_path):
    write_tiny_latent_shards(tmp_path / "shards", num_samples=3, samples_per_shard=3)
    runs = {"single": (1, ["strategy=single"]),
            "fsdp2": (2, ["strategy=fsdp2", "strategy.cp_size=2", "strategy.param_dtype=float32",
                          "trainer.devices=2", "strategy.process_group_backend=gloo"])}
    weights = {}
    for name, (nproc, extra) in runs.items():
        r = run_in_process_group(["train.py", *COMMON, *extra, f"data.train_shards={tmp_path / 'shards'}",
                                  f"output_dir={tmp_path / name}"], nproc=nproc, timeout=400)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        model = SanaWM.from_preset("tiny")
        load_checkpoint(model, tmp_path / name / "export" / "dit.safetensors")
        weights[name] = model.state_dict()
    init = SanaWM.from_preset("tiny").state_dict()  # the runs' weights moved away from the seed's
    moved = 0
    for k, ref in weights["single"].items():
        got = weights["fsdp2"][k]
        scale = (ref - init[k]).norm() if not torch.equal(ref, init[k]) else ref.norm().clamp_min(1e-12)
        moved += not torch.equal(ref, init[k])
        # 1e-3 of how far the weight moved, plus float32 rounding: a few ulps of the weight itself (norm weights near
        # 1 that barely moved: 7.5e-7 on a weight of norm 15) and 1e-6 for gradients that are almost all cancellation
        # (the softmax block's camera key bias, which softmax nearly ignores: 1.8e-7 of a 2e-5 move). A gradient
        # share lost or counted twice moves the weights by O(1) of their move (0.63 of 7.9 on x_embedder, measured).
        assert (got - ref).norm() <= 1e-3 * scale + 4e-7 * ref.norm() + 1e-6, (k, (got - ref).norm().item(),
                                                                               scale.item())
    assert moved > 50
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and any(p.suffix == ".distcp" for p in ckpt.iterdir())


@pytest.mark.slow
def test_fsdp2_bad_mesh_or_mismatched_configs_fail_on_every_rank(tmp_path):
    write_tiny_latent_shards(tmp_path / "shards", num_samples=1, samples_per_shard=1)
    base = [*COMMON, "strategy=fsdp2", "trainer.devices=2", "strategy.process_group_backend=gloo",
            f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}"]
    cases = {"strategy.cp_size=3 does not divide the world size 2": ["strategy.cp_size=3"],
             # each rank its own seed: the config digests differ
             "the ranks were started with different configs": ["strategy.cp_size=2", "seed=${oc.env:RANK}"]}
    for message, extra in cases.items():
        r = run_in_process_group(["train.py", *base, *extra], nproc=2, timeout=200)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and out.count(message) >= 2, out[-3000:]  # both ranks say it; none hangs
