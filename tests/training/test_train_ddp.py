"""`train.py` under torchrun: 2-process DDP (gloo) on CPU with the tiny model; the ranks end with identical weights."""

from __future__ import annotations

import re

import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint
from sana_wm.testing.training import run_in_process_group, write_tiny_latent_shards


def test_two_process_ddp_trains_and_the_ranks_agree(tmp_path):
    write_tiny_latent_shards(tmp_path / "shards", num_samples=4, samples_per_shard=1)  # one shard per rank and epoch
    r = run_in_process_group([
        "train.py", "model=tiny", "trainer=cpu", "trainer.devices=2", "strategy=ddp", "strategy.process_group_backend=gloo",
        f"data.train_shards={tmp_path / 'shards'}", "data.num_workers=0", "data.pin_memory=false",
        f"output_dir={tmp_path / 'run'}", "trainer.max_steps=3", "checkpoint.every_n_steps=0",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "optim.lr=1e-3",
    ], nproc=2, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    sums = dict(re.findall(r"\[rank (\d)\] parameter checksum (\S+)", out))
    assert sorted(sums) == ["0", "1"], out[-2000:]
    assert sums["0"] == sums["1"]
    # Rank 0 wrote the last checkpoint and the export; the export holds the trained (changed) weights.
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    exported = SanaWM.from_preset("tiny")
    load_checkpoint(exported, tmp_path / "run" / "export" / "dit.safetensors")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert len(ckpt["rng_states"]) == 2  # both ranks' RNG states are saved
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(v, state[k]) for k, v in exported.state_dict().items())
    metrics = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics
