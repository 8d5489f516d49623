"""Checkpoint I/O: official layout round trip, diffusers layout, wrappers/prefixes, and strict errors."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from sana_wm import SanaWM, load_checkpoint, save_checkpoint
from sana_wm.checkpoint import CheckpointError, to_diffusers_layout


def _perturbed_tiny(seed=0):
    torch.manual_seed(seed)
    model = SanaWM.from_preset("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _same(a: torch.nn.Module, b: torch.nn.Module, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k not in skip:
            assert torch.equal(sa[k], sb[k]), k


def test_official_round_trip(tmp_path):
    model = _perturbed_tiny()
    path = save_checkpoint(model, tmp_path / "dit" / "sana_wm_tiny.safetensors")
    keys = load_file(str(path)).keys()
    assert "t_embedder.mlp.0.weight" in keys and "y_embedder.y_embedding" in keys
    assert "t_embedder.linear_1.weight" not in keys
    fresh = SanaWM.from_preset("tiny")
    assert load_checkpoint(fresh, path) == "official"
    _same(model, fresh)


def test_diffusers_layout_loads_and_feeds_the_port(tmp_path):
    port_mod = pytest.importorskip("diffusers.models.transformers.transformer_sana_wm")
    model = _perturbed_tiny()
    path = save_checkpoint(model, tmp_path / "diffusers.safetensors", layout="diffusers")
    keys = load_file(str(path)).keys()
    assert "t_embedder.linear_1.weight" in keys and "y_embedder.y_embedding" not in keys
    fresh = SanaWM.from_preset("tiny")
    assert load_checkpoint(fresh, path) == "diffusers"
    _same(model, fresh, skip=("y_embedder.y_embedding",))
    port = port_mod.SanaWMTransformer3DModel(
        in_channels=16, num_layers=4, hidden_size=224, num_attention_heads=2, linear_head_dim=112,
        caption_channels=32, chunk_plucker_post_attn_blocks=4, mixed_precision="fp32",
    )
    port.load_state_dict(load_file(str(path)), strict=True)


def test_wrappers_prefix_and_pos_embed(tmp_path):
    model = _perturbed_tiny()
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["model.pos_embed"] = torch.zeros(1, 4, 8)
    path = tmp_path / "train_ckpt.pth"
    torch.save({"state_dict": state, "step": 100}, path)
    fresh = SanaWM.from_preset("tiny")
    load_checkpoint(fresh, path)
    _same(model, fresh)
    torch.save({"generator": model.state_dict()}, tmp_path / "gen.pt")
    fresh = SanaWM.from_preset("tiny")
    load_checkpoint(fresh, tmp_path / "gen.pt")
    _same(model, fresh)


def test_strict_errors_name_file_and_keys(tmp_path):
    model = SanaWM.from_preset("tiny")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    missing = dict(state)
    del missing["blocks.0.attn.qkv.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing.safetensors .*1 missing .*blocks.0.attn.qkv.weight"):
        load_checkpoint(SanaWM.from_preset("tiny"), tmp_path / "missing.safetensors")
    extra = dict(state, **{"blocks.9.attn.qkv.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_checkpoint(SanaWM.from_preset("tiny"), tmp_path / "extra.safetensors")
    other = SanaWM.from_preset("tiny", in_channels=8, out_channels=8)
    save_checkpoint(other, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*x_embedder.proj.weight"):
        load_checkpoint(SanaWM.from_preset("tiny"), tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(model, tmp_path / "nope.safetensors")


def test_diffusers_renames_cover_only_the_timestep_mlp():
    state = SanaWM.from_preset("tiny").state_dict()
    mapped = to_diffusers_layout(state)
    changed = {k for k in state if k not in mapped}
    assert changed == {"t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight",
                       "t_embedder.mlp.2.bias", "y_embedder.y_embedding"}


def test_camera_rms_downscale_is_recorded_and_a_different_one_refused(tmp_path):
    from safetensors import safe_open

    model = SanaWM.from_preset("tiny", camera_rms_downscale="all")
    path = save_checkpoint(model, tmp_path / "all.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["camera_rms_downscale"] == "all"
    load_checkpoint(SanaWM.from_preset("tiny", camera_rms_downscale="all"), path)
    with pytest.raises(CheckpointError, match=r"all\.safetensors was saved from a model with "
                                              r"camera_rms_downscale='all' .* configured with "
                                              r"camera_rms_downscale='softmax'"):
        load_checkpoint(SanaWM.from_preset("tiny"), path)


def test_a_checkpoint_without_the_record_loads_with_the_configured_value(tmp_path):
    # NVIDIA's official file carries tensors only: no metadata, so the model keeps the value it was built with.
    model = _perturbed_tiny()
    path = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    for mode in ("none", "softmax", "all"):
        fresh = SanaWM.from_preset("tiny", camera_rms_downscale=mode)
        load_checkpoint(fresh, path)
        assert fresh.config.camera_rms_downscale == mode
        _same(model, fresh)


def test_a_bad_camera_rms_downscale_is_named():
    with pytest.raises(ValueError, match=r"camera_rms_downscale='softmax_only' is not valid; expected one of "
                                         r"\['none', 'softmax', 'all'\]"):
        SanaWM.from_preset("tiny", camera_rms_downscale="softmax_only")
