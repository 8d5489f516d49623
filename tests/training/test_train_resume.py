"""Checkpointing and resume on CPU: periodic checkpoints keep the last k; a run resumed mid-epoch from one continues bit
for bit (same batches, losses, weights, optimizer, schedule, EMA); the end-of-training export (EMA weights) loads into
a plain DiT, and the export command reproduces it from the Lightning checkpoint."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint
from sana_wm.testing.training import TINY_CPU_OVERRIDES, compose_train_config, write_tiny_latent_shards
from sana_wm.training import launch
from sana_wm.training.data import ResumableLoader


class _Record(L.Callback):
    def __init__(self):
        self.losses, self.keys = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step] = loss.item()
        self.keys[trainer.global_step] = list(batch.keys)


def _run(tmp_path, shards, name, steps, *extra):
    cfg = launch.to_train_config(compose_train_config([
        *TINY_CPU_OVERRIDES, f"data.train_shards={shards}", f"output_dir={tmp_path / name}",
        f"trainer.max_steps={steps}", "optim.lr=1e-3", "optim.warmup_steps=2",
        "data.shuffle_buffer=4", "objective.caption_dropout=0.5", "trainer.log_every_n_steps=1", *extra,
    ]))
    L.seed_everything(cfg.seed)
    module = launch.build_module(cfg)
    dm = launch.build_datamodule(cfg, module)
    rec = _Record()
    trainer = launch.build_trainer(cfg, callbacks=launch.build_callbacks(cfg) + [rec])
    trainer.fit(module, datamodule=dm, ckpt_path=launch.resolve_resume(cfg))
    return module, trainer, rec


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_shards")
    write_tiny_latent_shards(out, num_samples=4, samples_per_shard=2)  # 4 batches per epoch
    return out


def test_resume_mid_epoch_continues_bit_for_bit(tmp_path, shards):
    val = [f"data.val_shards={shards}", "trainer.val_check_interval=3", "trainer.limit_val_batches=2"]
    full_module, full_trainer, full = _run(tmp_path, shards, "full", 6, "ema.enabled=true", "ema.decay=0.9",
                                           "checkpoint.every_n_steps=1", "checkpoint.keep_periodic=4", *val)
    names = {p.name for p in (tmp_path / "full" / "checkpoints").iterdir()}
    # best on val/loss (validation ran at steps 3 and 6), last, and at most 4 periodic ones, the newest kept. (Which
    # older ones survive depends on Lightning: at an epoch end that coincides with validation it saves only last.)
    periodic = sorted(n for n in names if n.startswith("step_"))
    assert {"best.ckpt", "last.ckpt", "step_0000003.ckpt", "step_0000006.ckpt"} <= names and len(periodic) <= 4
    assert "val/loss" in full_trainer.callback_metrics
    ckpt = tmp_path / "full" / "checkpoints" / "step_0000003.ckpt"
    # Step 3 is in the middle of epoch 0 (4 batches); step 6 is in epoch 1.
    res_module, res_trainer, res = _run(tmp_path, shards, "resumed", 6, "ema.enabled=true", "ema.decay=0.9",
                                        "checkpoint.every_n_steps=3", f"checkpoint.resume={ckpt}", *val)
    assert sorted(res.losses) == [4, 5, 6]
    assert {s: full.losses[s] for s in (4, 5, 6)} == res.losses  # exact float equality
    assert {s: full.keys[s] for s in (4, 5, 6)} == res.keys  # the same samples, in the same order
    loader = res_trainer.train_dataloader
    assert isinstance(loader, ResumableLoader) and loader.starts[0] == (0, 3)  # replayed epoch 0 after 3 batches
    a, b = full_module.state_dict(), res_module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full_trainer.optimizers[0].state_dict()["state"][0]["step"] == res_trainer.optimizers[0].state_dict()["state"][0]["step"]
    assert full_trainer.lr_scheduler_configs[0].scheduler.last_epoch == res_trainer.lr_scheduler_configs[0].scheduler.last_epoch
    sa, sb = full_module.ema.shadow, res_module.ema.shadow
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    # The export is the EMA weights in the official layout, loadable by a plain DiT.
    export = tmp_path / "resumed" / "export" / "dit.safetensors"
    plain = SanaWM.from_preset("tiny")
    load_checkpoint(plain, export)
    params = dict(plain.named_parameters())
    for name, shadow in res_module.ema.shadow.items():
        assert torch.equal(params[name], shadow), name
    changed = [n for n in sb if not torch.equal(sb[n], dict(res_module.model.named_parameters())[n])]
    assert changed  # EMA differs from the raw weights, so the export really took the EMA ones

    # The export command gives the same file content from the Lightning checkpoint.
    from sana_wm.training.export import export_training_checkpoint

    again = export_training_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt", tmp_path / "again.safetensors")
    other = SanaWM.from_preset("tiny")
    load_checkpoint(other, again)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in plain.state_dict().items())


def test_resumable_loader_goes_on_with_the_next_epoch_when_the_skipped_batches_end_one():
    epochs = lambda e: [f"{e}.{i}" for i in range(3)]  # noqa: E731 - 3 batches per epoch
    told = []
    loader = ResumableLoader(epochs, lambda: (4, 3), on_start=lambda *a: told.append(a))
    assert list(loader) == ["5.0", "5.1", "5.2"] and loader.starts == [(5, 0)] and told == [(5, 0)]
    assert list(ResumableLoader(epochs, lambda: (4, 1))) == ["4.1", "4.2"]
    # More batches done than this rank's epoch has (a resume on more data-parallel ranks): the next epoch.
    assert list(ResumableLoader(epochs, lambda: (4, 5))) == ["5.0", "5.1", "5.2"]


@pytest.mark.slow
def test_resume_from_an_epoch_end_checkpoint_continues_bit_for_bit(tmp_path, shards):
    """A checkpoint written after the last batch of an epoch (4 batches here): `last.ckpt` of a run whose max_steps
    ends the epoch (saved at the epoch's end) and a periodic one saved after that batch. Lightning restores the
    finished epoch's batch count with it; read as a position in the next epoch, the resumed run skipped a whole epoch
    of data (the next epoch's 4 batches replayed away, training on the one after: 0.21 from the uninterrupted run on
    x_embedder after two steps)."""
    full_module, _, full = _run(tmp_path, shards, "full", 6)
    _run(tmp_path, shards, "short", 4, "checkpoint.every_n_steps=4")
    ckpts = tmp_path / "short" / "checkpoints"
    for ckpt in (ckpts / "last.ckpt", ckpts / "step_0000004.ckpt"):
        res_module, res_trainer, res = _run(tmp_path, shards, f"resumed_{ckpt.stem}", 6, f"checkpoint.resume={ckpt}")
        assert res.keys == {s: full.keys[s] for s in (5, 6)}, ckpt.name  # epoch 1's first two samples
        assert res.losses == {s: full.losses[s] for s in (5, 6)}, ckpt.name
        assert res_trainer.train_dataloader.starts[0] == (1, 0), ckpt.name
        a, b = full_module.state_dict(), res_module.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), ckpt.name


def test_checkpoint_keys_of_wrapped_compiled_blocks_load_into_a_plain_module(tmp_path, shards):
    """Checkpoints written while compiled blocks were torch.compile wrappers carry `._orig_mod.` in their keys; they
    resume into today's module, whose keys do not depend on compilation."""
    cfg = launch.to_train_config(compose_train_config([*TINY_CPU_OVERRIDES, f"data.train_shards={shards}",
                                                       f"output_dir={tmp_path}"]))
    module = launch.build_module(cfg)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    legacy = {k.replace("model.blocks.1.", "model.blocks.1._orig_mod."): v for k, v in state.items()}
    assert legacy.keys() != state.keys()
    checkpoint = {"state_dict": legacy}
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])  # strict: every key
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
