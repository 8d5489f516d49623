"""SANA-WM DiT on CPU: presets, key layout, initialisation, input handling, autograd, precision."""

import numpy as np
import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import to_diffusers_layout
from sana_wm.parallel import parallelize


def _cam(B, T):
    cc = torch.zeros(B, T, 20)
    cc[..., :16] = torch.eye(4).flatten()
    cc[:, 1:, 11] = torch.arange(1, T).float() * 0.5  # forward motion along +Z
    cc[..., 16:] = torch.tensor([5.0, 5.0, 3.0, 2.0])
    return cc


def _inputs(B=2, T=3, H=4, W=6, C=16, L=5, Cy=32):
    return torch.randn(B, C, T, H, W), torch.tensor([500.0, 250.0])[:B], torch.randn(B, L, Cy)


def test_full_preset_parameter_count_and_pattern():
    with torch.device("meta"):
        model = SanaWM.from_preset("sana_wm_1600m_720p")
    assert model.num_parameters() == 2_661_800_448
    assert [i for i, b in enumerate(model.blocks) if not b.use_gdn] == [3, 7, 11, 15, 19]
    assert model.config.head_dim == 112


def test_full_preset_matches_diffusers_key_layout():
    port = pytest.importorskip("diffusers.models.transformers.transformer_sana_wm")
    with torch.device("meta"):
        ours = to_diffusers_layout(SanaWM.from_preset("sana_wm_1600m_720p").state_dict())
        theirs = port.SanaWMTransformer3DModel().state_dict()
    assert len(theirs) == 870
    assert sorted(ours) == sorted(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert sum(v.numel() for v in ours.values()) == 2_661_800_468  # 2.6618 B values incl. 20 recall_gate buffers


def test_tiny_preset_is_small_and_keeps_head_dim():
    model = SanaWM.from_preset("tiny")
    assert model.config.head_dim == 112 and len(model.blocks) == 4
    assert [b.use_gdn for b in model.blocks] == [True, True, True, False]
    assert model.num_parameters() < 10_000_000


def test_preset_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown SANA-WM preset 'huge'"):
        SanaWM.from_preset("huge")
    with pytest.raises(ValueError, match=r"unknown SanaWMConfig field\(s\) \['hiden_size'\]"):
        SanaWM.from_preset("tiny", hiden_size=10)


def test_camera_branch_contributes_exactly_zero_at_init():
    model = SanaWM.from_preset("tiny").eval()
    x, t, y = _inputs()
    with torch.no_grad():
        base = model(x, t, y)
        with_cam = model(x, t, y, camera_conditions=_cam(2, 3), chunk_plucker=torch.randn(2, 48, 3, 4, 6))
    assert torch.equal(base, with_cam)
    # …and it is live once the zero-initialised projections move.
    with torch.no_grad():
        for block in model.blocks:
            block.attn.out_proj_cam.weight.normal_(std=0.05)
        moved = model(x, t, y, camera_conditions=_cam(2, 3))
    assert not torch.allclose(moved, base)


def test_both_camera_branches_learn_from_the_init():
    """Silent at init, yet every camera path gets a gradient on the first step: the Plücker branch is silenced by its
    zero embedder alone (a zero `plucker_proj` as well would pin both at zero for ever, each gradient being a
    product with the other), the UCPE branch by its zero output projection."""
    torch.manual_seed(0)
    model = SanaWM.from_preset("tiny")
    x, t, y = _inputs()
    assert all(b.plucker_proj.weight.abs().sum() > 0 for b in model.blocks)
    assert model.plucker_embedder.proj.weight.abs().sum() == 0
    out = model(x, t, y, camera_conditions=_cam(2, 3), chunk_plucker=torch.randn(2, 48, 3, 4, 6))
    out.square().mean().backward()
    assert model.plucker_embedder.proj.weight.grad.abs().sum() > 0
    for block in model.blocks:
        assert block.attn.out_proj_cam.weight.grad.abs().sum() > 0
        assert block.plucker_proj.weight.grad.abs().sum() == 0  # its input is exactly zero at init


def test_zeroing_the_camera_branch_makes_the_dit_ignore_the_camera():
    from sana_wm.camera import action_to_c2w, prepare_camera

    torch.manual_seed(0)
    dit = SanaWM.from_preset("tiny").eval()
    with torch.no_grad():  # a trained camera branch: non-zero output projections and Plücker embedding
        for lin in dit.camera_output_projections():
            lin.weight.normal_(std=0.05)
            lin.bias.normal_(std=0.05)
        for p in dit.plucker_embedder.parameters():
            p.normal_(std=0.05)
    K = np.array([60.0, 60.0, 56.0, 32.0])
    x = torch.randn(1, 16, 3, 8, 14)
    y = torch.randn(1, 32, 32)

    def run(action):
        cam, plk = prepare_camera(action_to_c2w(action), K, (64, 112), (8, 14), num_frames=17)
        with torch.no_grad():
            return dit(x, torch.tensor([500.0]), y, camera_conditions=cam[None], chunk_plucker=plk[None])

    assert not torch.allclose(run("w-16"), run("l-16"))
    assert dit.zero_camera_branch() == 4 * len(dit.blocks)
    assert torch.equal(run("w-16"), run("l-16"))  # exactly: the camera adds 0 · anything


def test_gdn_init_is_linear_attention_equivalent():
    attn = SanaWM.from_preset("tiny").blocks[0].attn
    x = torch.randn(1, 6, 224)
    beta, g = attn.gates(x, (2, 3, 1))
    assert torch.allclose(beta, torch.full_like(beta, torch.sigmoid(torch.tensor(5.0)).item()))
    assert torch.allclose(g, torch.full_like(g, 0.99330715), atol=1e-6)
    assert torch.allclose(torch.nn.functional.silu(attn.output_gate.bias), torch.ones(224), atol=1e-6)
    assert torch.equal(attn.conv_k.weight[:, 0, -1], torch.ones(224))


def test_timestep_forms_agree_and_are_truncated():
    model = SanaWM.from_preset("tiny").eval()
    x, _, y = _inputs(B=2)
    with torch.no_grad():
        a = model(x, torch.tensor([731.0, 20.0]), y)
        b = model(x, torch.tensor([[731.0] * 3, [20.0] * 3]), y)
        c = model(x, torch.tensor([[[731.9] * 3], [[20.2] * 3]]), y)
        d = model(x, torch.tensor([[731.0], [20.0]]), y)
        per_frame = model(x, torch.tensor([[0.0, 731.0, 731.0], [0.0, 20.0, 20.0]]), y)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert not torch.allclose(a[:, :, 0], per_frame[:, :, 0])


def test_y_with_singleton_axis_and_mask():
    model = SanaWM.from_preset("tiny").eval()
    x, t, y = _inputs()
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    with torch.no_grad():
        a = model(x, t, y, mask=mask)
        b = model(x, t, y[:, None], mask=mask)
        padded_changed = model(x, t, torch.cat([y[:, :3], torch.randn(2, 2, 32)], 1), mask=mask)
    assert torch.equal(a, b)
    assert torch.allclose(a[1], padded_changed[1], atol=1e-6)  # padded tokens are invisible


def test_all_padded_caption_stays_finite():
    model = SanaWM.from_preset("tiny").eval()
    x, t, y = _inputs()
    with torch.no_grad():
        out = model(x, t, y, mask=torch.zeros(2, 5))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=torch.randn(2, 8, 3, 4, 6)), r"x: expected \[B, 16, T, H, W\], got \[2, 8, 3, 4, 6\]"),
        (dict(timestep=torch.zeros(2, 4)), r"timestep: expected .* got \[2, 4\]"),
        (dict(camera_conditions=torch.zeros(2, 2, 20)), r"camera_conditions: expected \[B, T, 20\] = \[2, 3, 20\]"),
        (dict(camera_conditions=torch.full((2, 3, 20), float("nan"))), "NaN"),
        (dict(chunk_plucker=torch.zeros(2, 48, 3, 4, 5)), r"chunk_plucker: expected \[2, 48, 3, 4, 6\]"),
        (dict(y=torch.randn(2, 5, 31)), r"y: expected \[B, L, 32\]"),
        (dict(mask=torch.ones(2, 4)), r"mask: expected \[B, L\] = \[2, 5\]"),
    ],
)
def test_bad_inputs_raise_named_errors(kwargs, message):
    model = SanaWM.from_preset("tiny")
    x, t, y = _inputs()
    args = dict(x=x, timestep=t, y=y) | kwargs
    with pytest.raises(ValueError, match=message):
        model(**args)


