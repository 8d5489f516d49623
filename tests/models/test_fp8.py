"""Float8 GEMMs (`sana_wm.fp8`): which layers convert, what the conversion keeps, and its numerics.

On CPU the conversion runs torchao's emulation (`emulate=True`: operands rounded to float8 exactly as on the GPU, the
products in high precision), so the layer choice, the parameter and state-dict layout, the gradient flow and the
size of the float8 rounding are all checked here; the `gpu` tests repeat the numerics with the real float8 kernels
and run the inference quantizer, which has no CPU path.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from sana_wm import SanaWM
from sana_wm.camera import action_to_c2w, prepare_camera
from sana_wm.fp8 import (
    Fp8Unavailable,
    check_fp8_device,
    convert_for_training,
    fp8_targets,
    linearize_for_inference,
    quantize_for_inference,
    training_config,
)

#: The 13 per-token GEMMs of each block (names after `blocks.<i>.`).
BLOCK_TARGETS = {"attn.qkv", "attn.proj", "attn.output_gate", "attn.q_proj_cam", "attn.k_proj_cam", "attn.v_proj_cam",
                 "attn.out_proj_cam", "plucker_proj", "cross_attn.q_linear", "cross_attn.proj",
                 "mlp.inverted_conv.conv", "mlp.point_conv.conv", "mlp.t_conv"}
#: GEMMs that stay in bf16 (module docstring of sana_wm.fp8 says why).
KEPT = ["blocks.0.attn.beta_proj", "blocks.0.attn.gate_proj", "blocks.0.cross_attn.kv_linear", "t_block.1",
        "t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.y_proj.fc1", "y_embedder.y_proj.fc2",
        "final_layer.linear", "x_embedder.proj", "plucker_embedder.proj"]


def tiny_model(seed: int = 0) -> SanaWM:
    """The tiny preset with its zero-initialised paths (camera output, Plücker, temporal conv, output gate) made
    non-zero, so that every converted GEMM changes the output."""
    torch.manual_seed(seed)
    model = SanaWM.from_preset("tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("out_proj_cam", "plucker_proj", "plucker_embedder", "t_conv",
                                       "output_gate.weight")):
                p.normal_(std=0.05)
    return model


def tiny_batch(device="cpu", dtype=torch.float32):
    """One 9-frame clip (2 latent frames of 4 × 6, the first clean) with a camera path, text and a regression
    target."""
    T, H, W = 2, 4, 6
    cc, pl = prepare_camera(action_to_c2w("w-4,l-4")[:9], [40.0, 40.0, 96.0, 64.0], pixel_hw=(128, 192),
                            latent_hw=(H, W))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 16, T, H, W, generator=g), torch.randn(1, 1, 32, 32, generator=g)
    target = torch.randn(1, 16, T, H, W, generator=g)
    cast = lambda v: v.to(device, dtype)
    args = (cast(x), torch.tensor([[[0.0, 500.0]]], device=device), cast(y))
    kwargs = {"camera_conditions": cast(cc[None]), "chunk_plucker": cast(pl[None])}
    return args, kwargs, target.to(device)


def step(model, args, kwargs, target):
    """Output and gradients (float32) of one regression step."""
    model.zero_grad(set_to_none=True)
    out = model(*args, **kwargs)
    (out.float() - target).square().mean().backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad.float() for n, p in model.named_parameters()
             if p.grad is not None}
    return out.detach().float(), grads


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat(grads, names):
    return torch.cat([grads[n].flatten() for n in names])


def test_the_targets_are_the_per_token_gemms_of_the_blocks():
    model = SanaWM.from_preset("tiny")
    names = [name for name, _ in fp8_targets(model)]
    assert len(names) == 52  # 13 per block, 4 blocks
    assert {n.split(".", 2)[2] for n in names} == BLOCK_TARGETS
    assert {n.split(".")[1] for n in names} == {"0", "1", "2", "3"}
    for kept in KEPT:
        assert kept not in names
    # The rule needs both feature counts to be multiples of 16 (the float8 GEMM's requirement): width 200 has none.
    assert list(fp8_targets(SanaWM.from_preset("tiny", hidden_size=200, num_heads=1, depth=1))) == []


def test_training_conversion_swaps_exactly_the_targets_and_keeps_the_parameters():
    pytest.importorskip("torchao")
    from torchao.float8.float8_linear import Float8Linear

    from sana_wm.fp8 import Float8PointwiseConv, Float8TemporalConv

    model = tiny_model()
    params = dict(model.named_parameters())
    state = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    linears_before = sum(type(m) is nn.Linear for m in model.modules())
    assert convert_for_training(model, "tensorwise", emulate=True) == 52
    kinds = {}
    for name, m in model.named_modules():
        kinds.setdefault(type(m).__name__, []).append(name)
    assert len(kinds["RowPaddedFloat8Linear"]) == 40 and len(kinds["Float8PointwiseConv"]) == 8
    assert all(isinstance(model.get_submodule(n), Float8Linear) for n in kinds["RowPaddedFloat8Linear"])
    assert len(kinds["Float8TemporalConv"]) == 4
    assert sum(type(m) is nn.Linear for m in model.modules()) == linears_before - 40
    for kept in KEPT:
        assert not isinstance(model.get_submodule(kept), (Float8Linear, Float8PointwiseConv, Float8TemporalConv))
    # The same Parameter objects (an optimizer built before still steps them), names, shapes and dtypes.
    assert all(p is params[n] for n, p in model.named_parameters()) and len(params) == len(list(model.parameters()))
    assert {k: (v.shape, v.dtype) for k, v in model.state_dict().items()} == state
    assert convert_for_training(model, "tensorwise", emulate=True) == 0  # idempotent


@pytest.fixture(scope="module")
def fp32_step():
    """The tiny model, its batch, and its float32 output and gradients."""
    model = tiny_model()
    args, kwargs, target = tiny_batch()
    return model, (args, kwargs, target), *step(model, args, kwargs, target)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_emulated_fp8_step_stays_within_the_float8_rounding_of_the_fp32_step(recipe, fp32_step):
    """Measured (torch 2.13 CPU, torchao 0.18.0): output 0.050 (tensorwise) / 0.055 (rowwise) relative to fp32,
    gradients 0.085 / 0.091 (all parameters together), cosine 0.997 / 0.996; bf16 for scale: 0.0095 and 0.012.
    Bounds ~1.5× those. A layer left in fp32 or a gradient path cut would show as an error below the float8 floor
    (the lower bounds) or a cosine far from 1."""
    pytest.importorskip("torchao")
    ref, batch, out32, g32 = fp32_step
    model = copy.deepcopy(ref)
    convert_for_training(model, recipe, emulate=True)
    out8, g8 = step(model, *batch)
    assert set(g8) == set(g32)
    names = sorted(g32)
    assert 0.025 < rel(out8, out32) < 0.08
    assert 0.04 < rel(flat(g8, names), flat(g32, names)) < 0.14
    assert torch.nn.functional.cosine_similarity(flat(g8, names), flat(g32, names), dim=0) > 0.99


def test_parallelize_converts_before_checkpointing_and_the_step_is_unchanged_by_it(fp32_step):
    pytest.importorskip("torchao")
    from sana_wm.parallel import BlockCheckpointWrapper, parallelize

    ref, (args, kwargs, target), *_ = fp32_step
    plain = copy.deepcopy(ref)
    convert_for_training(plain, "tensorwise", emulate=True)
    out_plain, g_plain = step(plain, args, kwargs, target)
    model = parallelize(copy.deepcopy(ref), activation_checkpointing=True, fp8="tensorwise", fp8_emulate=True)
    assert all(isinstance(b, BlockCheckpointWrapper) for b in model.blocks)
    inner = model.blocks[0]._checkpoint_wrapped_module
    assert type(inner.attn.qkv).__name__ == "RowPaddedFloat8Linear" and type(inner.mlp.t_conv).__name__ == "Float8TemporalConv"
    out, grads = step(model, args, kwargs, target)
    # Dynamic scaling recomputes the same scales from the same tensors: recomputation changes nothing.
    assert torch.equal(out, out_plain)
    assert grads.keys() == g_plain.keys() and all(torch.equal(grads[n], g_plain[n]) for n in grads)


FSDP2_SCRIPT = r"""
import copy, sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
sys.path.insert(0, "tests/models")
from test_fp8 import step, tiny_batch, tiny_model
from sana_wm.fp8 import convert_for_training
from sana_wm.parallel import parallelize

