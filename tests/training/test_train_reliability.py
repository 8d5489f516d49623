"""No silent wrong answers in checkpoints and the fine-tuning journey: resume writes last.ckpt, a LoRA base is known
by its tensors, exports work on NVIDIA's file, validation uses the data's camera, wandb needs no account."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from sana_wm.testing.training import TINY_CPU_OVERRIDES, compose_train_config
from sana_wm.training import launch


class _Tiny(L.LightningModule):
    """A one-parameter module: the checkpoint callbacks under test come from the real config."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_with_run_checkpoints(out, steps, *extra):
    """Fit `_Tiny` for `steps` steps with the ModelCheckpoint callbacks `launch.build_callbacks` makes for a run in
    `out`, resuming as `launch.resolve_resume` says."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = launch.to_train_config(compose_train_config([
        *TINY_CPU_OVERRIDES, "data.train_shards=unused.tar", f"output_dir={out}", *extra]))
    callbacks = [c for c in launch.build_callbacks(cfg) if isinstance(c, ModelCheckpoint)]
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(8.0)), batch_size=1)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
    trainer.fit(_Tiny(), data, ckpt_path=launch.resolve_resume(cfg))
    return cfg


# -- class 10: after any resume, last.ckpt is the newest state ----------------------------------------------------


def test_resume_from_an_explicit_path_rewrites_last_ckpt(tmp_path):
    out = tmp_path / "run"
    periodic = ["checkpoint.every_n_steps=1", "checkpoint.keep_periodic=3"]
    _fit_with_run_checkpoints(out, 2, *periodic)
    ckpts = out / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 2
    # A requeued job resumed by hand from an older periodic checkpoint, running on to step 3.
    _fit_with_run_checkpoints(out, 3, *periodic, f"checkpoint.resume={ckpts / 'step_0000001.ckpt'}")
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["last.ckpt", "step_0000001.ckpt", "step_0000002.ckpt", "step_0000003.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 3
    # ... so the default checkpoint.resume=last continues from step 3, not from the stale step 2.
    cfg = _fit_with_run_checkpoints(out, 4, *periodic, "checkpoint.resume=last")
    assert launch.resolve_resume(cfg) == str(ckpts / "last.ckpt")
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4


# -- class 11: a LoRA base is identified by its tensors, not its file's bytes -------------------------------------


def _tiny_base_files(tmp_path):
    """The tiny DiT saved by save_checkpoint, the same tensors re-saved with another header (different bytes), and a
    base that differs in one element."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sana_wm import SanaWM
    from sana_wm.checkpoint import read_state_dict, save_checkpoint

    torch.manual_seed(0)
    first = save_checkpoint(SanaWM.from_preset("tiny"), tmp_path / "base.safetensors")
    state = read_state_dict(first)
    with safe_open(str(first), framework="pt") as f:
        meta = f.metadata()
    resaved = tmp_path / "resaved.safetensors"
    save_file(state, str(resaved), metadata={**meta, "note": "re-saved by another process"})
    other = dict(state)
    other["final_layer.linear.bias"] = other["final_layer.linear.bias"].clone()
    other["final_layer.linear.bias"][0] += 1e-3
    different = tmp_path / "different.safetensors"
    save_file(other, str(different), metadata=meta)
    assert first.read_bytes() != resaved.read_bytes()
    return first, resaved, different


def test_a_resaved_base_keeps_its_adapters_and_a_different_base_is_refused(tmp_path):
    from sana_wm.training.config import ModelConfig
    from sana_wm.training.export import merge_adapter
    from sana_wm.training.lora import LoraError, add_lora, checkpoint_digest, file_sha256, save_lora
    from sana_wm.training.module import build_model

    first, resaved, different = _tiny_base_files(tmp_path)
    model, digest = build_model(ModelConfig(preset="tiny", init_checkpoint=str(first)))
    assert build_model(ModelConfig(preset="tiny", init_checkpoint=str(resaved)))[1] == digest
    assert checkpoint_digest(different) != digest
    add_lora(model, rank=2)
    adapter = save_lora(model, tmp_path / "adapter.safetensors", digest)
    merge_adapter(resaved, adapter, tmp_path / "merged.safetensors")  # the same weights: accepted
    with pytest.raises(LoraError, match="was trained on base"):
        merge_adapter(different, adapter, tmp_path / "wrong.safetensors")
    # An adapter that recorded its base by the file's bytes (as adapters once did) still fits that very file.
    legacy = save_lora(model, tmp_path / "legacy.safetensors", file_sha256(first))
    merge_adapter(first, legacy, tmp_path / "merged_legacy.safetensors")
    with pytest.raises(LoraError, match="was trained on base"):
        merge_adapter(different, legacy, tmp_path / "wrong.safetensors")