@pytest.mark.parametrize("policy, num_blocks", [("full", None), ("selective", None), ("selective", 2), ("attn", None)])
def test_gradients_match_with_activation_checkpointing(policy, num_blocks):
    from sana_wm.parallel import BlockCheckpointWrapper

    torch.manual_seed(0)
    ref = SanaWM.from_preset("tiny")
    ckpt = SanaWM.from_preset("tiny")
    ckpt.load_state_dict(ref.state_dict())
    parallelize(ckpt, activation_checkpointing=True, ac_policy=policy, ac_blocks=num_blocks)
    assert list(ckpt.state_dict()) == list(ref.state_dict())  # wrapping keeps checkpoint names
    wrapped = [isinstance(b, BlockCheckpointWrapper) for b in ckpt.blocks]
    assert wrapped == [i < (num_blocks or len(wrapped)) for i in range(len(wrapped))]
    x, t, y = _inputs()
    cc, pl = _cam(2, 3), torch.randn(2, 48, 3, 4, 6)
    for m in (ref, ckpt):
        m(x, t, y, camera_conditions=cc, chunk_plucker=pl).square().mean().backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), ckpt.named_parameters(), strict=True):
        if not a.requires_grad:  # frozen checkpoint-only parameters (raymap embedder, softmax-block gates)
            assert ref.is_unused_parameter(n) and a.grad is None, n
            continue
        assert a.grad is not None, n
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_selective_checkpointing_saves_the_heavy_ops_and_rejects_unknown_policies():
    from torch.utils.checkpoint import CheckpointPolicy

    from sana_wm.parallel import _saved_ops, apply_activation_checkpointing

    saved = _saved_ops()
    assert torch.ops.aten.mm.default in saved and torch.ops.sana_wm.state_scan.default in saved
    assert torch.ops.sana_wm.bidirectional_scan.default in saved and torch.ops.sana_wm.gdn_readout.default in saved
    assert torch.ops.aten.mul.Tensor not in saved  # element-wise work is recomputed
    assert CheckpointPolicy.MUST_SAVE  # the policy API this relies on exists in the pinned torch
    assert torch.ops.sana_wm.rms_relu_rope.default in saved and torch.ops.sana_wm.ucpe_clamp.default in saved
    with pytest.raises(ValueError, match="'sometimes'"):
        apply_activation_checkpointing(SanaWM.from_preset("tiny"), "sometimes")
    with pytest.raises(ValueError, match=r"num_blocks=5 must be in \[0, 4\]"):
        apply_activation_checkpointing(SanaWM.from_preset("tiny"), "full", num_blocks=5)


