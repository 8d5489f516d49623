"""The one place where parallelism and memory tricks are applied to a SANA-WM model, from outside the model code.

`parallelize(model, ...)` applies, in order: float8 GEMMs (optional, `sana_wm.fp8`: torchao's layers swapped in
before anything wraps or compiles them, as torchao requires), per-block activation checkpointing (non-reentrant; "full" recomputes
the whole block, "selective" keeps the outputs of the GEMMs, attention kernels and GDN scans and recomputes only the
cheap element-wise work, "ffn" keeps those too but recomputes only the FFN's wide middle and lets torch.compile's
partitioner decide the rest, "attn" recomputes everything but the self-attention outputs), per-block `torch.compile` (plus the model's prologue and final layer), and FSDP2
context parallelism over latent frames (`sana_wm.context_parallel`, over a CP mesh), and FSDP2 sharding
(`fully_shard` per block, then the root) over a device mesh. The trainer (`train.py`) calls it from
`LightningModule.configure_model` for checkpointing and compile only: its strategies (DDP, Lightning's FSDP, DeepSpeed)
wrap the model themselves, after it. The FSDP2 part (`fsdp_mesh`) is for loops of one's own.

Context parallelism with torch.compile traces the frame exchanges into the compiled blocks; with activation
checkpointing as well it is refused (`sana_wm.context_parallel.check_compile_checkpointing` says why).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, CheckpointWrapper

log = logging.getLogger(__name__)

#: Tokens that the wrappers `parallelize` and the trainers apply (activation checkpointing, torch.compile of a module,
#: FSDP1) insert into parameter and state-dict names.
WRAPPER_TOKENS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def plain_name(name: str) -> str:
    """A parameter or state-dict name as the unwrapped model has it (every `WRAPPER_TOKENS` entry removed), so that
    keys, comparisons and selections do not depend on how the model happens to be wrapped."""
    for token in WRAPPER_TOKENS:
        name = name.replace(token, "")
    return name


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to parallelise")
    return blocks


AC_POLICIES = ("full", "selective", "ffn", "attn")


def _saved_ops() -> set:
    """Ops whose outputs selective checkpointing keeps: the FLOP-heavy ones (GEMMs, attention, the GDN's fused
    transitions, state scans and read-outs) and the fused query/key and camera (UCPE) prologues.

    Recomputing them is what makes full checkpointing cost a second forward; the element-wise work between them
    (norms, RoPE/UCPE, gates, SiLU, the short convs) is cheap to redo and is where most activation bytes are.
    """
    import sana_wm.ops.gdn.torch_scan  # noqa: F401 - registers the torch.ops.sana_wm GDN ops
    import sana_wm.ops.qk_prologue  # noqa: F401 - and the query/key and camera prologue ops
    import sana_wm.ops.ucpe  # noqa: F401

    aten, ours = torch.ops.aten, torch.ops.sana_wm
    ops = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, ours.state_scan.default,
           ours.bidirectional_scan.default, ours.bidirectional_scan_two.default, ours.gdn_transitions.default,
           ours.gdn_readout.default,
           # Not FLOP-heavy, but fused passes whose bf16 outputs (0.3 GB per block for each at 161 frames) are the
           # GDN's and SDPA's inputs: keeping them spares the backward a second prologue pass.
           ours.rms_relu_rope.default, ours.ucpe_clamp.default}
    # torchao's float8 GEMM (`sana_wm.fp8`): the FP8 model's mm, saved like it (recomputing it is the cost that
    # selective checkpointing exists to avoid).
    if hasattr(aten, "_scaled_mm"):
        ops.add(aten._scaled_mm.default)
    return ops | _attention_ops()


def _attention_ops() -> set:
    """The fused scaled-dot-product attention kernels PyTorch may dispatch to (those this torch has)."""
    aten = torch.ops.aten
    names = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


def _is_self_attention(args) -> bool:
    """Whether a fused attention call attends over its own tokens: as many keys as queries ([..., L, D] each).
    Cross-attention to the caption has its few hundred keys."""
    q, k = args[0], args[1]
    return q.shape[-2] == k.shape[-2]


def _attention_context():
    """"attn": recompute everything except the self-attention kernels' outputs.

    Full checkpointing runs each block's forward twice; in the softmax blocks that second forward includes the
    attention over all tokens (main and camera branch), the costliest op per byte it writes: at 161 frames its output
    is [tokens, hidden] in bf16, 83 MB per call, against ≈ 30 TFLOP for the model's attention forwards. Keeping those
    outputs spares that second attention forward for well under 1 GiB, so the step stays at about full
    checkpointing's memory (measured in bench/RESULTS.md). The cross-attention, with few FLOPs and a call in every
    block, is recomputed like everything else."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    attention = _attention_ops()

    def policy(ctx, op, *args, **kwargs):
        if op in attention and _is_self_attention(args):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def _is_wide(op, args, width: int) -> bool:
    """Whether an op works on activations wider than the model (the FFN's 2·hidden channels, 6× the width): a tensor
    argument whose last (channel) dim exceeds `width`, or a convolution with more output channels than that."""
    if op is torch.ops.aten.convolution.default:
        return args[1].shape[0] > width
    return any(isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[-1] > width
               for t in torch.utils._pytree.tree_leaves(args))