dist.init_process_group("gloo")
ref = tiny_model()
batch = tiny_batch()
plain = copy.deepcopy(ref)
convert_for_training(plain, "tensorwise", emulate=True)
out_ref, g_ref = step(plain, *batch)
model = parallelize(copy.deepcopy(ref), activation_checkpointing=True, fp8="tensorwise", fp8_emulate=True,
                    fsdp_mesh=init_device_mesh("cpu", (1,)), param_dtype=torch.float32)
assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in model.blocks)
inner = model.blocks[0]._checkpoint_wrapped_module
assert type(inner.attn.qkv).__name__ == "RowPaddedFloat8Linear" and type(inner.mlp.point_conv.conv).__name__ == "Float8PointwiseConv"
for _ in range(2):  # the second step runs on resharded parameters
    out, grads = step(model, *batch)
rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
assert rel(out, out_ref) < 1e-6, rel(out, out_ref)
assert grads.keys() == g_ref.keys()
worst = max(rel(grads[n].full_tensor(), g_ref[n]) for n in grads if g_ref[n].norm() > 0)
assert worst < 1e-5, worst
print("FSDP2-FP8-OK")
dist.destroy_process_group()
"""


@pytest.mark.slow  # a subprocess with three checkpointed float8 steps: ~15 s on an idle 2-core box
def test_fp8_under_fsdp2_computes_what_the_unsharded_fp8_model_does():
    """parallelize's order float8 → checkpointing → FSDP2 (`fully_shard` per block, then the root) on one CPU rank:
    the sharded float8 model's output and gradients are the unsharded float8 model's (same roundings)."""
    pytest.importorskip("torchao")
    from sana_wm.testing.training import run_in_process_group

    r = run_in_process_group(["-c", FSDP2_SCRIPT])
    log = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0 and "FSDP2-FP8-OK" in r.stdout, log


def test_checkpoints_after_fp8_training_hold_no_float8_and_load_into_the_plain_model(tmp_path):
    pytest.importorskip("torchao")
    from sana_wm.checkpoint import read_state_dict, save_checkpoint

    model = tiny_model()
    convert_for_training(model, "rowwise", emulate=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    args, kwargs, target = tiny_batch()
    step(model, args, kwargs, target)
    opt.step()
    assert {v.dtype for v in model.state_dict().values()} == {torch.float32}
    for layout in ("official", "diffusers"):
        path = save_checkpoint(model, tmp_path / f"{layout}.safetensors", layout=layout)
        state = read_state_dict(path)
        assert {v.dtype for v in state.values()} == {torch.float32}, layout
    plain = SanaWM.from_preset("tiny")
    plain.load_state_dict(read_state_dict(tmp_path / "official.safetensors"), strict=True)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in model.state_dict().items())


def test_fp8_refuses_lora_unknown_recipes_and_missing_hardware(monkeypatch):
    pytest.importorskip("torchao")
    pytest.importorskip("peft")
    from sana_wm.training.lora import add_lora

    model = SanaWM.from_preset("tiny")
    add_lora(model, rank=4)
    with pytest.raises(ValueError, match="FP8 with LoRA adapters is not supported"):
        convert_for_training(model, "tensorwise", emulate=True)
    with pytest.raises(ValueError, match=r"FP8 recipe 'blockwise' is not valid; expected one of \['tensorwise'"):
        convert_for_training(SanaWM.from_preset("tiny"), "blockwise", emulate=True)
    if not torch.cuda.is_available():
        with pytest.raises(Fp8Unavailable, match=r"compute capability 8\.9 or newer .*CUDA is not available"):
            convert_for_training(SanaWM.from_preset("tiny"), "tensorwise")
        with pytest.raises(Fp8Unavailable, match=r"compute capability 8\.9 or newer .*; the device is cpu"):
            check_fp8_device("cpu")
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    with pytest.raises(Fp8Unavailable, match=r"torchao==0\.18\.0 .*torchao is not installed"):
        training_config("tensorwise")


def test_linearized_inference_model_computes_what_the_model_does():
    """The inference quantizer sees the FFN's 1×1 convs and temporal taps as the Linears they compute."""
    model = tiny_model().eval()
    args, kwargs, _ = tiny_batch()
    with torch.no_grad():
        ref = model(*args, **kwargs)
        names = linearize_for_inference(model)
        out = model(*args, **kwargs)
    assert len(names) == 60  # 52 targets, each temporal conv as 3 taps
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in names)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_row_padding_pads_to_a_multiple_of_16_and_changes_no_output():
    from sana_wm.fp8 import row_padded

    w = torch.randn(5, 7, dtype=torch.float64)
    seen = []
    gemm = lambda z: (seen.append(z.shape), z @ w.T)[1]
    x = torch.randn(1, 3, 8, 7, dtype=torch.float64)  # 24 rows
    assert torch.equal(row_padded(gemm, x), x @ w.T) and seen == [(32, 7)]
    x = torch.randn(2, 8, 7, dtype=torch.float64)  # 16 rows: passed through as it is
    assert torch.equal(row_padded(gemm, x), x @ w.T) and seen[-1] == (2, 8, 7)