def test_ffn_policy_recomputes_only_ops_wider_than_the_model():
    from sana_wm.parallel import _is_wide, apply_activation_checkpointing

    aten = torch.ops.aten
    assert _is_wide(aten.silu.default, (torch.empty(1, 30, 10),), 8)  # the FFN's hidden channels
    assert not _is_wide(aten.mul.Tensor, (torch.empty(1, 30, 8), 2.0), 8)  # tokens (30) are not channels
    assert _is_wide(aten.cat.default, ([torch.empty(1, 4), torch.empty(1, 9)], -1), 8)  # nested arguments count
    img = torch.empty(2, 10, 3, 4).to(memory_format=torch.channels_last)
    assert _is_wide(aten.convolution.default, (img, torch.empty(10, 1, 3, 3), None), 8)
    assert not _is_wide(aten.convolution.default, (img[:, :8], torch.empty(8, 1, 3, 3), None), 8)

    class NoConfig(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="'ffn' needs model.config.hidden_size"):
        apply_activation_checkpointing(NoConfig(), "ffn")
    with pytest.raises(ValueError, match="ac_policy='ffn' needs compile=True"):
        parallelize(SanaWM.from_preset("tiny"), activation_checkpointing=True, ac_policy="ffn")


def test_rope_tables_are_built_once_and_survive_inference_mode():
    """Forwards on one grid reuse one pair of RoPE tables (no per-step table kernels or host-to-device copy), and
    tables first built while sampling under inference mode still work in a training backward."""
    from sana_wm.models.rope import cached_camera_table, cached_rope_table

    cached_rope_table.cache_clear()
    cached_camera_table.cache_clear()
    model = SanaWM.from_preset("tiny")
    x, t, y = _inputs(T=3, H=4, W=5)
    with torch.inference_mode():
        model(x, t, y, camera_conditions=_cam(2, 3))
    full, cam = cached_rope_table((3, 4, 5), model.config.head_dim, x.device), cached_camera_table(
        (3, 4, 5), model.config.head_dim, x.device)
    assert not full.cos.is_inference() and not cam.sin.is_inference()
    model(x, t, y, camera_conditions=_cam(2, 3)).square().mean().backward()  # saves the cached tables for backward
    assert cached_rope_table.cache_info().misses == 1 and cached_camera_table.cache_info().misses == 1
    assert cached_rope_table((3, 4, 5), model.config.head_dim, x.device) is full