def _selective_context(width: int | None = None):
    """"selective" (width None): keep the `_saved_ops` outputs, recompute everything else. "ffn" (width = the model's
    hidden size): keep them, recompute the wide FFN middle, and leave every other op to the compiler's min-cut
    partitioner (PREFER_SAVE: it recomputes what fuses cheaply into the backward and keeps the rest, as in a block
    without checkpointing). Meant for compiled blocks; run eagerly, PREFER_SAVE saves every such output."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = _saved_ops()

    def policy(ctx, op, *args, **kwargs):
        if op in saved:
            return CheckpointPolicy.MUST_SAVE
        if width is None or _is_wide(op, args, width):
            return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.PREFER_SAVE

    return create_selective_checkpoint_contexts(policy)


def _recompute_all_context():
    """"full" checkpointing for a block that torch.compile traces: every op recomputed, stated op by op.

    Why not plain `checkpoint` there: up to torch 2.11, Dynamo tags only the ops it sees at the top of the checkpointed
    graph as recomputable; the ops inside a custom autograd.Function (our depthwise conv and bias-GLU,
    `sana_wm.ops.glu_conv`) reach the partitioner untagged, and it saved their outputs, 0.75 GB per block at 161
    frames: 15.7 GiB saved by the forward instead of 1.9 GiB, and a 961-frame clip no longer fitting in 80 GB
    (bench/RESULTS.md, ninth session; pytorch/pytorch#177396 changes this upstream, and the torch 2.13 CPU wheel
    saves only the inputs). A `context_fn` takes Dynamo's selective path, whose dispatch mode tags every op that runs,
    those inside autograd.Functions included. Eagerly it would only add per-op Python overhead, so eager blocks keep
    plain checkpointing."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(lambda ctx, op, *args, **kwargs: CheckpointPolicy.PREFER_RECOMPUTE)


class BlockCheckpointWrapper(CheckpointWrapper):
    """torch's CheckpointWrapper whose attribute forwarding is safe while it is being constructed.

    DeepSpeed ZeRO-3 (`deepspeed.zero.Init`, active while Lightning runs `configure_model`) patches every module's
    `__init__` to call `hasattr(module, "_ds_child_entered")` before the real `__init__` runs. The stock wrapper
    forwards unknown attributes to `self._checkpoint_wrapped_module`, which does not exist yet, so the lookup
    recursed until RecursionError. Here that one name raises AttributeError like on any module.
    """

    def __getattr__(self, name: str):
        if name == "_checkpoint_wrapped_module":
            return nn.Module.__getattr__(self, name)
        return super().__getattr__(name)


