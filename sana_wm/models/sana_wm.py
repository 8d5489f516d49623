"""SANA-WM: the 2.6 B camera-controlled hybrid linear diffusion transformer, in DiT order.

    helpers → embedders → FFN → block → final layer → SanaWM → presets

Design notes: docs/design/architecture.md (§11 initialisation, §12 checkpoint names). Every latent voxel is
one token (patch 1×1×1), tokens are frame-major then row then column, and each block is

    a = LN(x)·(1 + scale_msa_f) + shift_msa_f                      per-frame AdaLN-single modulation
    x = x + gate_msa_f ⊙ SelfAttn(a)                                GDN or softmax main branch + UCPE camera branch
    x = x + plucker_proj(P_emb)                                     Plücker branch B (no gate, no modulation)
    x = x + CrossAttn(x, text)                                      no modulation, no gate
    x = x + gate_mlp_f ⊙ FFN(LN(x)·(1 + scale_mlp_f) + shift_mlp_f)

Model code knows nothing about parallelism: checkpointing, compile and sharding are applied from outside by
`sana_wm.parallel.parallelize`. Shape alphabet: B batch, C_in latent channels, T latent frames, H/W latent rows/cols,
S = H·W, N = T·S tokens, C width, L text tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from sana_wm.camera import ray_frames
from sana_wm.ops.glu_conv import silu_depthwise_glu

from .attention import AttentionContext, CrossAttention, HybridSelfAttention, RMSNorm
from .rope import cached_camera_table, cached_rope_table

# ---------------------------------------------------------------------------------------------------------------------
# Configuration and presets
# ---------------------------------------------------------------------------------------------------------------------

CameraRmsDownscale = Literal["none", "softmax", "all"]
CAMERA_RMS_DOWNSCALE_MODES: tuple[str, ...] = get_args(CameraRmsDownscale)


@dataclass(frozen=True)
class SanaWMConfig:
    """Hyper-parameters of the DiT. Defaults are the released `SanaMSVideoCamCtrl_1600M_P1_D20`.

    in_channels / out_channels: latent channels (128, LTX-2 VAE). hidden_size: C (2240). depth: blocks (20).
    num_heads: self/cross-attention heads (20 → head dim 112). mlp_ratio: FFN hidden = ratio·C (3 → 6720).
    caption_channels: text-encoder width (2304, Gemma-2-2B). caption_length: rows of the null-caption table (300).
    softmax_every_n: block i is softmax iff (i+1) % n == 0 (blocks 3, 7, 11, 15, 19). conv_kernel_size: GDN short
    conv taps. t_kernel_size: FFN temporal conv taps. plucker_channels: chunk-Plücker channels (48 = 8 frames × 6).
    gdn_eps: normaliser ε. reference_numerics: bf16 softmax casts exactly as the released port (see attention.py).
    camera_rms_downscale: which blocks shrink the camera branch's UCPE-transformed q/k/v back to their pre-UCPE RMS —
    ``"softmax"`` (the softmax blocks only: NVIDIA's inference code as released with the bidirectional checkpoint),
    ``"none"`` (NVIDIA's later code) or ``"all"`` (every block: the diffusers port). docs/design/nvidia-fidelity.md
    gives the commits.
    """

    in_channels: int = 128
    out_channels: int = 128
    hidden_size: int = 2240
    depth: int = 20
    num_heads: int = 20
    mlp_ratio: float = 3.0
    caption_channels: int = 2304
    caption_length: int = 300
    softmax_every_n: int = 4
    conv_kernel_size: int = 4
    t_kernel_size: int = 3
    plucker_channels: int = 48
    frequency_embedding_size: int = 256
    gdn_eps: float = 1e-8
    reference_numerics: bool = True
    camera_rms_downscale: CameraRmsDownscale = "softmax"

    def __post_init__(self):
        if self.camera_rms_downscale not in CAMERA_RMS_DOWNSCALE_MODES:
            raise ValueError(f"camera_rms_downscale={self.camera_rms_downscale!r} is not valid; expected one of "
                             f"{list(CAMERA_RMS_DOWNSCALE_MODES)}")

    def downscales_camera(self, index: int) -> bool:
        """Whether block `index` applies the post-UCPE RMS clamp in its camera branch."""
        mode = self.camera_rms_downscale
        return mode == "all" or (mode == "softmax" and self.is_softmax_block(index))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def is_softmax_block(self, index: int) -> bool:
        return self.softmax_every_n > 0 and (index + 1) % self.softmax_every_n == 0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SanaWMConfig] = {
    # The released 720p bidirectional model: 2,661,800,448 parameters.
    "sana_wm_1600m_720p": SanaWMConfig(),
    # CPU-fast preset for tests and the demo; keeps the real head dim 112 and one softmax block in four.
    "tiny": SanaWMConfig(
        in_channels=16, out_channels=16, hidden_size=224, depth=4, num_heads=2, caption_channels=32, caption_length=32
    ),
}


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


class PointwiseConv(nn.Module):
    """A 1×1(×1) convolution stored with the checkpoint's conv-shaped weight, applied as a Linear on tokens.

    Token-major layout [..., C_in] avoids the channels-first permutes a real Conv would need; the math is identical.
    """

    def __init__(self, in_ch: int, out_ch: int, ndim: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, *([1] * ndim)))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:  # nn.ConvNd's default init
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.flatten(1), self.bias)


class ConvHolder(nn.Module):
    """Namespace module so parameter names match the checkpoint (`x_embedder.proj.*`, `mlp.inverted_conv.conv.*`)."""

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        self.add_module(name, module)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos | sin] of raw timesteps t [...] → [..., dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Sinusoid(256) → Linear → SiLU → Linear (`t_embedder.mlp.0/2`)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class CaptionEmbedder(nn.Module):
    """Text MLP (fc1 → GELU(tanh) → fc2) plus the null-caption table for caption dropout (a buffer: saved, not trained)."""

    def __init__(self, in_channels: int, hidden: int, length: int):
        super().__init__()
        self.y_proj = nn.Module()
        self.y_proj.fc1 = nn.Linear(in_channels, hidden)
        self.y_proj.act = nn.GELU(approximate="tanh")
        self.y_proj.fc2 = nn.Linear(hidden, hidden)
        self.register_buffer("y_embedding", torch.randn(length, in_channels) / in_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj.fc2(self.y_proj.act(self.y_proj.fc1(y)))


# ---------------------------------------------------------------------------------------------------------------------
# FFN: GLUMBConvTemp
# ---------------------------------------------------------------------------------------------------------------------


def temporal_taps(y: torch.Tensor, kernel_size: int, tap) -> torch.Tensor:
    """A dense temporal conv with zero padding on the token layout y [B, T, S, C]: one GEMM per tap, ``tap(z, j)``
    being tap j's GEMM of z [B, T', S, C]; tap j reads frame t + j − K//2."""
    K = kernel_size
    out = tap(y, K // 2)
    T = y.shape[1]
    for j in range(K):
        d = j - K // 2
        if d == 0 or abs(d) >= T:
            continue
        z = tap(y[:, max(d, 0) : T + min(d, 0)], j)
        out = out + F.pad(z, (0, 0, 0, 0, max(-d, 0), max(d, 0)))
    return out


class TemporalConv(nn.Conv2d):
    """The FFN's dense C→C conv over (t−1, t, t+1), stored as the checkpoint's (C, C, K, 1) Conv2d weight and applied
    on the token layout [B, T, S, C] as K GEMMs (`temporal_taps`), without the channels-first permutes of a conv."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(dim, dim, (kernel_size, 1), padding=(kernel_size // 2, 0), bias=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return temporal_taps(y, self.kernel_size[0], self.tap)

    def tap(self, y: torch.Tensor, j: int) -> torch.Tensor:
        """Tap j's GEMM (the one place a subclass changes how the taps multiply, e.g. in float8)."""
        return F.linear(y, self.weight[:, :, j, 0].to(y.dtype))


class GLUMBConvTemp(nn.Module):
    """Mix-FFN with a dense temporal conv (docs/design/architecture.md §9).

    1×1 → SiLU → depthwise 3×3 → GLU(value ⊙ SiLU(gate)) → 1×1 (no bias), then y ← y + TConv(y) where TConv is a
    dense C→C conv over (t−1, t, t+1) with zero padding. The temporal conv is three GEMMs on the token layout.
    """

    def __init__(self, dim: int, hidden: int, t_kernel_size: int = 3):
        super().__init__()
        self.inverted_conv = ConvHolder("conv", PointwiseConv(dim, 2 * hidden, ndim=2))
        self.depth_conv = ConvHolder("conv", nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden))
        self.point_conv = ConvHolder("conv", PointwiseConv(hidden, dim, ndim=2, bias=False))
        self.t_conv = TemporalConv(dim, t_kernel_size)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x [B, N, C] → [B, N, C]."""
        T, H, W = grid
        h = self.inverted_conv.conv(x).unflatten(1, (T, H * W))  # [B, T, S, 2h]
        dw = self.depth_conv.conv
        y = self.point_conv.conv(silu_depthwise_glu(h, dw.weight, dw.bias, (H, W)))  # [B, T, S, C]
        return (y + self._temporal(y)).flatten(1, 2)

    def _temporal(self, y: torch.Tensor) -> torch.Tensor:
        return self.t_conv(y)  # a seam of its own: context parallelism wraps it to give the conv its frame halo


# ---------------------------------------------------------------------------------------------------------------------
# Block
# ---------------------------------------------------------------------------------------------------------------------


class SanaWMBlock(nn.Module):
    """One frame-aware AdaLN-single block (`SanaVideoMSCamCtrlBlock`); GDN or softmax per `use_gdn`."""

    def __init__(self, cfg: SanaWMConfig, use_gdn: bool, camera_rms_downscale: bool = False):
        super().__init__()
        C = cfg.hidden_size
        self.use_gdn = use_gdn
        self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)
        self.attn = HybridSelfAttention(
            C, cfg.num_heads, use_gdn, cfg.conv_kernel_size, cfg.gdn_eps, cfg.reference_numerics, camera_rms_downscale
        )
        self.plucker_proj = nn.Linear(C, C)
        self.cross_attn = CrossAttention(C, cfg.num_heads)
        self.mlp = GLUMBConvTemp(C, int(C * cfg.mlp_ratio), cfg.t_kernel_size)

    def forward(self, x, t_mod, text, text_mask, ctx: AttentionContext, plucker=None) -> torch.Tensor:
        """x [B, N, C]; t_mod [B, T, 6C] (t_block output per frame); text [B, L, C]; plucker [B, N, C] or None."""
        B, N, C = x.shape
        T = ctx.grid[0]
        mod = (self.scale_shift_table.to(t_mod.dtype) + t_mod.unflatten(-1, (6, C)))[:, :, :, None]  # [B,T,6,1,C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(2)  # each [B, T, 1, C]
        frames = lambda t: t.unflatten(1, (T, N // T))  # [B, N, C] → [B, T, S, C]

        a = modulate(frames(F.layer_norm(x, (C,), eps=1e-6)), shift_msa, scale_msa).flatten(1, 2)
        x = x + (gate_msa * frames(self.attn(a, ctx))).flatten(1, 2)
        if plucker is not None:
            x = x + self.plucker_proj(plucker)
        x = x + self.cross_attn(x, text, text_mask)
        m = modulate(frames(F.layer_norm(x, (C,), eps=1e-6)), shift_mlp, scale_mlp).flatten(1, 2)
        return x + (gate_mlp * frames(self.mlp(m, ctx.grid))).flatten(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Final layer
# ---------------------------------------------------------------------------------------------------------------------


class FinalLayer(nn.Module):
    """LN → per-frame (shift, scale) = table + t_f (the t_embedder output, added to both rows) → Linear."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden) / hidden**0.5)
        self.linear = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, T: int) -> torch.Tensor:
        """x [B, N, C], t_emb [B, T, C] → [B, N, C_out]."""
        shift, scale = (self.scale_shift_table.to(t_emb.dtype)[None, None] + t_emb[:, :, None]).unbind(2)
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-6).unflatten(1, (T, -1))
        return self.linear(modulate(x, shift[:, :, None], scale[:, :, None]).flatten(1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------


class SanaWM(nn.Module):
    """SANA-WM DiT. Build with `SanaWM.from_preset(name, **overrides)` or `SanaWM(SanaWMConfig(...))`.

    forward(x, timestep, y, mask=None, camera_conditions=None, chunk_plucker=None) → velocity, see `forward`.
    """

    def __init__(self, config: SanaWMConfig | None = None):
        super().__init__()
        cfg = self.config = config or SanaWMConfig()
        C = cfg.hidden_size
        self.x_embedder = ConvHolder("proj", PointwiseConv(cfg.in_channels, C, ndim=3))
        self.t_embedder = TimestepEmbedder(C, cfg.frequency_embedding_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.caption_length)
        self.attention_y_norm = RMSNorm(C, eps=1e-5)
        # Camera branch B input; `raymap_embedder` is unused by the released configuration (kept for loading).
        self.plucker_embedder = ConvHolder("proj", PointwiseConv(cfg.plucker_channels, C, ndim=3))
        self.raymap_embedder = ConvHolder("proj", PointwiseConv(3, C, ndim=3))
        self.blocks = nn.ModuleList(
            [SanaWMBlock(cfg, not cfg.is_softmax_block(i), cfg.downscales_camera(i)) for i in range(cfg.depth)]
        )
        self.final_layer = FinalLayer(C, cfg.out_channels)
        self.initialize_weights()
        for name, p in self.named_parameters():
            if self.is_unused_parameter(name):
                p.requires_grad_(False)  # never reached by forward: no gradient, and DDP needs none

    def is_unused_parameter(self, name: str) -> bool:
        """Parameters kept only so NVIDIA's checkpoint loads: the raymap embedder (skipped when Plücker injection is
        on) and the GDN gates of softmax blocks. They are frozen at construction."""
        if name.startswith("raymap_embedder."):
            return True
        parts = name.split(".")
        if parts[0] == "blocks" and parts[2] == "attn" and parts[3] in ("beta_proj", "gate_proj", "A_log", "dt_bias"):
            return not self.blocks[int(parts[1])].use_gdn
        return False

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SanaWM:
        """Random-initialised model of a named preset (`"sana_wm_1600m_720p"`, `"tiny"`), fields overridable."""
        if name not in PRESETS:
            raise ValueError(f"unknown SANA-WM preset {name!r}; expected one of {sorted(PRESETS)}")
        valid = {f.name for f in fields(SanaWMConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown SanaWMConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        return cls(replace(PRESETS[name], **overrides))

    # -- initialisation (docs/design/architecture.md §11) --------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """NVIDIA's training init. One decision per line; consequence: the camera branch contributes exactly zero and
        the model equals the base GDN video model it would be initialised from."""
        for m in self.modules():  # every Linear: Xavier-uniform, zero bias
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight  # patch embed initialised like a Linear on the flattened weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        self.attention_y_norm.weight.fill_(0.01)  # y_norm_scale_factor: text enters cross-attention softly
        for emb in (self.plucker_embedder.proj, self.raymap_embedder.proj):  # camera inputs start silent
            emb.weight.zero_()
            emb.bias.zero_()
        for block in self.blocks:
            attn = block.attn
            # "Linear-attention-equivalent" GDN start: β ≈ 0.993, g = exp(−softplus(−5)) ≈ 0.9933, gate ≈ identity.
            attn.beta_proj.weight.zero_()
            attn.beta_proj.bias.fill_(5.0)
            attn.gate_proj.weight.zero_()
            attn.gate_proj.bias.zero_()
            attn.dt_bias.fill_(-5.0)
            attn.A_log.zero_()
            attn.output_gate.weight.zero_()
            attn.output_gate.bias.fill_(1.278464542761074)  # SiLU(b) = 1
            if attn.conv_k is not None:
                attn.conv_k.reset_identity()
                attn.conv_k_cam.weight.copy_(attn.conv_k.weight)
            # Camera branch copied from the base model (its output projection is zeroed below).
            C = attn.dim
            for i, proj in enumerate((attn.q_proj_cam, attn.k_proj_cam, attn.v_proj_cam)):
                proj.weight.copy_(attn.qkv.weight[i * C : (i + 1) * C])
                proj.bias.zero_()
            attn.q_norm_cam.weight.copy_(attn.q_norm.weight)
            attn.k_norm_cam.weight.copy_(attn.k_norm.weight)
            block.mlp.t_conv.weight.zero_()  # temporal mixing starts as identity residual
            # The UCPE branch starts silent through its output projection. The Plücker branch starts silent through
            # its zero embedder (above) and keeps its Xavier `plucker_proj`: with both of that branch's linears at
            # zero, each one's gradient is a product with the other, so neither could ever leave zero.
            attn.out_proj_cam.weight.zero_()
            attn.out_proj_cam.bias.zero_()

    def camera_output_projections(self) -> list[nn.Linear]:
        """The two linears per block through which the camera reaches the token stream: the UCPE attention branch's
        ``attn.out_proj_cam`` and the Plücker branch's ``plucker_proj``. With both zero the output does not depend
        on the camera inputs."""
        return [lin for block in self.blocks for lin in (block.attn.out_proj_cam, block.plucker_proj)]

    @torch.no_grad()
    def zero_camera_branch(self) -> int:
        """Silence the camera: zero every camera output projection (weight and bias), so the output no longer
        depends on the camera inputs (the initialisation silences it through the Plücker embedder instead, see
        `initialize_weights`). Used to measure what camera control a training taught
        (evaluation with ``zero_camera_branch=true``, the CPU demo). Returns the number of zeroed tensors."""
        n = 0
        for lin in self.camera_output_projections():
            lin.weight.zero_()
            lin.bias.zero_()
            n += 2
        return n

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        camera_conditions: torch.Tensor | None = None,
        chunk_plucker: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        Args:
            x: latents [B, C_in, T, H, W].
            timestep: [B], [B, T] or [B, 1, T] (also [B, 1] / [B, 1, 1]) on the 0–1000 scale; truncated to integers
                as in the released model. Frame 0 at t = 0 marks a clean conditioning frame.
            y: text embeddings [B, L, C_y] or [B, 1, L, C_y].
            mask: [B, L], 1/True for real tokens (None: all real).
            camera_conditions: [B, T, 20] relative c2w (row-major 16) + latent-unit (fx, fy, cx, cy) per latent frame.
            chunk_plucker: [B, 48, T, H, W] Plücker maps of the 8 pixel frames of each latent frame.
        Returns:
            velocity [B, C_out, T, H, W] in x's dtype.
        """
        cfg = self.config
        B, T, H, W, t, y, mask = self._validate(x, timestep, y, mask, camera_conditions, chunk_plucker)
        grid = (T, H, W)
        tokens, t_emb, t_mod, text, rays, plucker = self.embed(x, t, y, camera_conditions, chunk_plucker)
        ctx = AttentionContext(grid=grid, rope=cached_rope_table(grid, cfg.head_dim, x.device))
        if rays is not None:
            ctx.rays, ctx.rays_T, ctx.rays_inv = rays
            ctx.cam_rope = cached_camera_table(grid, cfg.head_dim, x.device)

        for block in self.blocks:
            tokens = block(tokens, t_mod, text, mask, ctx, plucker)
        out = self.final_layer(tokens, t_emb, T)  # [B, N, C_out]
        return out.transpose(1, 2).unflatten(2, grid).to(x.dtype)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, camera_conditions: torch.Tensor | None,
              chunk_plucker: torch.Tensor | None):
        """Everything before the blocks, from validated inputs (`_validate`: t is [B, T] float).

        Returns (tokens [B, N, C], t_emb [B, T, C], t_mod [B, T, 6C], text [B, L, C], rays, plucker [B, N, C] or
        None), rays = (P, Pᵀ, P⁻¹) per token, each [B, N, 4, 4] float32 and contiguous, or None without a camera.
        A method of its own so that `sana_wm.parallel.apply_compile` can compile it as one graph: eagerly it is dozens
        of small kernels (embedding MLPs, the rays' float32 maths) that the GPU waits for at the start of every step.
        """
        H, W = x.shape[-2:]
        dtype = self.x_embedder.proj.weight.dtype  # autocast, when on, casts the GEMMs itself
        tokens = self.x_embedder.proj(x.to(dtype).flatten(2).transpose(1, 2))  # [B, N, C]
        t_emb = self.t_embedder(t.trunc())  # [B, T, C]; integer timesteps as in the released model
        t_mod = self.t_block(t_emb)  # [B, T, 6C]
        text = self.attention_y_norm(self.y_embedder(y.to(dtype)))  # [B, L, C]
        rays = None
        if camera_conditions is not None:
            # Ray geometry in float32 whatever the model dtype: bf16 geometry moves fx (docs/design/camera.md).
            frames = ray_frames(camera_conditions.float(), H, W)
            # Contiguous once here: every block's fused UCPE op reads whole 4×4 rows per token.
            rays = frames.P, frames.P_T.contiguous(), frames.P_inv.contiguous()
        plucker = None
        if chunk_plucker is not None:
            plucker = self.plucker_embedder.proj(chunk_plucker.to(dtype).flatten(2).transpose(1, 2))  # [B, N, C]
        return tokens, t_emb, t_mod, text, rays, plucker

    def _validate(self, x, timestep, y, mask, camera_conditions, chunk_plucker):
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x: expected [B, {cfg.in_channels}, T, H, W], got {list(x.shape)}")
        B, _, T, H, W = x.shape
        t = torch.as_tensor(timestep, device=x.device)
        if t.dim() == 3 and t.shape[1] == 1:
            t = t[:, 0]
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape[0] != B or t.shape[1] not in (1, T):
            raise ValueError(
                f"timestep: expected [B], [B, T] or [B, 1, T] with B={B}, T={T}, got {list(torch.as_tensor(timestep).shape)}"
            )
        t = t.float().expand(B, T)
        if y.dim() == 4 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 3 or y.shape[0] != B or y.shape[2] != cfg.caption_channels:
            raise ValueError(f"y: expected [B, L, {cfg.caption_channels}] or [B, 1, L, {cfg.caption_channels}] "
                             f"with B={B}, got {list(y.shape)}")
        if mask is not None:
            mask = torch.as_tensor(mask, device=x.device)
            if mask.dim() == 4:  # [B, 1, 1, L] as some pipelines pass it
                mask = mask.flatten(1)
            if mask.shape != (B, y.shape[1]):
                raise ValueError(f"mask: expected [B, L] = [{B}, {y.shape[1]}], got {list(mask.shape)}")
            mask = mask.bool()
        if camera_conditions is not None and tuple(camera_conditions.shape) != (B, T, 20):
            raise ValueError(
                f"camera_conditions: expected [B, T, 20] = [{B}, {T}, 20] (one pose per latent frame of x), "
                f"got {list(camera_conditions.shape)}"
            )
        # Finiteness needs a host sync on an accelerator, so it is checked here only for CPU tensors; on the GPU path
        # poses are validated before they are turned into tensors (`sana_wm.camera.prepare_camera`, the data loader).
        if camera_conditions is not None and camera_conditions.device.type == "cpu":
            if not torch.isfinite(camera_conditions).all():
                raise ValueError("camera_conditions: contains NaN or Inf")
        want = (B, cfg.plucker_channels, T, H, W)
        if chunk_plucker is not None and tuple(chunk_plucker.shape) != want:
            raise ValueError(f"chunk_plucker: expected {list(want)} (matching x), got {list(chunk_plucker.shape)}")
        return B, T, H, W, t, y, mask