def test_bf16_autocast_runs_scans_in_fp32_and_stays_close():
    model = SanaWM.from_preset("tiny").eval()
    x, t, y = _inputs()
    with torch.no_grad():
        ref = model(x, t, y, camera_conditions=_cam(2, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, y, camera_conditions=_cam(2, 3))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert ((low - ref).norm() / ref.norm()).item() < 5e-2


@pytest.mark.parametrize("policy", [None, "full", "selective", "ffn", "attn"])
def test_blocks_compile_as_whole_graphs_forward_and_backward(policy):
    """Per-block torch.compile with fullgraph=True: a graph break anywhere in a block (a host sync such as .item(),
    an untraceable op, a custom op without a fake or autograd rule) raises. GDN and softmax blocks, camera branch on,
    with and without selective checkpointing; outputs and gradients equal the uncompiled model's. The backend is
    AOTAutograd with Inductor's decompositions and partitioner but eager kernels (no C++ compiler, ~10 s): plain
    `aot_eager` trips over a PyTorch stride mismatch between softplus's real and fake backward (the gate's
    `view`), which Inductor's decompositions do not have; Inductor itself passes on CPU but takes minutes."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from sana_wm.models.sana_wm import SanaWMBlock
    from sana_wm.parallel import apply_activation_checkpointing, apply_compile

    torch._dynamo.reset()  # static shapes, whatever earlier tests compiled (dynamic ones took 5× as long to trace)
    torch.manual_seed(0)
    ref = SanaWM.from_preset("tiny")
    model = SanaWM.from_preset("tiny")
    model.load_state_dict(ref.state_dict())
    if policy is not None:
        apply_activation_checkpointing(model, policy, compiled=True)
    apply_compile(model, backend="aot_eager_decomp_partition", fullgraph=True)
    compiled = [vars(m)["forward"] for m in (*model.blocks, model.final_layer)]
    apply_compile(model, backend="aot_eager_decomp_partition", fullgraph=True)  # idempotent: nothing wrapped twice
    assert [vars(m)["forward"] for m in (*model.blocks, model.final_layer)] == compiled
    # Blocks, prologue and final layer are compiled in place, as torch.compile's wrappers of their methods (fullgraph:
    # the rays' float32 maths must trace whole); each block is still the SanaWMBlock (or checkpoint wrapper) it was.
    assert model.embed._torchdynamo_orig_callable.__func__ is SanaWM.embed
    assert all(vars(m)["forward"]._torchdynamo_orig_callable.__self__ is m for m in (*model.blocks, model.final_layer))
    assert all(isinstance(b, SanaWMBlock if policy is None else CheckpointWrapper) for b in model.blocks)
    assert list(model.state_dict()) == list(ref.state_dict())
    x, t, y = _inputs()
    cc, pl = _cam(2, 3), torch.randn(2, 48, 3, 4, 6)
    outs = []
    for m in (ref, model):
        out = m(x, t, y, camera_conditions=cc, chunk_plucker=pl)
        out.square().mean().backward()
        outs.append(out)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
    # The decompositions round differently in float32: measured 2.9e-6 (output) and at most 1.4e-4 (a norm
    # weight's gradient, a sum with cancellation); a wrong or missing gradient path is off by O(1).
    assert rel(outs[1], outs[0]) < 1e-5
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters(), strict=True):
        if a.grad is not None:
            assert b.grad is not None and rel(b.grad, a.grad) < 1e-3, n


def _saved_by_forward(model, device: str) -> float:
    """Bytes the autograd graph holds after a forward of the tiny model (camera on), parameters excluded, in units of
    one float32 [tokens, hidden] activation per block: what a training step keeps until its backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    torch.manual_seed(1)
    x, t, y = (a.to(device) for a in _inputs())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, t, y, camera_conditions=_cam(2, 3).to(device),
                    chunk_plucker=torch.randn(2, 48, 3, 4, 6, device=device))
    out.square().mean().backward()
    B, _, T, H, W = x.shape
    return total / (len(model.blocks) * B * T * H * W * model.config.hidden_size * 4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_full_checkpointing_keeps_no_more_than_eager(device):
    """A compiled, fully checkpointed block keeps its inputs, not its activations. torch 2.11's plain checkpoint under
    torch.compile left the ops inside custom autograd.Functions (the FFN's depthwise conv and bias-GLU) untagged, and
    the partitioner saved their outputs: 9 more units here (the conv's 6·C channels and the GLU's 3·C), 0.75 GB per
    block at 161 frames on the full model. Measured on CPU (torch 2.13): eager 3.3 units, compiled 3.7, no
    checkpointing 93."""
    from sana_wm.parallel import apply_activation_checkpointing, apply_compile

    torch._dynamo.reset()  # no dims made dynamic by earlier compiles of the block (that changes what is saved)
    saved = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = SanaWM.from_preset("tiny").to(device).train()
        apply_activation_checkpointing(model, "full", compiled=compiled)
        if compiled:
            apply_compile(model, backend="aot_eager_decomp_partition", fullgraph=True)
        saved[compiled] = _saved_by_forward(model, device)
    assert saved[True] < saved[False] + 1.0, saved


def test_attn_policy_recomputes_everything_but_the_self_attention():
    """"attn" checkpointing keeps the self-attention kernels' outputs (main and camera branch of the softmax block):
    over a forward and backward those kernels run once, where "full" runs them again in the recompute; the
    cross-attention is recomputed under both. Counted at the dispatcher: a kept output is served from the checkpoint's
    cache without reaching the kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sana_wm.parallel import _attention_ops, _is_self_attention, apply_activation_checkpointing

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = {"self": 0, "cross": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in _attention_ops():
                self.calls["self" if _is_self_attention(args) else "cross"] += 1
            return func(*args, **(kwargs or {}))

    calls = {}
    for policy in (None, "full", "attn"):
        torch.manual_seed(0)
        model = SanaWM.from_preset("tiny").train()
        if policy is not None:
            apply_activation_checkpointing(model, policy)
        x, t, y = _inputs()
        with Calls() as seen:
            model(x, t, y, camera_conditions=_cam(2, 3), chunk_plucker=torch.randn(2, 48, 3, 4, 6)).sum().backward()
        calls[policy] = seen.calls
    # one softmax block (main + camera branch), cross-attention in all 4 blocks
    assert calls == {None: {"self": 2, "cross": 4}, "full": {"self": 4, "cross": 8}, "attn": {"self": 2, "cross": 8}}


def test_compiled_blocks_still_run_the_wrappers_a_strategy_adds_by_block_class():
    """Lightning's FSDPStrategy wraps and checkpoints every SanaWMBlock after `configure_model` has compiled the
    blocks. Compiled blocks must keep their class and call whatever is put under them: when they were replaced by
    torch.compile's OptimizedModule, which binds the block's __call__ when built, the checkpoint wrapper never ran and
    the forward kept 93 units of activations (no checkpointing) instead of ≈ 3.3."""
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from sana_wm.models.sana_wm import SanaWMBlock
    from sana_wm.parallel import apply_compile

    graphs = []

    def backend(gm, example_inputs):  # counts what Dynamo compiled: the blocks must still run compiled
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager_decomp_partition")(gm, example_inputs)

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SanaWM.from_preset("tiny").train()
    apply_compile(model, backend=backend, fullgraph=True)  # what `parallelize(compile=True)` does under FSDP
    assert all(isinstance(b, SanaWMBlock) for b in model.blocks)
    strategy = FSDPStrategy(activation_checkpointing_policy={SanaWMBlock})  # as sana_wm.training.launch builds it
    _setup_activation_checkpointing(model, strategy._activation_checkpointing_kwargs)
    assert all(isinstance(b, CheckpointWrapper) for b in model.blocks)
    saved = _saved_by_forward(model, "cpu")
    assert saved < 10.0, saved
    assert len(graphs) >= 2  # the GDN and the softmax block graphs (and the prologue's, the final layer's)


def test_hooks_on_compiled_blocks_run_eagerly():
    """DeepSpeed ZeRO-3 and FSDP2 register Python hooks with state on every module after the blocks are compiled; they
    must run outside the compiled graphs. `nn.Module.compile()` traced them: a hook appending to a list recompiled on
    every call until fullgraph's hard failure."""
    from sana_wm.parallel import apply_compile

    torch.manual_seed(0)
    model = SanaWM.from_preset("tiny")
    apply_compile(model, backend="aot_eager_decomp_partition", fullgraph=True)
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(torch.compiler.is_compiling()))
    x, t, y = _inputs()
    with torch.no_grad():
        for _ in range(3):
            model(x, t, y, camera_conditions=_cam(2, 3))
    assert seen == [False] * (3 * len(model.blocks))