def apply_activation_checkpointing(model: nn.Module, policy: str = "full", num_blocks: int | None = None,
                                   compiled: bool = False) -> nn.Module:
    """Recompute blocks in the backward pass (non-reentrant). State-dict keys are unchanged.

    policy: "full" (keep only the block inputs), "selective" (also keep GEMM / attention / scan / prologue outputs),
    "ffn" (see `_selective_context`) or "attn" (keep only the block inputs and the self-attention outputs:
    `_attention_context`).
    num_blocks: checkpoint only the first `num_blocks` blocks (None: all). The others keep every activation: the
    speed-for-memory knob of a card with room to spare (Megatron's "recompute_num_layers"; measured trade-off in
    bench/RESULTS.md). Which blocks does not matter for time or peak memory, which all saved activations reach.
    compiled: the blocks will be torch.compiled (`apply_compile`); "full" then states its policy op by op, which
    torch ≤ 2.11 needs to recompute the ops inside autograd.Functions (`_recompute_all_context`).
    """
    if policy not in AC_POLICIES:
        raise ValueError(f"activation checkpointing policy must be one of {AC_POLICIES}, got {policy!r}")
    blocks = _blocks(model)
    if num_blocks is not None and not 0 <= num_blocks <= len(blocks):
        raise ValueError(f"activation checkpointing num_blocks={num_blocks} must be in [0, {len(blocks)}] (the depth)")
    kwargs = {}
    if policy == "full" and compiled:
        kwargs["context_fn"] = _recompute_all_context
    elif policy == "selective":
        kwargs["context_fn"] = _selective_context
    elif policy == "attn":
        kwargs["context_fn"] = _attention_context
    elif policy == "ffn":
        width = getattr(getattr(model, "config", None), "hidden_size", None)
        if width is None:
            raise ValueError(f"activation checkpointing policy 'ffn' needs model.config.hidden_size; "
                             f"{type(model).__name__} has none")
        kwargs["context_fn"] = functools.partial(_selective_context, width)
    for i, block in enumerate(blocks):
        if num_blocks is not None and i >= num_blocks:
            break
        if not getattr(block, "_sana_checkpointed", False):
            wrapped = BlockCheckpointWrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, **kwargs)
            wrapped._sana_checkpointed = True
            blocks[i] = wrapped
    return model


def _compile_method(obj, name: str, **compile_kwargs) -> None:
    """Shadow the method `obj.<name>` with its torch.compile'd version, as an instance attribute (idempotent: the
    attribute's presence marks it compiled).

    Why not `torch.compile(module)`: its OptimizedModule binds the module's __call__ when it is built, so a wrapper
    that a strategy later puts under it by module class is never called. Lightning's FSDPStrategy wraps and checkpoints
    every SanaWMBlock after `configure_model`; with the blocks replaced, its checkpointing never ran (the tiny model's
    forward kept 93 units of activations, as with no checkpointing, against 3.3; tests/models). Why not
    `module.compile()`: it compiles `_call_impl`, hooks included, and the hooks that DeepSpeed ZeRO-3 or FSDP2 put on
    every module are then traced (a Python hook with state recompiled on every call until fullgraph's hard failure,
    measured on CPU). Compiling `forward` keeps the module's class, its state-dict keys and eager hooks, and traces
    the same frame as `torch.compile(module)`, so the graphs are the same."""
    if name not in vars(obj):
        setattr(obj, name, torch.compile(getattr(obj, name), **compile_kwargs))


def apply_compile(model: nn.Module, **compile_kwargs) -> nn.Module:
    """Compile each block separately (identical blocks share one graph), and the model's `embed` prologue and
    `final_layer` where it has them; the Python glue between them stays eager. Idempotent. Each is compiled in place
    (`_compile_method`): parameters, state-dict keys and module classes stay as they are.

    The prologue is compiled because a step starts with it while the GPU is idle: eagerly its dozens of small kernels
    each wait for their launch (≈ 4 ms of GPU idle per 161-frame training step; compiled, the step took 3.3 ms less,
    bench/RESULTS.md run 32)."""
    for block in _blocks(model):
        _compile_method(block, "forward", **compile_kwargs)
    if callable(getattr(model, "embed", None)):
        _compile_method(model, "embed", **compile_kwargs)
    final = getattr(model, "final_layer", None)
    if isinstance(final, nn.Module):
        _compile_method(final, "forward", **compile_kwargs)
    return model