def test_emulated_fp8_step_with_padded_rows_equals_the_unpadded_one(monkeypatch):
    """The tiny batch's temporal taps read 24 rows (one latent frame of 4 × 6), padded to 32 for the float8 weight
    gradient; with padding switched off (emulation does not need it) the step is the same to float32 rounding."""
    pytest.importorskip("torchao")
    import sana_wm.fp8 as fp8

    args, kwargs, target = tiny_batch()
    runs = []
    for multiple in (16, 1):
        monkeypatch.setattr(fp8, "FP8_ROW_MULTIPLE", multiple)
        model = tiny_model()
        convert_for_training(model, "tensorwise", emulate=True)
        runs.append(step(model, args, kwargs, target))
    (out_a, g_a), (out_b, g_b) = runs
    assert torch.equal(out_a, out_b)
    assert g_a.keys() == g_b.keys() and max(rel(g_a[n], g_b[n]) for n in g_a if g_b[n].norm() > 0) < 1e-6


def test_inference_keeps_layers_with_an_all_zero_weight_row_in_bf16():
    """A freshly initialised model's zero-initialised layers (per block: the camera output projection, the GDN output
    gate, the temporal conv's three taps) would be divided by their zero float8 scale, so they stay in bf16; every
    other target is stored in float8."""
    from sana_wm.fp8 import inference_targets

    names, kept = inference_targets(SanaWM.from_preset("tiny"))
    per_block = ["attn.out_proj_cam", "attn.output_gate", "mlp.t_conv.taps.0", "mlp.t_conv.taps.1",
                 "mlp.t_conv.taps.2"]
    assert kept == [f"blocks.{i}.{n}" for i in range(4) for n in per_block]
    assert len(names) == 40 and not set(kept) & names
    names, kept = inference_targets(tiny_model())  # output gates made non-zero
    assert kept == [] and len(names) == 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_inference_quantization_without_a_gpu_names_the_requirement():
    pytest.importorskip("torchao")
    with pytest.raises(Fp8Unavailable, match=r"compute capability 8\.9"):
        quantize_for_inference(tiny_model().bfloat16(), "rowwise", device="cpu")


