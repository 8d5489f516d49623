"""`camera_rms_downscale`: per mode, every block's camera branch equals the test oracle's transcription of NVIDIA's
order of operations (nvidia_camera_oracle.py), clamp on exactly in the blocks the mode names; float64 on CPU, a tiny
random model (real head dim 112, three GDN blocks and one softmax block), random block inputs and a moving camera."""

import json

import pytest
import torch
from model_testing import moving_camera, randomize
from nvidia_camera_oracle import nvidia_camera_branch

from sana_wm import SanaWM
from sana_wm.camera import ray_frames
from sana_wm.models.attention import AttentionContext
from sana_wm.models.rope import cached_camera_table, cached_rope_table

CFG = dict(in_channels=16, out_channels=16, hidden_size=224, depth=4, num_heads=2, caption_channels=32,
           reference_numerics=False)  # float64 throughout: the oracle leaves out the bf16 softmax casts
CLAMPED_BLOCKS = {"none": [], "softmax": [3], "all": [0, 1, 2, 3]}


def _model(mode, dtype=torch.float64):
    torch.manual_seed(0)
    model = SanaWM.from_preset("sana_wm_1600m_720p", camera_rms_downscale=mode, **CFG).to(dtype).eval()
    randomize(model)
    return model


def _context(model, B=2, T=4, H=3, W=5):
    """The per-forward context the blocks see (rays, RoPE tables), built as `SanaWM.forward` builds it."""
    grid = (T, H, W)
    ctx = AttentionContext(grid=grid, rope=cached_rope_table(grid, model.config.head_dim, torch.device("cpu")))
    frames = ray_frames(moving_camera(B, T, H, W), H, W)
    ctx.rays, ctx.rays_T, ctx.rays_inv = frames.P, frames.P_T.contiguous(), frames.P_inv.contiguous()
    ctx.cam_rope = cached_camera_table(grid, model.config.head_dim, torch.device("cpu"))
    return ctx


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def runs():
    return {mode: _model(mode) for mode in CLAMPED_BLOCKS}


@pytest.mark.parametrize("mode", list(CLAMPED_BLOCKS))
def test_every_block_matches_the_nvidia_oracle(runs, mode):
    model = runs[mode]
    clamped = [i for i, b in enumerate(model.blocks) if b.attn.camera_rms_downscale]
    assert clamped == CLAMPED_BLOCKS[mode]
    ctx = _context(model)
    gen = torch.Generator().manual_seed(1)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        x = torch.randn(2, 4 * 3 * 5, 224, generator=gen, dtype=torch.float64)  # a modulated block input [B, N, C]
        with torch.no_grad():
            beta, g = attn.gates(x, ctx.grid) if attn.use_gdn else (None, None)
            ours = attn._camera(x, ctx, beta, g)
            oracle = nvidia_camera_branch(attn, x, ctx, beta, g, downscale=i in clamped)
            other = nvidia_camera_branch(attn, x, ctx, beta, g, downscale=i not in clamped)
        assert _rel(ours, oracle) < 1e-10, f"block {i}"
        # The clamp is active in this configuration: the other choice is far off, so the test can tell them apart.
        assert _rel(ours, other) > 1e-2, f"block {i}"



def test_a_lora_adapter_follows_the_option(tmp_path):
    from sana_wm.training.lora import LoraError, add_lora, load_lora, save_lora

    trained = SanaWM.from_preset("tiny", camera_rms_downscale="all")
    add_lora(trained, rank=2)
    path = save_lora(trained, tmp_path / "adapter.safetensors", base_sha256="0" * 64)
    load_lora(SanaWM.from_preset("tiny", camera_rms_downscale="all"), path)
    with pytest.raises(LoraError, match=r"camera_rms_downscale: adapter 'all' vs model 'softmax'"):
        load_lora(SanaWM.from_preset("tiny"), path)

    # An adapter from before the option existed (no record) was trained with the clamp everywhere: it loads on "all"
    # and is refused on the default, naming "all" as the setting that fits.
    from safetensors.torch import load_file, save_file

    from sana_wm.training.lora import read_lora

    tensors, meta = read_lora(path)
    old = json.loads(meta["sana_wm_config"])
    del old["camera_rms_downscale"]
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata={**meta, "sana_wm_config": json.dumps(old)})
    load_lora(SanaWM.from_preset("tiny", camera_rms_downscale="all"), tmp_path / "old.safetensors")
    with pytest.raises(LoraError, match=r"camera_rms_downscale: adapter 'all' vs model 'softmax'"):
        load_lora(SanaWM.from_preset("tiny"), tmp_path / "old.safetensors")
