"""Small builders for trainer tests and examples: tiny cached-latent shards and a tiny composed config.

:func:`write_tiny_latent_shards` writes real latent shards (the format `python -m sana_wm.training.cache` writes)
with random latents/captions and genuine camera tensors from `sana_wm.camera.prepare_camera` for a forward-moving
camera, so the trainer can be exercised without rendering, decoding or encoding anything.
:func:`compose_train_config` composes `configs/train.yaml` with Hydra's compose API plus overrides.
:func:`run_in_process_group` runs a script as the ranks of a fresh process group (gloo on CPU, or torchrun), and
:func:`tiny_reference_step` gives such a script the plain model's output and gradients to compare against.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_tiny_latent_shards", "compose_train_config", "free_port", "run_in_process_group",
           "tiny_reference_step", "TINY_CPU_OVERRIDES", "CONFIG_DIR"]

#: The repository's config tree.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

#: Overrides that make any experiment run on one CPU process with the tiny model and no downloads.
TINY_CPU_OVERRIDES = [
    "model=tiny",
    "model.activation_checkpointing=false",
    "model.init_checkpoint=null",
    "trainer=cpu",
    "strategy=single",
    "logger=csv",
    "data=latent",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.val_shards=null",
    "encoders.kind=none",
    "validation.every_n_steps=0",
    "trainer.enable_progress_bar=false",
    "checkpoint.resume=null",
]


def write_tiny_latent_shards(
    out_dir: str | os.PathLike,
    num_samples: int = 4,
    latent_shape: tuple[int, int, int, int] = (16, 3, 4, 7),
    text_shape: tuple[int, int] = (32, 32),
    samples_per_shard: int = 2,
    seed: int = 0,
) -> list[str]:
    """Write `num_samples` latent samples into shards under `out_dir`; returns the shard paths.

    Args:
        latent_shape: (C, T, h, w) of each latent (pixel frames F = 8(T−1)+1, size 32h × 32w).
        text_shape: (L, D) of each caption embedding; real tokens: a random prefix of 3..L.
    """
    from data.schema import LATENT_SCHEMA_VERSION
    from data.write_shards import ShardSink, write_latent_sample
    from sana_wm.camera import prepare_camera

    C, T, h, w = latent_shape
    F, H, W = 8 * (T - 1) + 1, 32 * h, 32 * w
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    with ShardSink(out_dir, prefix="latents", max_count=samples_per_shard, schema=LATENT_SCHEMA_VERSION) as sink:
        for i in range(num_samples):
            c2w = np.tile(np.eye(4), (F, 1, 1))
            c2w[:, 2, 3] = np.arange(F) * 0.05 * (1 + i % 3)  # forward motion, a different speed per sample
            yaw = np.linspace(0, rng.uniform(-0.3, 0.3), F)
            c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = np.cos(yaw), np.sin(yaw), -np.sin(yaw), np.cos(yaw)
            K = np.array([0.8 * W, 0.8 * W, W / 2, H / 2])
            cam, plucker = prepare_camera(c2w, K, (H, W), (h, w), num_frames=F)
            L, D = text_shape
            mask = torch.zeros(L, dtype=torch.bool)
            mask[: int(rng.integers(3, L + 1))] = True
            write_latent_sample(
                sink, f"tiny-{seed:03d}-{i:05d}", torch.randn(latent_shape, generator=g),
                torch.randn(text_shape, generator=g), mask, cam, plucker, {"source": "test"},
                caption=f"tiny sample {i}",
            )
        return sink.close()


def compose_train_config(overrides: list[str] | None = None):
    """Compose `configs/train.yaml` (Hydra compose API, no working-directory change) → DictConfig."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sana_wm.training.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides or []))


def tiny_reference_step(seed: int = 0):
    """One float32 forward and backward (loss: mean square of the output) of the tiny model seeded with `seed`, no
    wrappers: the reference for a wrapped, sharded or compiled copy (`copy.load_state_dict(model.state_dict())`).

    Returns (model, inputs (x [1, 16, 2, 4, 6], t [1, 1, 2], y [1, 1, 32, 32]), output, {parameter name: gradient}).
    """
    from sana_wm import SanaWM

    torch.manual_seed(seed)
    model = SanaWM.from_preset("tiny")
    inputs = torch.randn(1, 16, 2, 4, 6), torch.full((1, 1, 2), 500.0), torch.randn(1, 1, 32, 32)
    out = model(*inputs)
    out.square().mean().backward()
    return model, inputs, out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def float64_gradients(model, inputs) -> dict:
    """The gradients of :func:`tiny_reference_step`'s loss for a float64 copy of `model`: the oracle against which a
    wrapped or compiled float32 copy is judged in units of the plain float32 step's own error (some tiny-model
    gradients cancel so much that plain float32 is 2e-3 away from float64, so a fixed bound against float32 is not a
    property of the wrapper)."""
    import copy

    m64 = copy.deepcopy(model).double()
    m64.zero_grad(set_to_none=True)
    m64(*(t.double() for t in inputs)).square().mean().backward()
    return {n: p.grad for n, p in m64.named_parameters() if p.grad is not None}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now: a rendezvous port for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_process_group(argv: list[str], nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run Python with `argv` (a script and its arguments, or ``["-c", source, ...]``) as `nproc` fresh processes of
    one process group on this machine, from the repository root, and return the finished process (text output).

    One process gets the variables `torch.distributed.init_process_group` reads (rank 0 of 1, a free port); more run
    under torchrun. Each process has the repository on PYTHONPATH and one thread (OMP_NUM_THREADS=1: the CI machine
    has two cores). A fresh process keeps the group, and Dynamo's caches, from outliving the test."""
    repo = Path(CONFIG_DIR).parent
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        cmd = [sys.executable, *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port())]
        cmd += ["--no-python", sys.executable, *argv] if argv[0] == "-c" else argv
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