# -- class 7: merge/export on NVIDIA's own base file (no config metadata) ------------------------------------------


def test_merge_on_a_base_without_config_metadata_infers_the_preset(tmp_path, capsys):
    from safetensors.torch import save_file

    from sana_wm import SanaWM
    from sana_wm.checkpoint import CheckpointError, load_checkpoint
    from sana_wm.training.export import main, model_from_checkpoint_file
    from sana_wm.training.lora import add_lora, checkpoint_digest, save_lora

    torch.manual_seed(0)
    base = SanaWM.from_preset("tiny")
    nvidia_like = tmp_path / "sana_wm_tiny.safetensors"  # tensors only, as NVIDIA's release file
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(nvidia_like))
    model = model_from_checkpoint_file(nvidia_like)
    assert model.config == base.config
    add_lora(base, rank=2)
    adapter = save_lora(base, tmp_path / "adapter.safetensors", checkpoint_digest(nvidia_like))
    out = tmp_path / "merged.safetensors"
    # The documented command, exactly: no --preset.
    assert main(["merge", "--base", str(nvidia_like), "--adapter", str(adapter), "--out", str(out)]) == 0, capsys.readouterr().err
    load_checkpoint(SanaWM.from_preset("tiny"), out)

    # Shapes that fit no preset: the error names the flag to pass.
    odd = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in SanaWM.from_preset("tiny", depth=3).state_dict().items()}, str(odd))
    with pytest.raises(CheckpointError, match=r"--preset") as info:
        model_from_checkpoint_file(odd)
    assert "depth" in str(info.value) or "blocks.3" in str(info.value)


# -- class 8: validation videos: the whole action, and the data's intrinsics ---------------------------------------


def test_validation_action_shorter_than_the_clip_is_an_error():
    from sana_wm.training.callbacks import ValidationVideos

    with pytest.raises(ValueError, match=r"validation.actions\[1\] = 'w-8' gives 9 frames .* validation.num_frames = 17"):
        ValidationVideos("unused", 5, ["a", "b"], ["w-16", "w-8"], num_frames=17)
    ValidationVideos("unused", 5, ["a"], ["w-16"], num_frames=17)  # 17 poses: fine


def test_validation_uses_the_intrinsics_of_the_training_data(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from data.schema import Batch
    from sana_wm.inference.pipeline import SanaWMPipeline
    from sana_wm.training.callbacks import ValidationVideos
    from sana_wm.training.config import EncoderConfig, ModelConfig
    from sana_wm.training.module import SanaWMLitModule

    seen = []

    def fake_generate(self, image, prompt, c2w, intrinsics, **kwargs):
        seen.append((c2w.shape[0], np.asarray(intrinsics, dtype=np.float64), kwargs["num_frames"]))
        return SimpleNamespace(video=None, c2w=c2w, fps=16.0)

    monkeypatch.setattr(SanaWMPipeline, "generate", fake_generate)
    m = SanaWMLitModule(ModelConfig(preset="tiny"), encoders=EncoderConfig(kind="tiny_random", dtype="float32"))
    cond = torch.zeros(1, 3, 20)
    cond[..., :16] = torch.eye(4).flatten()
    cond[..., 16:] = torch.tensor([5.6, 5.2, 3.5, 2.0])  # latent units (pixels / 32)
    batch = Batch(keys=["k"], captions=["c"], meta=[{}], camera_conditions=cond, chunk_plucker=torch.zeros(1, 48, 3, 4, 7),
                  latent=torch.randn(1, 16, 3, 4, 7), text_emb=torch.randn(1, 32, 32), text_mask=torch.ones(1, 32, dtype=torch.bool))
    cb = ValidationVideos(tmp_path, 5, ["a room"], ["w-16"], num_frames=17, num_steps=1)
    cb.generate(SimpleNamespace(is_global_zero=False, loggers=[]), m, batch, 5)
    ((poses, K, num_frames),) = seen
    assert poses == 17 and num_frames == 17
    np.testing.assert_allclose(K, [5.6 * 32, 5.2 * 32, 3.5 * 32, 2.0 * 32], rtol=1e-6)  # not a fixed 70° FOV


# -- class 9: the online wandb logger needs no account -------------------------------------------------------------


def _no_wandb_account(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # an empty credentials file: no entry for wandb
    (tmp_path / "netrc").write_text("machine example.com login me password secret\n")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))


