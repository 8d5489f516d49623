"""Context parallelism over latent frames: the communication and the frame-sharded GDN scans, as stateless ops.

Each rank of a CP group holds a contiguous slice of `frames` latent frames (rank r: global frames [r·L, (r+1)·L)); the
clip is right-padded to a multiple of the group size and frames ≥ `valid` are padding. Nothing here knows the model:
`sana_wm.context_parallel` installs these ops on one from outside.

* `halo_exchange`: the frames within `halo` of a slice's ends from whichever ranks hold them (point-to-point, only
  the ranks that overlap: the neighbours unless a slice is shorter than the halo); its backward sends the halos'
  gradients back to their owners, which add them.
* `gather_sum`: all-gather whose backward sums every rank's gradient of the gathered tensor and keeps its own part
  (the adjoint of an all-gather: a reduce-scatter).
* `cp_bidirectional_gdn` / `cp_bidirectional_delta`: the frame-wise bidirectional GDN of a sharded clip.

The GDN state exchange. Per head, the forward scan F_t = F_{t−1} W_t + U_t and the exclusive reverse scan
R_t = R_{t+1} W_{t+1} + U_{t+1} (W_t = g_t (I − A_t), A_t = Σ_s β k kᵀ symmetric) are linear in their state, so a
slice run from zero differs from the true states only by what enters at its ends:

    F_t = F_t^loc + S_in W_0 ⋯ W_t,                S_in  = F of the previous slice's last frame
    R_t = R_t^loc + R_in W_{L−1} ⋯ W_{t+1},        R_in  = R of this slice's last frame (fed by the next slices)

Each rank computes its slice's composite — the product M = W_0 ⋯ W_{L−1}, the forward end state h = F^loc_{L−1} and
the reverse accumulation k = R^loc_0 W_0 + U_0 — and one all-gather hands every rank every composite; then

    S_in(r) = Σ_{j<r} h_j M_{j+1} ⋯ M_{r−1}   (S ← S M_j + h_j over j < r),
    R_in(r) = R ← R M_jᵀ + k_j over j > r, from the last rank down (W_{L−1} ⋯ W_0 = Mᵀ as every W_t is symmetric),

O(group · D³) work and O(D²) bytes per head, whatever the clip length. The local correction reruns the slice's scan
with the incoming states entering through two virtual frames (A = 0, g = 1, U = the state) before and after it, so
the existing `bidirectional_scan` op (Triton on CUDA, exact backward) does it and autograd carries the gradients back
through the composites; `gather_sum`'s backward is the mirror exchange that returns each rank's share of the
composites' gradients. Cost against one rank's scan of L frames: two scans of the slice plus one D×D product scan
(M), each O(L·D³) per head, next to the O(L·S·D²) token GEMMs that dominate a GDN layer.

Padding: β is zeroed on padded frames, so they write nothing (A = U = 0) and, lying after every valid frame, never
reach a valid frame's state in either direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from sana_wm.ops.gdn.scan import bidirectional_scan, state_scan
from sana_wm.ops.gdn.torch_scan import _f32, _read, _transitions, _validate

__all__ = ["FrameShard", "halo_exchange", "gather_sum", "gather_frames", "cp_bidirectional_gdn",
           "cp_bidirectional_delta"]


@dataclass(frozen=True)
class FrameShard:
    """Where this rank's slice of a clip lies. group: the CP process group; rank / size: this rank's index in it and
    the group size; frames: L, the slice length (every rank's); valid: the clip's real frame count (≤ size·L)."""

    group: object
    rank: int
    size: int
    frames: int
    valid: int

    def __post_init__(self):
        if not (self.size >= 1 and 0 <= self.rank < self.size and self.frames >= 1
                and 0 < self.valid <= self.size * self.frames):
            raise ValueError(f"FrameShard: expected size ≥ 1, 0 ≤ rank < size, frames ≥ 1 and 0 < valid ≤ size·frames; "
                             f"got rank={self.rank}, size={self.size}, frames={self.frames}, valid={self.valid}")
        if self.size == 1 and self.frames != self.valid:
            # A one-rank group holds the whole clip unpadded; the size-1 shortcuts (the plain ops, no slicing, no
            # gather: `sana_wm.context_parallel`) rely on it.
            raise ValueError(f"FrameShard: a one-rank group holds the whole clip, so frames must equal valid; got "
                             f"frames={self.frames}, valid={self.valid}")

    @property
    def start(self) -> int:
        return self.rank * self.frames

    @property
    def local_valid(self) -> int:
        """How many of this rank's frames are real (the rest are padding)."""
        return max(0, min(self.frames, self.valid - self.start))

    def frame_mask(self, device, dtype=torch.float32) -> torch.Tensor:
        """[L]: 1 on real frames, 0 on padding."""
        return (torch.arange(self.frames, device=device) < self.local_valid).to(dtype)

    def mask_frames(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x with its padded frames (along `dim`) zeroed; x itself when the clip has no padding.

        The same operations on every rank, whether its own slice holds padding or not: the order in which autograd
        runs the backward's collectives follows the graph, and it must be the same on every rank of the group (a
        rank-dependent graph made the ranks' backward collectives meet in different orders and hang)."""
        if self.size * self.frames == self.valid:
            return x
        shape = [1] * x.dim()
        shape[dim] = self.frames
        return x * self.frame_mask(x.device, x.dtype).view(shape)


# -- halo exchange ------------------------------------------------------------------------------------------------------


def _halo_transfers(frames: int, size: int, halo: int, me: int):
    """(sends, recvs) for rank `me`: sends = [(peer, first, stop)] of its own frames (local indices) a peer needs;
    recvs = [(peer, first, stop)] positions in its extended slice (halo + L + halo) that a peer fills. Frames outside
    [0, size·L) are the clip's zero padding and are never sent."""

    def windows(r):
        return [(max(0, r * frames - halo), r * frames), ((r + 1) * frames, min(size * frames, (r + 1) * frames + halo))]

    sends, recvs = [], []
    for peer in range(size):
        if peer == me:
            continue
        for a, b in windows(peer):
            lo, hi = max(a, me * frames), min(b, (me + 1) * frames)
            if lo < hi:
                sends.append((peer, lo - me * frames, hi - me * frames))
        for a, b in windows(me):
            lo, hi = max(a, peer * frames), min(b, (peer + 1) * frames)
            if lo < hi:
                origin = me * frames - halo  # global frame of the extended slice's first position
                recvs.append((peer, lo - origin, hi - origin))
    return sends, recvs


def _p2p(group, outgoing, incoming) -> None:
    """Post every send [(peer, tensor)] and receive [(peer, tensor)] of one exchange at once and wait for them."""
    ops = [dist.P2POp(dist.isend, t, dist.get_global_rank(group, p), group) for p, t in outgoing]
    ops += [dist.P2POp(dist.irecv, t, dist.get_global_rank(group, p), group) for p, t in incoming]
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shard: FrameShard, halo: int, dim: int):
        L = shard.frames
        sends, recvs = _halo_transfers(L, shard.size, halo, shard.rank)
        shape = list(x.shape)
        shape[dim] = L + 2 * halo
        ext = x.new_zeros(shape)
        ext.narrow(dim, halo, L).copy_(x)
        bufs = [(p, torch.empty_like(ext.narrow(dim, a, b - a)).contiguous()) for p, a, b in recvs]
        _p2p(shard.group, [(p, x.narrow(dim, a, b - a).contiguous()) for p, a, b in sends], bufs)
        for (_, a, b), (_, buf) in zip(recvs, bufs, strict=True):
            ext.narrow(dim, a, b - a).copy_(buf)
        ctx.shard, ctx.halo, ctx.dim, ctx.sends, ctx.recvs = shard, halo, dim, sends, recvs
        return ext

    @staticmethod
    def backward(ctx, dext):
        dim, halo, L = ctx.dim, ctx.halo, ctx.shard.frames
        dx = dext.narrow(dim, halo, L).clone()
        bufs = [(p, torch.empty_like(dx.narrow(dim, a, b - a)).contiguous()) for p, a, b in ctx.sends]
        _p2p(ctx.shard.group, [(p, dext.narrow(dim, a, b - a).contiguous()) for p, a, b in ctx.recvs], bufs)
        for (_, a, b), (_, buf) in zip(ctx.sends, bufs, strict=True):
            dx.narrow(dim, a, b - a).add_(buf)
        return dx, None, None, None


def halo_exchange(x: torch.Tensor, shard: FrameShard, halo: int, dim: int = 1) -> torch.Tensor:
    """This rank's slice x (L frames along `dim`) extended by `halo` frames on each side from the ranks that hold
    them (zeros beyond the clip's ends): [.., halo + L + halo, ..]. Differentiable; padded frames must already be zero."""
    if shard.size == 1 or halo == 0:
        pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [halo, halo]
        return torch.nn.functional.pad(x, pad)
    return _HaloExchange.apply(x, shard, halo, dim % x.dim())


# -- all-gathers --------------------------------------------------------------------------------------------------------


def _all_gather(x: torch.Tensor, group, size: int) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((size * x.shape[0], *x.shape[1:]))  # gloo wants the ranks' tensors stacked along dim 0
    dist.all_gather_into_tensor(out, x, group=group)
    return out.view(size, *x.shape)


class _GatherSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, rank: int, size: int):
        ctx.group, ctx.rank, ctx.size = group, rank, size
        return _all_gather(x, group, size)

    @staticmethod
    def backward(ctx, dout):
        dout = dout.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            dx = dout.new_empty(dout.shape[1:])
            dist.reduce_scatter_tensor(dx, dout, group=ctx.group)
        else:  # gloo has no reduce-scatter of one tensor: sum everything, keep this rank's part
            dist.all_reduce(dout, group=ctx.group)
            dx = dout[ctx.rank].clone()
        return dx, None, None, None


