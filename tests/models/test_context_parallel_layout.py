"""The halo plan of `sana_wm.ops.cp` (which rank sends which frames where) and the frame layout, without a group."""

from __future__ import annotations

import pytest
import torch

from sana_wm.ops.cp import FrameShard, _halo_transfers


def test_halo_plan_with_long_slices_talks_to_neighbours_only():
    # 4 ranks × 5 frames, halo 3: rank 1 sends its first 3 frames left and its last 3 right, and fills positions
    # 0..2 (global frames 2..4, rank 0's last) and 8..10 (global 10..12, rank 2's first) of its 11-frame extension.
    sends, recvs = _halo_transfers(5, 4, 3, 1)
    assert sends == [(0, 0, 3), (2, 2, 5)]
    assert recvs == [(0, 0, 3), (2, 8, 11)]
    assert _halo_transfers(5, 4, 3, 0) == ([(1, 2, 5)], [(1, 8, 11)])  # the clip's ends stay zero


def test_halo_plan_with_short_slices_spans_two_ranks():
    # 3 ranks × 2 frames, halo 3: rank 2 (global frames 4, 5) needs frames 1..3 — frame 1 from rank 0, 2..3 from rank 1.
    sends, recvs = _halo_transfers(2, 3, 3, 2)
    assert recvs == [(0, 0, 1), (1, 1, 3)]
    assert sends == [(0, 0, 1), (1, 0, 2)]  # rank 0's right window is frames 2..4, rank 1's is 4..6


def test_frame_shard_layout_and_mask():
    s = FrameShard(None, rank=2, size=3, frames=3, valid=7)  # frames 6, 7, 8 of a 7-frame clip
    assert (s.start, s.local_valid) == (6, 1)
    assert s.frame_mask("cpu").tolist() == [1.0, 0.0, 0.0]
    x = torch.ones(1, 3, 2)
    assert s.mask_frames(x, 1)[0, :, 0].tolist() == [1.0, 0.0, 0.0]
    full = FrameShard(None, rank=0, size=3, frames=3, valid=9)
    assert full.mask_frames(x, 1) is x


def test_one_rank_helpers_return_their_input_and_refuse_a_padded_one_rank_layout():
    """A one-rank slice is the whole clip, unpadded: slicing, gathering and masking are the identity (no copy, no
    collective: the group here is None), and a one-rank layout with padding is refused rather than assumed away."""
    from sana_wm.context_parallel import ContextParallel
    from sana_wm.ops.cp import gather_frames

    whole = FrameShard(None, rank=0, size=1, frames=5, valid=5)
    x = torch.randn(1, 5, 2)
    cp = ContextParallel.__new__(ContextParallel)  # the frame helpers only read the latest layout
    cp.shard = whole
    assert cp.shard_frames(x, 1) is x and cp.shard_frames(x, 1, edge=True) is x
    assert gather_frames(x, whole, 1) is x and whole.mask_frames(x, 1) is x
    assert cp.frame_mask("cpu").tolist() == [1.0] * 5
    with pytest.raises(ValueError, match=r"a whole-clip tensor of 5 frames along dim 1 expected .* got shape \[1, 4, 2\]"):
        cp.shard_frames(torch.randn(1, 4, 2), 1)
    with pytest.raises(ValueError, match="a one-rank group holds the whole clip, so frames must equal valid; got "
                                         "frames=6, valid=5"):
        FrameShard(None, rank=0, size=1, frames=6, valid=5)
    with pytest.raises(ValueError, match=r"got rank=3, size=3, frames=2, valid=5"):
        FrameShard(None, rank=3, size=3, frames=2, valid=5)
    with pytest.raises(ValueError, match=r"got rank=0, size=2, frames=2, valid=5"):
        FrameShard(None, rank=0, size=2, frames=2, valid=5)