# ---------------------------------------------------------------------------------------------------------------------
# GPU (compute capability 8.9+): the real float8 kernels
# ---------------------------------------------------------------------------------------------------------------------


def _fp8_gpu():
    pytest.importorskip("torchao")
    try:
        check_fp8_device("cuda")
    except Fp8Unavailable as err:
        pytest.skip(str(err))


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_gpu_fp8_training_step_matches_bf16_within_the_float8_rounding(recipe):
    """bf16 model, real float8 GEMMs, against the same model in bf16. Bounds: the CPU-emulated float8 errors
    (output 0.055, gradients 0.091 against fp32; bf16's own error is 6× smaller) with room for the GPU's fast
    accumulation in the forward GEMM: output < 0.10, gradients < 0.16, cosine > 0.985."""
    _fp8_gpu()
    ref = tiny_model().cuda().bfloat16()
    args, kwargs, target = tiny_batch("cuda", torch.bfloat16)
    out_bf16, g_bf16 = step(ref, args, kwargs, target)
    model = copy.deepcopy(ref)
    assert convert_for_training(model, recipe) == 52
    out8, g8 = step(model, args, kwargs, target)
    names = sorted(g_bf16)
    assert set(g8) == set(g_bf16)
    assert 0.01 < rel(out8, out_bf16) < 0.10
    assert rel(flat(g8, names), flat(g_bf16, names)) < 0.16
    assert torch.nn.functional.cosine_similarity(flat(g8, names), flat(g_bf16, names), dim=0) > 0.985