def gather_sum(x: torch.Tensor, shard: FrameShard) -> torch.Tensor:
    """[size, *x.shape]: every rank's x. Backward: the sum over ranks of the gradient of this rank's entry."""
    return _GatherSum.apply(x, shard.group, shard.rank, shard.size)


class _GatherFrames(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shard: FrameShard, dim: int):
        ctx.shard, ctx.dim = shard, dim
        full = torch.cat(_all_gather(x, shard.group, shard.size).unbind(0), dim=dim)
        return full.narrow(dim, 0, shard.valid)

    @staticmethod
    def backward(ctx, dfull):
        s, dim = ctx.shard, ctx.dim
        shape = list(dfull.shape)
        shape[dim] = s.frames
        dx = dfull.new_zeros(shape)
        n = s.local_valid
        if n:
            dx.narrow(dim, 0, n).copy_(dfull.narrow(dim, s.start, n))
        return dx, None, None


def gather_frames(x: torch.Tensor, shard: FrameShard, dim: int) -> torch.Tensor:
    """The whole clip's real frames from every rank's slice x (L frames along `dim`).

    Its backward takes this rank's part of the gradient without communicating: it is meant for a value that every
    rank of the group then computes identically (a loss on the full output), whose parameter gradients are then the
    sum over the group of each rank's (FSDP's reduction over a mesh that includes the CP ranks does that sum). A
    one-rank group's slice is the whole clip (`FrameShard` checks it): x itself."""
    if shard.size == 1:
        return x
    return _GatherFrames.apply(x, shard, dim % x.dim())


