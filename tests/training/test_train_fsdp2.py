"""`train.py strategy=fsdp2` under torchrun: FSDP2 + context parallelism (Lightning's ModelParallelStrategy, gloo).

Two CPU ranks form a 1 × 2 (dp × cp) mesh: both read the same samples and draw the same noise, each computes half
of every clip's latent frames (3 frames: 2 per rank, one padded), and FSDP2 shards the parameters over both. After
three optimizer steps the exported weights must be those of the same run in one process (`strategy=single`), up to
float32 rounding. The checkpoint is a DCP folder (one shard per rank); one process resumes it (resharded) and ends
where the uninterrupted one-process run does.
"""

from __future__ import annotations

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint
from sana_wm.testing.training import run_in_process_group, write_tiny_latent_shards
from sana_wm.training.export import export_training_checkpoint

COMMON = ["model=tiny", "trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "trainer.max_steps=3",
          "checkpoint.every_n_steps=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
          # eps 1: Adam's update of a near-zero gradient is then about lr·g, not lr·sign(g), so float32 rounding of
          # such gradients (summed in another order across ranks) moves the weights by rounding, not by lr.
          # Clipping runs but never bites (a clipped step would hide a gradient off by a constant factor).
          "optim.lr=0.2", "optim.eps=1.0", "optim.grad_clip=100", "objective.caption_dropout=0", "logger=csv"]


@pytest.mark.slow
def test_fsdp2_with_cp2_matches_one_process_and_resumes_on_one_rank(tmp_path):
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
    _close(weights["fsdp2"], weights["single"], init)
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and any(p.suffix == ".distcp" for p in ckpt.iterdir())
    # The DCP folder exports offline to the official single file, equal to the export written at the end of training.
    offline = export_training_checkpoint(ckpt, tmp_path / "offline.safetensors")
    model = SanaWM.from_preset("tiny")
    load_checkpoint(model, offline)
    assert all(torch.equal(v, weights["fsdp2"][k]) for k, v in model.state_dict().items())
    # The 2-rank DCP checkpoint resumed by one process (FSDP2 over one rank: the shards resharded) for two more steps
    # ends where the uninterrupted five-step run in one process does. (The checkpoint was written after the last batch
    # of epoch 0: the resumed run goes on with epoch 1, see sana_wm.training.data.)
    long = {"single_long": ["strategy=single"],
            "resumed": ["strategy=fsdp2", "strategy.param_dtype=float32", "strategy.process_group_backend=gloo",
                        f"checkpoint.resume={ckpt}"]}
    for name, extra in long.items():
        r = run_in_process_group(["train.py", *COMMON, "trainer.max_steps=5", *extra,
                                  f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / name}"],
                                 timeout=400)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        model = SanaWM.from_preset("tiny")
        load_checkpoint(model, tmp_path / name / "export" / "dit.safetensors")
        weights[name] = model.state_dict()
    # The two runs start the resumption 1e-3 apart (the CP run's rounding); two more Adam steps grow that to 2.5e-3
    # of the move at worst (measured), against O(0.1) for a lost or wrongly loaded shard.
    _close(weights["resumed"], weights["single_long"], init, rel=1e-2)


def _close(got: dict, ref: dict, init: dict, rel: float = 1e-3) -> None:
    """got's weights equal ref's up to float32 rounding, judged against how far ref moved from init."""
    moved = 0
    for k, r in ref.items():
        scale = (r - init[k]).norm() if not torch.equal(r, init[k]) else r.norm().clamp_min(1e-12)
        moved += not torch.equal(r, init[k])
        # 1e-3 of how far the weight moved, plus float32 rounding: a few ulps of the weight itself (norm weights near
        # 1 that barely moved: 7.5e-7 on a weight of norm 15) and 1e-6 for gradients that are almost all cancellation
        # (the softmax block's camera key bias, which softmax nearly ignores: 1.8e-7 of a 2e-5 move). A gradient
        # share lost or counted twice moves the weights by O(1) of their move (0.63 of 7.9 on x_embedder, measured).
        err = (got[k] - r).norm()
        assert err <= rel * scale + 4e-7 * r.norm() + 1e-6, (k, err.item(), scale.item())
    assert moved > 50


@pytest.mark.slow
def test_fsdp2_bad_mesh_mismatched_configs_or_a_dcp_folder_under_ddp_fail_on_every_rank(tmp_path):
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
    # A DCP folder resumed by a strategy that cannot reshard it (two ranks of DDP): both ranks refuse it.
    dcp = tmp_path / "fsdp2.ckpt"
    dcp.mkdir()
    for name in (".metadata", "__0_0.distcp", "meta.pt"):
        (dcp / name).write_bytes(b"")
    r = run_in_process_group(["train.py", *COMMON, "strategy=ddp", "trainer.devices=2",
                              "strategy.process_group_backend=gloo", f"checkpoint.resume={dcp}",
                              f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'ddp'}"],
                             nproc=2, timeout=200)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.count("which strategy.name=ddp cannot load") >= 2, out[-3000:]


@pytest.mark.slow
def test_fsdp2_dp2_cp2_mesh_on_four_processes_runs_steps(tmp_path):
    write_tiny_latent_shards(tmp_path / "shards", num_samples=2, samples_per_shard=1)  # one shard per dp rank
    r = run_in_process_group(["train.py", *COMMON, "trainer.max_steps=2", "strategy=fsdp2", "strategy.cp_size=2",
                              "trainer.devices=4", "strategy.process_group_backend=gloo",
                              f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}"],
                             nproc=4, timeout=500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "fsdp2: mesh dp=2 × cp=2 on cpu" in out
    assert (tmp_path / "run" / "export" / "dit.safetensors").exists()


@pytest.mark.slow
def test_fsdp2_cp2_lora_saves_adapters_and_exports(tmp_path):
    from sana_wm.training.config import LoraConfig
    from sana_wm.training.lora import add_lora, lora_state_dict, read_lora

    write_tiny_latent_shards(tmp_path / "shards", num_samples=2, samples_per_shard=2)
    r = run_in_process_group(["train.py", *COMMON, "trainer.max_steps=2", "strategy=fsdp2", "strategy.cp_size=2",
                              "trainer.devices=2", "strategy.process_group_backend=gloo", "lora.enabled=true",
                              f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}"],
                             nproc=2, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    tensors, meta = read_lora(tmp_path / "run" / "adapters" / "last.safetensors")  # whole adapters, not shards
    c, plain = LoraConfig(), SanaWM.from_preset("tiny")
    add_lora(plain, c.rank, c.alpha, c.dropout, c.target_modules, c.init)
    want = {k: tuple(t.shape) for k, t in lora_state_dict(plain).items()}
    assert {k: tuple(t.shape) for k, t in tensors.items()} == want
    assert meta["global_step"] == "2"
    plain = SanaWM.from_preset("tiny")
    load_checkpoint(plain, tmp_path / "run" / "export" / "dit.safetensors")  # the merged export loads strictly