def test_online_wandb_without_credentials_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    import logging

    from sana_wm.training.config import LoggerConfig

    _no_wandb_account(monkeypatch, tmp_path)
    with caplog.at_level(logging.WARNING, logger="sana_wm.training.launch"):
        logger = launch.build_logger(LoggerConfig(name="wandb", offline=False, run_name="t"), tmp_path / "out")
    notices = [r.getMessage() for r in caplog.records if "wandb" in r.getMessage()]
    assert len(notices) == 1 and "offline" in notices[0] and "\n" not in notices[0]
    assert logger._offline is True  # checked before anything could reach the network
    logger.log_metrics({"train/loss": 0.5}, step=1)
    logger.experiment.finish()
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].iterdir())


def test_online_wandb_with_credentials_stays_online(tmp_path, monkeypatch, caplog):
    from sana_wm.training.config import LoggerConfig

    _no_wandb_account(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    logger = launch.build_logger(LoggerConfig(name="wandb", offline=False), tmp_path / "out")
    assert logger._offline is False and not caplog.records  # never initialised here: no network
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai login user password {'y' * 40}\n")
    assert launch.build_logger(LoggerConfig(name="wandb", offline=False), tmp_path / "out2")._offline is False


# -- class 12: a LoRA run's output includes the official-layout export ---------------------------------------------


def test_lora_run_exports_the_merged_model_in_the_official_layout(tmp_path):
    from types import SimpleNamespace

    from sana_wm import SanaWM
    from sana_wm.checkpoint import load_checkpoint, save_checkpoint
    from sana_wm.training.callbacks import ExportOnTrainEnd
    from sana_wm.training.config import LoraConfig, ModelConfig
    from sana_wm.training.lora import merge_lora
    from sana_wm.training.module import SanaWMLitModule

    torch.manual_seed(0)
    base = save_checkpoint(SanaWM.from_preset("tiny", reference_numerics=False), tmp_path / "base.safetensors")
    m = SanaWMLitModule(ModelConfig(preset="tiny", reference_numerics=False, init_checkpoint=str(base)),
                        lora=LoraConfig(enabled=True, rank=2, alpha=4.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)  # "trained" adapters
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(lightning_module_state_dict=m.state_dict))
    cb = ExportOnTrainEnd(tmp_path / "export")
    cb.on_train_end(trainer, m)
    assert cb.path == tmp_path / "export" / "dit.safetensors"
    exported = SanaWM.from_preset("tiny", reference_numerics=False)
    load_checkpoint(exported, cb.path)  # strict: official keys, no adapter tensors
    expected = merge_lora(m.model).state_dict()
    assert sorted(expected) == sorted(exported.state_dict())
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in expected.items())


# -- class 13: an epoch in which every sample is skipped stops the run ---------------------------------------------


def test_an_epoch_whose_every_sample_is_skipped_is_an_error_not_an_endless_loop(tmp_path):
    """Clips shorter than data.num_frames are skipped one by one; with no clip long enough, Lightning would start
    the next (equally empty) epoch forever. The loader stops on the first empty epoch, naming the count and cure."""
    from sana_wm.testing.data import raw_video_sample, tiny_video_clip, write_raw_shard
    from sana_wm.training.data import DataConfigError, TrainDataModule

    frames, c2w, K = tiny_video_clip(num_frames=9, height=32, width=64)
    shard = write_raw_shard(tmp_path / "s.tar", [raw_video_sample(f"c{i}", frames, c2w, K) for i in range(2)])
    dm = TrainDataModule(train_shards=shard, num_frames=17, height=32, width=64, num_workers=0)
    with pytest.raises(DataConfigError) as err:
        list(dm.train_dataloader())
    assert str(err.value) == (
        f"data.train_shards={shard!r} gave no training batch in a whole epoch: every sample was skipped "
        "(too_few_frames: 2; the warnings above name each sample); clips need data.num_frames=17 frames at "
        "data.target_fps=16.0: lower data.num_frames (8k+1) or write longer clips")
    ok = TrainDataModule(train_shards=shard, num_frames=9, height=32, width=64, num_workers=0)
    assert len(list(ok.train_dataloader())) == 2  # long enough: no error