# -- the frame-sharded GDN -----------------------------------------------------------------------------------------------


def _composite(A, U, g):
    """(M, h, k) of one slice: M = W_0 ⋯ W_{L−1} [.., D, D], h = F^loc_{L−1} and k = R^loc_0 W_0 + U_0 [.., Dv, D]."""
    FR = bidirectional_scan(A, U, g)
    A0, g0, U0 = A[..., 0, :, :], g[..., 0, None, None], U[..., 0, :, :]
    R0 = FR[1][..., 0, :, :]
    k = g0 * (R0 - R0 @ A0) + U0
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    first = torch.zeros_like(A)
    first[..., 0, :, :] = g0 * (eye - A0)  # the product scan: F'_0 = W_0, F'_t = F'_{t−1} W_t
    M = state_scan(A, first, g)[..., -1, :, :]
    return M, FR[0][..., -1, :, :], k


def cp_bidirectional_scans(problems, g: torch.Tensor, shard: FrameShard) -> list[torch.Tensor]:
    """`bidirectional_scan` ([2, .., L, Dv, D]: inclusive forward, exclusive reverse) of each (A, U) problem of a
    sharded clip, all sharing the decay g [.., L]; one all-gather for every problem and both directions."""
    composites = [_composite(A, U, g) for A, U in problems]
    flat = torch.cat([t.flatten() for c in composites for t in c])
    every = gather_sum(flat, shard)  # [size, n]
    outs = []
    offset = 0
    for (A, U), (M, h, k) in zip(problems, composites, strict=True):
        sizes = [M.numel(), h.numel(), k.numel()]
        Ms, hs, ks = (every[:, offset + sum(sizes[:i]) : offset + sum(sizes[: i + 1])].unflatten(1, t.shape)
                      for i, t in enumerate((M, h, k)))
        offset += sum(sizes)
        # Every rank composes every rank's incoming states and picks its own, so that the autograd graph is the same
        # on every rank (see `FrameShard.mask_frames`).
        s_in, r_in = [torch.zeros_like(h)], [torch.zeros_like(h)]
        for j in range(shard.size - 1):
            s_in.append(s_in[-1] @ Ms[j] + hs[j])
            r_in.append(r_in[-1] @ Ms[-1 - j].transpose(-1, -2) + ks[-1 - j])
        s_in, r_in = torch.stack(s_in)[shard.rank], torch.stack(r_in[::-1])[shard.rank]
        zA = torch.zeros_like(A[..., :1, :, :])
        one = torch.ones_like(g[..., :1])
        A_ext = torch.cat([zA, A, zA], dim=-3)
        U_ext = torch.cat([s_in[..., None, :, :], U, r_in[..., None, :, :]], dim=-3)
        g_ext = torch.cat([one, g, one], dim=-1)
        outs.append(bidirectional_scan(A_ext, U_ext, g_ext)[..., 1:-1, :, :])
    return outs


