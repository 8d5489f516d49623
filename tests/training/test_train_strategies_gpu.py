"""GPU-only: `train.py` with the FSDP and DeepSpeed ZeRO-2/3 strategies on every visible GPU (marked `gpu`).

The CPU suite covers DDP (gloo, 2 processes); these strategies need CUDA. Each run trains the tiny model for a few
steps in bf16 with gradient clipping, then checks what a user relies on: the job exits 0, the loss, grad norm and
lr are logged, the last checkpoint is written, and the official-layout export loads strictly into a fresh model and
differs from the initial weights (the optimiser really stepped).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint
from sana_wm.testing.training import free_port, write_tiny_latent_shards

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


def _metrics(run: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for path in sorted(run.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    if v not in ("", None):
                        out.setdefault(k, []).append(float(v))
    return out


@pytest.mark.parametrize("strategy, extra", [
    ("fsdp", []),
    # Lightning wraps and checkpoints the blocks after configure_model compiled them (sana_wm.parallel.apply_compile).
    ("fsdp", ["model.compile=true"]),
    ("deepspeed_zero2", []),
    ("deepspeed_zero3", []),
    # ZeRO-3 hooks every module to gather its parameters; the compiled blocks must leave those hooks eager.
    ("deepspeed_zero3", ["model.compile=true"]),
    # Float8 GEMMs (sana_wm.fp8) converted before DDP / FSDP2 wrap and compile the blocks; the export stays fp32.
    ("ddp", ["model.fp8=true", "model.compile=true"]),
    ("fsdp2", ["model.fp8=true", "model.compile=true"]),
], ids=["fsdp", "fsdp-compile", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3-compile", "ddp-fp8",
        "fsdp2-fp8"])
def test_strategy_trains_logs_and_exports(tmp_path, strategy, extra):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    if "model.fp8=true" in extra:
        pytest.importorskip("torchao")
        from sana_wm.fp8 import Fp8Unavailable, check_fp8_device

        try:
            check_fp8_device()
        except Fp8Unavailable as err:
            pytest.skip(str(err))
    n = torch.cuda.device_count()
    write_tiny_latent_shards(tmp_path / "shards", num_samples=4 * n, samples_per_shard=1)
    run = tmp_path / "run"
    args = [
        "train.py", "model=tiny", "trainer=default", f"trainer.devices={n}", f"strategy={strategy}",
        "logger=csv", "data=latent", f"data.train_shards={tmp_path / 'shards'}", "data.val_shards=null",
        "data.num_workers=0", "encoders.kind=none", "validation.every_n_steps=0", "checkpoint.resume=null",
        f"output_dir={run}", "trainer.max_steps=4", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=0",
        "trainer.enable_progress_bar=false", "optim.lr=1e-3", "optim.grad_clip=1.0", "optim.warmup_steps=2",
        "model.activation_checkpointing=true", *extra,
    ]
    launcher = [sys.executable]
    if n > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port())]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(launcher + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]

    m = _metrics(run)
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        assert key in m and m[key], f"{key} not logged; columns: {sorted(m)}\n{log[-3000:]}"
        assert all(v == v and abs(v) < float("inf") for v in m[key]), (key, m[key])
    assert max(m["train/lr"]) > 0

    assert (run / "checkpoints" / "last.ckpt").exists(), sorted(p.name for p in (run / "checkpoints").glob("*"))
    exported = SanaWM.from_preset("tiny")
    initial = {k: v.clone() for k, v in exported.state_dict().items()}
    load_checkpoint(exported, run / "export" / "dit.safetensors")  # strict: every key and shape
    changed = [k for k, v in exported.state_dict().items() if not torch.equal(v, initial[k])]
    assert changed, "the exported weights equal a fresh initialisation"
