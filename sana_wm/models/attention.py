"""SANA-WM attention layers: the dual-branch hybrid self-attention and the text cross-attention.

Self-attention (docs/design/architecture.md) has a *main* branch — frame-wise bidirectional Gated DeltaNet in most blocks,
full softmax attention in every 4th — and a *camera* branch (UCPE: per-ray SE(3) transforms on half of each head,
re-sliced RoPE on the other half) of the same kind. Both share the gates β and g, the output gate and `proj`:

    y = proj( (main(x) + out_proj_cam(camera(x))) ⊙ SiLU(output_gate(x)) )

Parameter names follow NVIDIA's checkpoint (`dit/sana_wm_1600m_720p.safetensors`); softmax blocks carry the same
parameters minus the two short convolutions, so both block kinds load the same keys.

Numerics follow the released function (architecture.md §10): gates, scans, the num/den division and the output-gate
SiLU in float32; everything else in the working dtype. With `reference_numerics` (the default) the softmax paths cast
q, k, v to bf16 exactly like the reference port, so float32 parity with it is exact; turn it off for pure-fp32 maths.

Shape alphabet: B batch, T latent frames, S = H·W tokens per frame, N = T·S, C channels, Hd heads, D head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sana_wm.ops.gdn import bidirectional_delta, bidirectional_gdn
from sana_wm.ops.qk_prologue import rms_relu_rope
from sana_wm.ops.short_conv import bidirectional_short_conv
from sana_wm.ops.ucpe import ucpe, ucpe_clamp

from .rope import RopeTable, apply_rope


class RMSNorm(nn.Module):
    """RMSNorm over the last axis, statistics in float32 (as diffusers/Sana), output in the input dtype.

    Plain PyTorch on purpose rather than fla's fused RMSNorm kernel: under per-block torch.compile Inductor fuses
    this norm with its neighbours (the camera branch's ReLU and UCPE, the softmax blocks' RoPE), which an opaque
    library kernel would split apart again. The GDN main branch's norm → ReLU → RoPE chain is one op of its own
    (`sana_wm.ops.qk_prologue`) with this module's weight and ε.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight.to(x.dtype)


class BidirectionalShortConv(nn.Module):
    """Depthwise temporal conv made non-causal: the causal K-tap kernel run forwards and on reversed time, minus the
    shared centre tap — a symmetric (2K−1)-tap filter with tied weights (docs/design/architecture.md §5.2).

    Weight layout (C, 1, K) as fla's ShortConvolution (the checkpoint's `conv_k`); weight[..., K−1] is the centre tap.
    The op (`sana_wm.ops.short_conv`) runs along frames with S tokens per step on the [B, T, S, C] tokens as they
    are. fla's ShortConvolution kernel is not used: it convolves causally along one token sequence [B, L, C], so this
    filter would need two passes over re-laid-out copies.
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, S, C] → [B, T, S, C] contiguous; zero padding at both ends of time."""
        return bidirectional_short_conv(x, self.weight[:, 0])

    def reset_identity(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, 0, -1] = 1.0


@dataclass
class AttentionContext:
    """Per-forward tensors shared by every block (computed once in `SanaWM.forward`).

    grid: latent (T, H, W). rope: full-head table [N, D/2]. camera: None or the UCPE pieces: rays_T / rays_inv / rays
    [B, N, 4, 4] (Pᵀ for queries, P⁻¹ for keys/values, P for outputs) and cam_rope [N, D/4] for the RoPE half.
    """

    grid: tuple[int, int, int]
    rope: RopeTable
    rays: torch.Tensor | None = None
    rays_T: torch.Tensor | None = None
    rays_inv: torch.Tensor | None = None
    cam_rope: RopeTable | None = None

    @property
    def has_camera(self) -> bool:
        return self.rays is not None


# Explicit backend order for the self-attention SDPA on CUDA (docs/design/flops.md §5): cuDNN is 1.5–1.7× faster than
# FlashAttention-2 at these sizes and takes head dim 112 natively; torch falls through the list if one can't run.
CUDA_SDPA_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def _sdpa(q, k, v, scale: float, to_bf16: bool) -> torch.Tensor:
    """Full bidirectional attention over all tokens. q, k, v: [B, N, Hd, D] → [B, N, Hd, D] in q's dtype."""
    dtype = q.dtype
    if to_bf16:
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        with sdpa_kernel(CUDA_SDPA_BACKENDS):
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return o.transpose(1, 2).to(dtype)


