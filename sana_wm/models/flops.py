"""Model-FLOP accounting for SANA-WM, used for MFU by the trainer and the benchmarks (docs/design/flops.md).

Per sample and forward pass, with C width, L blocks, L_s softmax blocks, N = T·H·W tokens, D head dim, L_txt text:
  linear   2·N·24·C²·L  per-token GEMMs: qkv 3, proj 1, output gate 1, camera q/k/v/out 4, cross q + proj 2,
           FFN (2r + r)·C² = 9 at r = 3, temporal conv 3, Plücker proj 1; plus cross-attention K/V over the
           text 2·L_txt·2C²·L and the embedders.
  softmax  2 branches (main + camera) × L_s × 4·N²·C (QKᵀ and PV).
  cross    L × 4·N·L_txt·C.
  gdn      per GDN block: main num/den transitions and reads ≈ 10·N·C·D, camera ≈ 6·N·C·D, plus the D×D state
           recurrences 2 directions × 3 scans × 2·T·heads·D³.
Training counts 3× the forward (activation recomputation is not model FLOPs). H100 SXM dense bf16 peak: 989.4 TFLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass

H100_BF16_PEAK = 989.4e12


@dataclass(frozen=True)
class FlopCount:
    linear: float
    softmax: float
    cross: float
    gdn: float

    @property
    def total(self) -> float:
        return self.linear + self.softmax + self.cross + self.gdn

    def scaled(self, factor: float) -> FlopCount:
        return FlopCount(self.linear * factor, self.softmax * factor, self.cross * factor, self.gdn * factor)


def model_flops(config, grid: tuple[int, int, int], text_len: int = 300, batch: int = 1,
                training: bool = False) -> FlopCount:
    """FLOPs of one forward (or forward+backward when `training`) for `batch` samples on a latent (T, H, W) grid."""
    T, H, W = grid
    N = T * H * W
    C, L, D = config.hidden_size, config.depth, config.head_dim
    heads = config.num_heads
    L_s = sum(config.is_softmax_block(i) for i in range(L))
    L_g = L - L_s
    r = config.mlp_ratio
    per_token = (3 + 1 + 1 + 4 + 2 + 3 * r + config.t_kernel_size + 1) * C * C
    linear = 2 * N * per_token * L + 2 * text_len * 2 * C * C * L
    linear += 2 * N * (config.in_channels + config.plucker_channels) * C + 2 * N * C * config.out_channels
    softmax = 2 * L_s * 4 * N * N * C
    cross = L * 4 * N * text_len * C
    gdn = L_g * (16 * N * C * D + 2 * 3 * 2 * T * heads * D**3)
    fwd = FlopCount(float(linear), float(softmax), float(cross), float(gdn)).scaled(batch)
    return fwd.scaled(3.0) if training else fwd


def mfu(flops: float, seconds: float, peak: float = H100_BF16_PEAK) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak."""
    return flops / (seconds * peak)
