"""Release-layout resolution and config.yaml parsing (sana_wm.inference.model_root): missing files are named, configs typed."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sana_wm.inference.model_root import (
    ModelRootError,
    load_inference_config,
    resolve_model_paths,
    resolve_refiner_paths,
)
from sana_wm.models import PRESETS

RELEASED_YAML = {
    "model": {"model": "SanaMSVideoCamCtrl_1600M_P1_D20", "image_size": 720, "linear_head_dim": 112, "mlp_ratio": 3,
              "softmax_every_n": 4, "chunk_plucker_channels": 48, "mixed_precision": "bf16"},
    "vae": {"vae_stride": [8, 32, 32], "use_framewise_decoding": True, "tile_sample_stride_num_frames": 64,
            "tile_sample_min_num_frames": 96},
    "text_encoder": {"model_max_length": 300, "chi_prompt": ["line one", "User Prompt: "]},
    "scheduler": {"flow_shift": 9.95, "inference_flow_shift": 9.8},
}


def _pretrained_dir(path, weights="diffusion_pytorch_model.safetensors", tokenizer=False):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / weights).write_bytes(b"x")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def _layout(root, *, config=RELEASED_YAML, refiner=True, text_encoder=True):
    (root / "dit").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(root / "dit" / "sana_wm_1600m_720p.safetensors"))
    _pretrained_dir(root / "vae")
    if text_encoder:
        _pretrained_dir(root / "text_encoder", "model.safetensors", tokenizer=True)
    if refiner:
        for name in ("transformer", "connectors"):
            _pretrained_dir(root / "refiner" / name)
        _pretrained_dir(root / "refiner" / "text_encoder", "model.safetensors")
        _pretrained_dir(root / "refiner" / "tokenizer", "x.txt", tokenizer=True)
    if config is not None:
        (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_release_layout_resolves_and_parses(tmp_path):
    root = _layout(tmp_path / "root")
    paths = resolve_model_paths(root)
    assert paths.dit.name == "sana_wm_1600m_720p.safetensors"
    assert paths.vae == root / "vae" and paths.text_encoder == root / "text_encoder"
    assert paths.refiner.transformer == root / "refiner" / "transformer"
    assert paths.refiner.tokenizer == root / "refiner" / "tokenizer"
    assert paths.refiner.text_max_sequence_length == 1024
    cfg = load_inference_config(paths)
    assert cfg.model == PRESETS["sana_wm_1600m_720p"]
    assert (cfg.height, cfg.width) == (704, 1280)
    assert cfg.flow_shift == 9.8  # inference shift, not the 9.95 training shift
    assert cfg.chi_prompt == "line one\nUser Prompt: "
    assert (cfg.vae_framewise, cfg.vae_tile_frames, cfg.vae_tile_stride) == (True, 96, 64)


@pytest.mark.parametrize(
    "remove, named",
    [
        ("dit/sana_wm_1600m_720p.safetensors", "dit"),
        ("vae/config.json", "vae/config.json"),
        ("vae/diffusion_pytorch_model.safetensors", "vae"),
        ("refiner/transformer", "refiner/transformer"),
        ("refiner/connectors/config.json", "refiner/connectors/config.json"),
        ("refiner/tokenizer", "tokenizer"),
        ("text_encoder", "text_encoder"),
    ],
)
def test_missing_file_is_named(tmp_path, remove, named):
    import shutil

    root = _layout(tmp_path / "root")
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelRootError) as err:
        resolve_model_paths(root)
    assert named in str(err.value)


def test_refiner_and_text_encoder_optional_when_not_needed(tmp_path):
    root = _layout(tmp_path / "root", refiner=False, text_encoder=False)
    paths = resolve_model_paths(root, need_refiner=False, need_text_encoder=False)
    assert paths.refiner is None and paths.text_encoder is None
    with pytest.raises(ModelRootError, match="--no_refiner"):
        resolve_model_paths(root, need_text_encoder=False)
    with pytest.raises(ModelRootError, match="--text_encoder_root"):
        resolve_model_paths(root, need_refiner=False)


def test_ambiguous_dit_and_explicit_checkpoint(tmp_path):
    root = _layout(tmp_path / "root")
    (root / "dit" / "sana_wm_1600m_720p.safetensors").rename(root / "dit" / "a.safetensors")
    save_file({"w": torch.zeros(1)}, str(root / "dit" / "b.safetensors"))
    with pytest.raises(ModelRootError, match="ambiguous"):
        resolve_model_paths(root)
    assert resolve_model_paths(root, checkpoint=root / "dit" / "b.safetensors").dit.name == "b.safetensors"
    with pytest.raises(ModelRootError, match="nope.safetensors"):
        resolve_model_paths(root, checkpoint=root / "nope.safetensors")


def test_checkpoint_metadata_config_wins_and_missing_config_is_explained(tmp_path):
    from sana_wm.checkpoint import save_checkpoint
    from sana_wm.models import SanaWM

    root = _layout(tmp_path / "root", config=None, refiner=False)
    ckpt = tmp_path / "ours.safetensors"
    with pytest.raises(ModelRootError, match="--model_config"):
        load_inference_config(resolve_model_paths(root, need_refiner=False))
    model = SanaWM.from_preset("tiny", depth=2)
    save_checkpoint(model, ckpt)
    cfg = load_inference_config(resolve_model_paths(root, checkpoint=ckpt, need_refiner=False))
    assert cfg.model == model.config
    # A flat JSON model config is accepted too, and beats the metadata.
    mc = tmp_path / "model.json"
    mc.write_text(json.dumps({**PRESETS["tiny"].to_dict(), "depth": 3}))
    cfg = load_inference_config(resolve_model_paths(root, checkpoint=ckpt, model_config=mc, need_refiner=False))
    assert cfg.model.depth == 3


@pytest.mark.parametrize(
    "model_section, message",
    [
        ({"model": "NotAModel"}, "not a known architecture"),
        ({"model": "tiny", "sana_wm_config": {"bogus": 1}}, "bogus"),
        ({"model": "SanaMSVideoCamCtrl_1600M_P1_D20", "linear_head_dim": 64}, "linear_head_dim"),
        ({"model": "tiny", "image_size": 333}, "image_size"),
        ({"model": "tiny", "sample_size": [60, 96]}, "sample_size"),
    ],
)
def test_bad_config_values_are_named(tmp_path, model_section, message):
    root = _layout(tmp_path / "root", config={"model": model_section}, refiner=False)
    with pytest.raises(ModelRootError, match=message):
        load_inference_config(resolve_model_paths(root, need_refiner=False))


def test_refiner_index_sets_text_length(tmp_path):
    root = _layout(tmp_path / "root")
    (root / "refiner" / "model_index.json").write_text(json.dumps({"text_max_sequence_length": 256}))
    assert resolve_refiner_paths(root / "refiner").text_max_sequence_length == 256


def test_vae_stride_sets_the_size_multiple(tmp_path):
    """A VAE with another spatial stride (the CPU demo's 8x codec) declares it; sample_size follows that stride."""
    config = {"model": {"model": "tiny", "sample_size": [64, 112]}, "vae": {"vae_stride": [8, 8, 8]}}
    root = _layout(tmp_path / "root", config=config, refiner=False)
    cfg = load_inference_config(resolve_model_paths(root, need_refiner=False))
    assert (cfg.vae_stride, cfg.height, cfg.width) == ((8, 8, 8), 64, 112)
    assert load_inference_config(resolve_model_paths(_layout(tmp_path / "r0", refiner=False), need_refiner=False)
                                 ).vae_stride == (8, 32, 32)


@pytest.mark.parametrize(
    "vae_stride, sample_size, message",
    [
        ([8, 32, 32], [64, 112], r"multiples of the VAE stride 32.*\[64, 112\]"),
        ([8, 8, 16], [64, 112], r"\[8, s, s\].*\[8, 8, 16\]"),
        ([4, 8, 8], [64, 112], r"\[8, s, s\].*\[4, 8, 8\]"),
        ("8x8", [64, 112], r"\[8, s, s\].*'8x8'"),
    ],
)
def test_bad_vae_stride_is_named(tmp_path, vae_stride, sample_size, message):
    config = {"model": {"model": "tiny", "sample_size": sample_size}, "vae": {"vae_stride": vae_stride}}
    root = _layout(tmp_path / "root", config=config, refiner=False)
    with pytest.raises(ModelRootError, match=message):
        load_inference_config(resolve_model_paths(root, need_refiner=False))