class HybridSelfAttention(nn.Module):
    """Dual-branch self-attention of one block; `use_gdn` picks GDN (True) or softmax (False) for both branches.

    Args:
        dim: channels C (2240). num_heads: Hd (20); head dim D = C / Hd must be divisible by 8 (UCPE groups of 4 in
        the first half). conv_kernel_size: short-conv taps (4). gdn_eps: normaliser ε (1e-8).
        reference_numerics: cast softmax q/k/v to bf16 as the released port does.
        camera_rms_downscale: apply the post-UCPE RMS clamp in this block's camera branch (the model's
        `camera_rms_downscale` mode decides per block kind).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        use_gdn: bool,
        conv_kernel_size: int = 4,
        gdn_eps: float = 1e-8,
        reference_numerics: bool = True,
        camera_rms_downscale: bool = False,
    ):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 8:
            raise ValueError(f"hidden size {dim} / {num_heads} heads must give a head dim divisible by 8")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.use_gdn, self.gdn_eps, self.reference_numerics = use_gdn, gdn_eps, reference_numerics
        self.camera_rms_downscale = camera_rms_downscale
        # Main branch.
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(dim), RMSNorm(dim)
        self.proj = nn.Linear(dim, dim)
        # GDN gates (present in softmax blocks too, unused there, so all blocks share one key set).
        self.beta_proj = nn.Linear(dim, num_heads)
        self.gate_proj = nn.Linear(dim, num_heads)
        self.A_log = nn.Parameter(torch.zeros(num_heads))
        self.dt_bias = nn.Parameter(torch.zeros(num_heads))
        self.register_buffer("recall_gate", torch.zeros(1))  # unused; kept for checkpoint compatibility
        self.output_gate = nn.Linear(dim, dim)
        self.conv_k = BidirectionalShortConv(dim, conv_kernel_size) if use_gdn else None
        # Camera branch (UCPE).
        self.q_proj_cam = nn.Linear(dim, dim)
        self.k_proj_cam = nn.Linear(dim, dim)
        self.v_proj_cam = nn.Linear(dim, dim)
        self.out_proj_cam = nn.Linear(dim, dim)
        self.q_norm_cam, self.k_norm_cam = RMSNorm(dim), RMSNorm(dim)
        self.conv_k_cam = BidirectionalShortConv(dim, conv_kernel_size) if use_gdn else None

    # -- helpers -------------------------------------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))  # [B, N, C] → [B, N, Hd, D]

    def _frames(self, x: torch.Tensor, grid) -> torch.Tensor:
        T = grid[0]
        return x.unflatten(1, (T, x.shape[1] // T))  # [B, N, ...] → [B, T, S, ...]

    def gates(self, x: torch.Tensor, grid) -> tuple[torch.Tensor, torch.Tensor]:
        """β [B, T, S, Hd] per token (working dtype) and decay g [B, T, Hd] per frame (float32)."""
        beta = self._frames(torch.sigmoid(self.beta_proj(x)), grid)
        frame_mean = self._frames(x, grid).mean(dim=2)  # [B, T, C]
        a = self.gate_proj(frame_mean).float()
        g = torch.exp(-self.A_log.float().exp() * F.softplus(a + self.dt_bias.float()))
        return beta, g

    # -- main branch ---------------------------------------------------------------------------------------------
    def _main_gdn(self, x, ctx: AttentionContext, beta, g) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = self.conv_k(self._frames(k, ctx.grid)).flatten(1, 2)
        # ReLU(RMSNorm(·)), the key scaled to bound the transition's spectral norm (key_scale dim_spatial), and RoPE
        # for the numerator stream only: one fused op per stream (sana_wm.ops.qk_prologue).
        S = x.shape[1] // ctx.grid[0]
        cos, sin = ctx.rope
        q, q_rot = rms_relu_rope(q, self.q_norm.weight, cos, sin, 1.0, self.q_norm.eps)
        k, k_rot = rms_relu_rope(k, self.k_norm.weight, cos, sin, self.head_dim**-0.5 * S**-0.5, self.k_norm.eps)
        q, k, q_rot, k_rot = (self._heads(t) for t in (q, k, q_rot, k_rot))
        f = lambda t: self._frames(t, ctx.grid)
        out = bidirectional_gdn(f(q), f(k), f(q_rot), f(k_rot), f(self._heads(v)), beta, g, eps=self.gdn_eps,
                                out_dtype=x.dtype)  # float32 maths, rounded to the working dtype as released
        return out.flatten(1, 2).flatten(-2)  # [B, N, C]

    def _main_softmax(self, x, ctx: AttentionContext) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = apply_rope(self._heads(self.q_norm(q)), ctx.rope)
        k = apply_rope(self._heads(self.k_norm(k)), ctx.rope)
        to_bf16 = self.reference_numerics and q.dtype == torch.float32
        return _sdpa(q, k, self._heads(v), self.head_dim**-0.5, to_bf16).flatten(-2)

    # -- camera branch -------------------------------------------------------------------------------------------
    def _camera(self, x, ctx: AttentionContext, beta, g) -> torch.Tensor:
        q, k, v = self.q_proj_cam(x), self.k_proj_cam(x), self.v_proj_cam(x)
        if self.use_gdn:
            k = self.conv_k_cam(self._frames(k, ctx.grid)).flatten(1, 2)
        S = x.shape[1] // ctx.grid[0]
        key_scale = self.head_dim**-0.5 * S**-0.5 if self.use_gdn else 1.0
        # Per token and head (sana_wm.ops.ucpe, one fused op each): RMSNorm (+ ReLU and the key scale in GDN blocks),
        # then UCPE for the relative ray-to-ray geometry q′ᵀk′ = qᵀ P_i P_j⁻¹ k, then, if this block downscales,
        # the RMS clamp back to the pre-UCPE RMS (architecture.md §6.1, nvidia-fidelity.md §1). The key's op also
        # returns its squared norm inflation ‖k′‖²/‖k‖² (after the clamp when there is one).
        cos, sin = ctx.cam_rope
        Hd, down = self.num_heads, self.camera_rms_downscale
        qu, _ = ucpe_clamp(q, ctx.rays_T, cos, sin, Hd, self.q_norm_cam.weight, self.use_gdn, 1.0, self.q_norm_cam.eps,
                           down)
        ku, infl = ucpe_clamp(k, ctx.rays_inv, cos, sin, Hd, self.k_norm_cam.weight, self.use_gdn, key_scale,
                              self.k_norm_cam.eps, down)
        vu, _ = ucpe_clamp(v, ctx.rays_inv, cos, sin, Hd, downscale=down)
        qu, ku, vu = self._heads(qu), self._heads(ku), self._heads(vu)
        if self.use_gdn:
            # Dynamic β discount by the frame-mean key inflation (docs/design/architecture.md §6.1).
            infl = self._frames(infl, ctx.grid).mean(dim=2, keepdim=True)  # [B, T, 1, Hd]
            beta_cam = (beta / infl.clamp_min(1.0)).to(beta.dtype)
            f = lambda t: self._frames(t, ctx.grid)
            o = bidirectional_delta(f(qu), f(ku), f(vu), beta_cam, g, out_dtype=x.dtype).flatten(1, 2)
        else:
            # The released camera SDPA pads 112 → 128 for FlashAttention, so its scale is 1/√128; padding with
            # zeros changes nothing else, so we keep D and pass that scale.
            pad_dim = 2 ** math.ceil(math.log2(self.head_dim))
            o = _sdpa(qu, ku, vu, pad_dim**-0.5, to_bf16=self.reference_numerics)
        o = ucpe(o, ctx.rays, *ctx.cam_rope, inverse_rope=True)  # back from ray space to world space
        return self.out_proj_cam(o.flatten(-2))

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """x: modulated tokens [B, N, C] → [B, N, C]."""
        beta, g = self.gates(x, ctx.grid) if self.use_gdn else (None, None)
        out = self._main_gdn(x, ctx, beta, g) if self.use_gdn else self._main_softmax(x, ctx)
        if ctx.has_camera:
            out = out + self._camera(x, ctx, beta, g)
        gated = out.float() * F.silu(self.output_gate(x).float())
        return self.proj(gated.to(x.dtype))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from video tokens to the text memory; RMSNorm'd q and k over all channels.

    kv_linear emits K then V. The mask is boolean (padded keys excluded exactly); a caption with no valid token falls
    back to attending to every position (what an additive −10000 bias gives) instead of the port's NaN.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm, self.k_norm = RMSNorm(dim, eps=1e-6), RMSNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, C], memory [B, L, C], mask [B, L] bool (True = real token) → [B, N, C]."""
        k, v = self.kv_linear(memory).chunk(2, dim=-1)
        q, k = self.q_norm(self.q_linear(x)), self.k_norm(k)
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, Hd, *, D]
        attn_mask = None
        if mask is not None:
            mask = mask | ~mask.any(dim=1, keepdim=True)
            attn_mask = mask[:, None, None, :]
        o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=attn_mask)
        return self.proj(o.transpose(1, 2).flatten(-2))
