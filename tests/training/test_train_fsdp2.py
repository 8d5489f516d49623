"""`train.py strategy=fsdp2` under torchrun: FSDP2 + context parallelism (Lightning's ModelParallelStrategy, gloo).

Two CPU ranks form a 1 × 2 (dp × cp) mesh: both read the same samples and draw the same noise, each computes half
of every clip's latent frames (3 frames: 2 per rank, one padded), and FSDP2 shards the parameters over both. After
three optimizer steps the exported weights must be those of the same run in one process (`strategy=single`), up to
float32 rounding (the model without the released bf16 casts of the softmax blocks; the bound in `_close`). The
checkpoint is a DCP folder (one shard per rank); one process resumes it (resharded) and ends where the
uninterrupted one-process run does.
"""

from __future__ import annotations

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint
from sana_wm.testing.training import run_in_process_group, write_tiny_latent_shards
from sana_wm.training.export import export_training_checkpoint

SEED = 3407  # train.py's seed: the runs start from `_initial_weights()`
COMMON = ["model=tiny", "trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "trainer.max_steps=3",
          "checkpoint.every_n_steps=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
          # eps 1: Adam's update of a near-zero gradient is then about lr·g, not lr·sign(g), so float32 rounding of
          # such gradients (summed in another order across ranks) moves the weights by rounding, not by lr.
          # Clipping runs but never bites (a clipped step would hide a gradient off by a constant factor).
          "optim.lr=0.2", "optim.eps=1.0", "optim.grad_clip=100", "objective.caption_dropout=0", "logger=csv"]


@pytest.mark.slow
def test_fsdp2_with_cp2_matches_one_process_and_resumes_on_one_rank(tmp_path):
    write_tiny_latent_shards(tmp_path / "shards", num_samples=3, samples_per_shard=3)
    # Float32 maths only: the released bf16 casts of the softmax blocks' q/k/v round values that CP computes a float32
    # ulp away from one process to another bf16 value (2^-9 relative), and each CP rank rounds its share of the K/V
    # gradient to bf16; three steps carry that to 8e-3 of a camera bias's move (measured). The casts are elementwise:
    # CP runs them on the same values as one process does.
    base = [*COMMON, f"seed={SEED}", "model.reference_numerics=false"]
    runs = {"single": (1, ["strategy=single"]),
            "fsdp2": (2, ["strategy=fsdp2", "strategy.cp_size=2", "strategy.param_dtype=float32",
                          "trainer.devices=2", "strategy.process_group_backend=gloo"])}
    weights = {}
    for name, (nproc, extra) in runs.items():
        r = run_in_process_group(["train.py", *base, *extra, f"data.train_shards={tmp_path / 'shards'}",
                                  f"output_dir={tmp_path / name}"], nproc=nproc, timeout=400)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        model = SanaWM.from_preset("tiny")
        load_checkpoint(model, tmp_path / name / "export" / "dit.safetensors")
        weights[name] = model.state_dict()
    init = _initial_weights()
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
        r = run_in_process_group(["train.py", *base, "trainer.max_steps=5", *extra,
                                  f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / name}"],
                                 timeout=400)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        model = SanaWM.from_preset("tiny")
        load_checkpoint(model, tmp_path / name / "export" / "dit.safetensors")
        weights[name] = model.state_dict()
    # Measured: 4.9e-7 of the move beyond one ulp at worst, against O(0.1) for a lost or wrongly loaded shard.
    _close(weights["resumed"], weights["single_long"], init)


def _initial_weights() -> dict:
    """The weights train.py starts from: the tiny preset built right after seeding torch with SEED."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return SanaWM.from_preset("tiny").state_dict()


def _close(got: dict, ref: dict, init: dict, rel: float = 1e-5) -> None:
    """got's weights equal ref's up to float32 rounding: `rel` of how far ref moved from init, plus one float32 ulp of
    the weight's norm (weights near 1 that barely moved, the norms' scales, differ by an ulp of an element).

    The bound, measured on the three-step runs: the CP run is at most 4.7e-7 of the move beyond one ulp from the
    one-process run (median 2.6e-7); the one-process float32 run is up to 2.5e-6 of the move from the same run in
    float64, and the CP float32 run is as far (per weight within 2.1 times); in float64 the CP run is 1.2e-7 of the
    move from the one-process run. rel 1e-5 is four times float32's own error. A gradient share lost (CP rank 1's
    loss share dropped) moves every trained weight by 0.35 to 1.1 of its move (x_embedder 0.65 of 1.25)."""
    eps = torch.finfo(torch.float32).eps
    moved = 0
    for k, r in ref.items():
        move = (r - init[k]).norm()
        moved += bool(move > 0)
        err = (got[k] - r).norm()
        assert err <= rel * move + eps * r.norm(), (k, err.item(), move.item())
    # Some weights get no gradient (the null caption table, the softmax block's unused GDN gates) and stay exactly
    # where the runs started: init is that start, so `move` is how far training moved a weight.
    assert 50 < moved < len(ref), (moved, len(ref))


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