@pytest.mark.gpu
def test_gpu_fp8_compiled_checkpointed_training_steps_run_and_learn():
    """parallelize's full order (float8 → checkpointing → compile) on the GPU: three optimizer steps on one batch
    run, every parameter that the bf16 step reaches gets a finite gradient, and the loss goes down."""
    _fp8_gpu()
    from sana_wm.parallel import parallelize

    model = parallelize(tiny_model().cuda(), activation_checkpointing=True, ac_policy="selective", compile=True,
                        fp8="tensorwise")
    args, kwargs, target = tiny_batch("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            out = model(*args, **kwargs)
        loss = (out.float() - target).square().mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert {v.dtype for v in model.state_dict().values()} == {torch.float32}


@pytest.mark.gpu
@pytest.mark.parametrize("recipe, bound", [("rowwise", 0.08), ("tensorwise", 0.10)])
def test_gpu_fp8_inference_forward_matches_bf16(recipe, bound):
    """torchao's quantize_ (float8 weights, dynamic activations) on the bf16 model: output within `bound` of bf16
    (the float8 rounding of both operands, as in the training test's forward)."""
    _fp8_gpu()
    ref = tiny_model().cuda().bfloat16().eval()
    args, kwargs, _ = tiny_batch("cuda", torch.bfloat16)
    model = copy.deepcopy(ref)
    assert quantize_for_inference(model, recipe, device="cuda") == 60
    with torch.no_grad():
        out_bf16, out8 = ref(*args, **kwargs).float(), model(*args, **kwargs).float()
    assert 0.005 < rel(out8, out_bf16) < bound
    with pytest.raises(ValueError, match="needs the DiT in bfloat16"):
        quantize_for_inference(tiny_model().cuda(), recipe, device="cuda")
    # A fresh model (zero output gates: kept in bf16) and a batch with all-zero token rows give finite outputs.
    fresh = SanaWM.from_preset("tiny").cuda().bfloat16().eval()
    assert quantize_for_inference(fresh, recipe, device="cuda") == 40
    args[0][..., :2] = 0
    with torch.no_grad():
        assert torch.isfinite(fresh(*args, **kwargs)).all()