def _fused_vs_composition(device: str) -> list[tuple[str, float, float]]:
    """The tiny model's output and every gradient (camera and Plücker on, a rotated frame) three ways: float32 with the
    fused prologue ops, float32 with the compositions, and float64 (compositions; the reference). Returns, for
    "output" and each parameter, (name, |fused − composition|, |composition − float64|), both relative to the
    reference's norm: the second is what float32 rounding alone costs that quantity."""
    import copy

    from sana_wm.ops.switch import override

    torch.manual_seed(0)
    model = SanaWM.from_preset("tiny").to(device)
    with torch.no_grad():  # the zero-initialised camera paths and identity short convs made non-trivial
        for name, p in model.named_parameters():
            if any(s in name for s in ("out_proj_cam", "plucker", "conv_k", "norm")):
                p.add_(0.05 * torch.randn_like(p))
    x, t, y = (a.to(device) for a in _inputs())
    cc = _cam(2, 3)
    c2w = cc[:, 2, :16].reshape(2, 4, 4).clone()
    R = torch.linalg.qr(torch.randn(3, 3))[0]
    c2w[:, :3, :3] = R * torch.linalg.det(R).sign()  # a rotated last frame (det +1): a non-trivial UCPE
    cc[:, 2, :16] = c2w.flatten(1)
    cc, pl = cc.to(device), torch.randn(2, 48, 3, 4, 6, device=device)
    runs = []
    # No TF32 in the float32 convs and GEMMs: it would swamp float32 rounding.
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for fused, dtype in ((True, torch.float32), (False, torch.float32), (False, torch.float64)):
                net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
                with override(SANA_WM_FUSED_PROLOGUE=fused, SANA_WM_FUSED_UCPE=fused):
                    out = net(*(a.to(dtype) for a in (x, t, y)), camera_conditions=cc.to(dtype),
                              chunk_plucker=pl.to(dtype))
                    out.square().mean().backward()
                grads = {n: p.grad.double() for n, p in net.named_parameters() if p.grad is not None}
                runs.append({"output": out.detach().double(), **grads})
                net.zero_grad(set_to_none=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    fused, comp, ref = runs
    assert fused.keys() == comp.keys() == ref.keys()
    scale = {n: ref[n].norm().clamp_min(1e-30) for n in ref}
    return [(n, ((fused[n] - comp[n]).norm() / scale[n]).item(), ((comp[n] - ref[n]).norm() / scale[n]).item())
            for n in ref]


def _worst_excess(errors: list[tuple[str, float, float]]) -> tuple[float, str]:
    """The largest |fused − composition| in units of the composition's own float32 error (plus 1e-7, float32's
    resolution, so that an exactly rounded quantity does not divide by zero), and its name."""
    return max((d / (e + 1e-7), n) for n, d, e in errors)


def test_fused_vs_composition_harness_on_cpu():
    """On CPU both float32 runs take the compositions: the harness must see no difference between them, and the
    float64 reference must measure a float32 rounding error for every quantity (a nonzero but small one)."""
    errors = _fused_vs_composition("cpu")
    assert errors[0][0] == "output" and len(errors) > 10
    assert all(d == 0.0 for _, d, _ in errors)
    assert all(0 < e < 1e-2 for _, _, e in errors), max(errors, key=lambda r: r[2])


@pytest.mark.gpu
def test_fused_prologue_ops_match_the_compositions_in_the_whole_model():
    """The Triton query/key and camera prologues wired into the model (which stream gets which matrix, the key scale,
    the ratio's β discount) give the composition's output and gradients to float32 accuracy: each quantity's fused −
    composition difference is within a few times what float32 rounding costs the composition itself (measured against
    float64). A fixed bound does not work: gradients that are sums with cancellation (a key projection's bias under
    softmax) lose 2e-3 of their size to rounding, the output 6e-5. Under Triton's CPU interpreter the worst quantity
    differed by 1.05× its own rounding error (the output by 0.13×); a 1 % error in the camera scale measured 1.5e3×,
    a transposed camera matrix 5.5e4×."""
    ratio, name = _worst_excess(_fused_vs_composition("cuda"))
    assert ratio < 8, name