def cp_bidirectional_gdn(shard: FrameShard, q, k, q_rot, k_rot, v, beta, g, eps: float = 1e-8,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`sana_wm.ops.gdn.bidirectional_gdn` of this rank's slice of a sharded clip (same arguments, L frames each).
    Float32 maths (float64 stays float64); the composite path on every device."""
    _validate(q_rot, k_rot, v, beta, g)
    beta = shard.mask_frames(beta, dim=1)
    A_rot, U = _transitions(k_rot, v, beta)
    A, z = _transitions(k, None, beta)
    FR_num, FR_den = cp_bidirectional_scans([(A_rot, U), (A, z)], _f32(g).permute(0, 2, 1), shard)
    num = _read(q_rot, FR_num[0] + FR_num[1])
    den = _read(q, FR_den[0] + FR_den[1])
    out = (num / (den + eps)).permute(0, 2, 3, 1, 4)
    return out if out_dtype is None else out.to(out_dtype)


def cp_bidirectional_delta(shard: FrameShard, q, k, v, beta, g, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`sana_wm.ops.gdn.bidirectional_delta` (camera branch, no normaliser) of this rank's slice of a sharded clip."""
    _validate(q, k, v, beta, g)
    A, U = _transitions(k, v, shard.mask_frames(beta, dim=1))
    (FR,) = cp_bidirectional_scans([(A, U)], _f32(g).permute(0, 2, 1), shard)
    out = _read(q, FR[0] + FR[1]).permute(0, 2, 3, 1, 4)
    return out if out_dtype is None else out.to(out_dtype)