def apply_fsdp(model: nn.Module, mesh, param_dtype=torch.bfloat16, reduce_dtype=torch.float32) -> nn.Module:
    """FSDP2: shard every block, then the root (bf16 compute, fp32 gradient reduction, fp32 master weights)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model


def parallelize(
    model: nn.Module,
    *,
    activation_checkpointing: bool = False,
    ac_policy: str = "full",
    ac_blocks: int | None = None,
    compile: bool = False,
    fsdp_mesh=None,
    cp_mesh=None,
    param_dtype: torch.dtype = torch.bfloat16,
    fp8: str | None = None,
    fp8_emulate: bool = False,
) -> nn.Module:
    """Apply float8 → checkpointing → compile → context parallelism → FSDP2 to `model` in place and return it.

    fp8: a `sana_wm.fp8.FP8_RECIPES` name ("tensorwise" or "rowwise") to train the per-token GEMMs in float8
    (`sana_wm.fp8.convert_for_training`; needs torchao and a GPU of compute capability 8.9+), None for none.
    Converted first: checkpointing, compile and FSDP2 then wrap the float8 layers. Without compile the float8 casts
    run as separate kernels and the step is slower than bf16. fp8_emulate: torchao's emulation (float8 rounding,
    high-precision GEMMs; any device) for tests.

    cp_mesh: a 1-D DeviceMesh (or process group) of the ranks that share one clip, each computing a slice of its
    latent frames (`sana_wm.context_parallel`); None or one rank: no CP. fsdp_mesh: the mesh FSDP2 shards over; with
    CP it must include the CP ranks (a flattened dp × cp mesh), so that the gradient reduction also reaches the
    slices' shares. FSDP2 averages gradients over its mesh, so under CP each rank's loss must be its slice's share of
    its clip's loss times the CP size (the trainer's `SanaWMLitModule` does this): the average over dp · cp ranks is
    then the average over dp of whole-clip gradients. (FSDP2's `set_gradient_divide_factor` would say this directly,
    but its pre-multiplied sum does not exist in gloo.)"""
    from sana_wm.context_parallel import apply_context_parallel, check_compile_checkpointing

    cp_size = 1
    if cp_mesh is not None:
        import torch.distributed as dist

        cp_size = dist.get_world_size(cp_mesh.get_group() if hasattr(cp_mesh, "get_group") else cp_mesh)
    check_compile_checkpointing(cp_size, compile, activation_checkpointing,  # before anything is applied
                                f"context parallelism (cp size {cp_size}) with compile=True and activation checkpointing")
    if activation_checkpointing and ac_policy == "ffn" and not compile:
        raise ValueError("ac_policy='ffn' needs compile=True (the compiler's partitioner makes most of its save/"
                         "recompute choices; run eagerly it would keep every activation outside the FFN)")
    if fp8 is not None:
        from sana_wm.fp8 import convert_for_training

        convert_for_training(model, fp8, emulate=fp8_emulate)
        if not compile:
            log.warning("parallelize: fp8 without compile: the float8 casts run as separate kernels (slower than bf16)")
    if activation_checkpointing:
        apply_activation_checkpointing(model, ac_policy, ac_blocks, compiled=compile)
    if compile:
        apply_compile(model)
    if cp_size > 1:
        apply_context_parallel(model, cp_mesh)
    if fsdp_mesh is not None:
        apply_fsdp(model, fsdp_mesh, param_dtype=param_dtype)
    log.info("parallelize: fp8=%s checkpointing=%s (%s, blocks=%s) compile=%s cp=%d fsdp=%s", fp8,
             activation_checkpointing, ac_policy, "all" if ac_blocks is None else ac_blocks, compile, cp_size, fsdp_mesh)
    return model
