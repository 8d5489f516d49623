"""SANA-WM attention layers: the dual-branch hybrid self-attention and the text cross-attention.

Self-attention (REFERENCE §1.5, §2.2) has a *main* branch — frame-wise bidirectional Gated DeltaNet in most blocks,
full softmax attention in every 4th — and a *camera* branch (UCPE: per-ray SE(3) transforms on half of each head,
re-sliced RoPE on the other half) of the same kind. Both share the gates β and g, the output gate and `proj`:

    y = proj( (main(x) + out_proj_cam(camera(x))) ⊙ SiLU(output_gate(x)) )

Parameter names follow NVIDIA's checkpoint (`dit/sana_wm_1600m_720p.safetensors`); softmax blocks carry the same
parameters minus the two short convolutions, so both block kinds load the same keys.

Numerics follow the released function (PORT-CHECK §1 item 4): gates, scans, the num/den division and the output-gate
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
from sana_wm.ops.short_conv import bidirectional_short_conv

from .rope import RopeTable, apply_rope


class RMSNorm(nn.Module):
    """RMSNorm over the last axis, statistics in float32 (as diffusers/Sana), output in the input dtype.

    Plain PyTorch on purpose rather than fla's fused RMSNorm kernel: under per-block torch.compile Inductor fuses
    this norm with the ReLU, key scaling and RoPE around it into one kernel, which an opaque library kernel would
    split apart again.
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
    shared centre tap — a symmetric (2K−1)-tap filter with tied weights (REFERENCE §1.5.2 step 2).

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


# Explicit backend order for the self-attention SDPA on CUDA (PERFORMANCE.md §2): cuDNN is 1.5–1.7× faster than
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


def _ucpe(x: torch.Tensor, mat: torch.Tensor, rope: RopeTable, inverse_rope: bool = False) -> torch.Tensor:
    """UCPE on x [B, N, Hd, D]: groups of 4 in the first half multiplied by the per-token 4×4 `mat` [B, N, 4, 4],
    the second half rotated by the re-sliced RoPE (conjugate when `inverse_rope`)."""
    half = x.shape[-1] // 2
    geo, rot = x[..., :half], x[..., half:]
    # geo'_i = Σ_j mat_ij geo_j per group of 4, written as four broadcast multiply-adds in float32 rather than an
    # einsum: as a GEMM this is a batch of 4×4 products that runs on 16×16 tensor-core tiles at a few % of peak (42 ms
    # of a 687 ms compiled forward at 161 frames), while as element-wise work it fuses into the neighbouring kernels.
    # Exact bf16 products summed in float32 and rounded once, as the GEMM does.
    g = geo.unflatten(-1, (-1, 4)).float()  # [B, N, Hd, D/8, 4]
    m = mat.to(x.dtype).float()[:, :, None, None]  # [B, N, 1, 1, 4, 4]
    out = m[..., 0] * g[..., 0:1]
    for j in range(1, 4):
        out = out + m[..., j] * g[..., j:j + 1]
    return torch.cat([out.to(x.dtype).flatten(-2), apply_rope(rot, rope, inverse=inverse_rope)], dim=-1)


def _clamp_to_reference_rms(reference: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Post-UCPE RMS clamp (REFERENCE §2.2 step 4): shrink each token/head vector of x back to the RMS of its
    pre-UCPE `reference` if the transform inflated it. The ε placement is part of the released function."""
    ref_rms = (reference.square().mean(-1, keepdim=True) + eps).sqrt()
    x_rms = (x.square().mean(-1, keepdim=True) + eps).sqrt()
    return x * (ref_rms / x_rms.clamp_min(eps)).clamp(max=1.0)


class HybridSelfAttention(nn.Module):
    """Dual-branch self-attention of one block; `use_gdn` picks GDN (True) or softmax (False) for both branches.

    Args:
        dim: channels C (2240). num_heads: Hd (20); head dim D = C / Hd must be divisible by 8 (UCPE groups of 4 in
        the first half). conv_kernel_size: short-conv taps (4). gdn_eps: normaliser ε (1e-8).
        reference_numerics: cast softmax q/k/v to bf16 as the released port does.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        use_gdn: bool,
        conv_kernel_size: int = 4,
        gdn_eps: float = 1e-8,
        reference_numerics: bool = True,
    ):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 8:
            raise ValueError(f"hidden size {dim} / {num_heads} heads must give a head dim divisible by 8")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.use_gdn, self.gdn_eps, self.reference_numerics = use_gdn, gdn_eps, reference_numerics
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
        q = F.relu(self._heads(self.q_norm(q)))
        k = F.relu(self._heads(self.k_norm(k)))
        S = x.shape[1] // ctx.grid[0]
        k = k * (self.head_dim**-0.5 * S**-0.5)  # bounds the transition's spectral norm (key_scale dim_spatial)
        q_rot, k_rot = apply_rope(q, ctx.rope), apply_rope(k, ctx.rope)  # RoPE on the numerator stream only
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
        q, k, v = self._heads(self.q_norm_cam(q)), self._heads(self.k_norm_cam(k)), self._heads(v)
        if self.use_gdn:
            S = x.shape[1] // ctx.grid[0]
            q, k = F.relu(q), F.relu(k) * (self.head_dim**-0.5 * S**-0.5)
        # Relative ray-to-ray geometry: q′ᵀk′ = qᵀ P_i P_j⁻¹ k.
        qu = _clamp_to_reference_rms(q, _ucpe(q, ctx.rays_T, ctx.cam_rope))
        ku = _clamp_to_reference_rms(k, _ucpe(k, ctx.rays_inv, ctx.cam_rope))
        vu = _clamp_to_reference_rms(v, _ucpe(v, ctx.rays_inv, ctx.cam_rope))
        if self.use_gdn:
            # Dynamic β discount by the frame-mean key inflation (REFERENCE §2.2 step 5).
            infl = (ku.norm(dim=-1).clamp_min(1e-6) / k.norm(dim=-1).clamp_min(1e-6)) ** 2  # [B, N, Hd]
            infl = self._frames(infl, ctx.grid).mean(dim=2, keepdim=True)  # [B, T, 1, Hd]
            beta_cam = beta / infl.clamp_min(1.0)
            f = lambda t: self._frames(t, ctx.grid)
            o = bidirectional_delta(f(qu), f(ku), f(vu), beta_cam, g, out_dtype=x.dtype).flatten(1, 2)
        else:
            # The released camera SDPA pads 112 → 128 for FlashAttention, so its scale is 1/√128; padding with
            # zeros changes nothing else, so we keep D and pass that scale.
            pad_dim = 2 ** math.ceil(math.log2(self.head_dim))
            o = _sdpa(qu, ku, vu, pad_dim**-0.5, to_bf16=self.reference_numerics)
        o = _ucpe(o, ctx.rays, ctx.cam_rope, inverse_rope=True)  # back from ray space to world space
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
