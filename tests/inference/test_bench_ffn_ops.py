"""bench/ffn_ops.py's tile parser (the benchmark itself needs a GPU): entries, and named errors for bad ones."""

from __future__ import annotations

import pytest


def test_tiles_parse_in_order(bench_module):
    tiles = bench_module("ffn_ops.py").parse_tiles("64x16x256x4,128X32x128x8")
    assert tiles == [dict(rows=64, rb=16, block_c=256, num_warps=4), dict(rows=128, rb=32, block_c=128, num_warps=8)]


@pytest.mark.parametrize("spec, message", [("64x16x256", "four positive integers"), ("64x0x256x4", "four positive"),
                                           ("60x16x256x4", r"ROWS \(60\) must be a multiple of RB \(16\)")])
def test_bad_tiles_are_named(bench_module, spec, message):
    with pytest.raises(ValueError, match=message):
        bench_module("ffn_ops.py").parse_tiles(spec)
