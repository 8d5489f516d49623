"""bench/ffn_ops.py's tile parser (the benchmark itself needs a GPU): entries, and named errors for bad ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `common`
    try:
        spec = importlib.util.spec_from_file_location("bench_ffn_ops", BENCH / "ffn_ops.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_tiles_parse_in_order():
    tiles = _module().parse_tiles("64x16x256x4,128X32x128x8")
    assert tiles == [dict(rows=64, rb=16, block_c=256, num_warps=4), dict(rows=128, rb=32, block_c=128, num_warps=8)]


@pytest.mark.parametrize("spec, message", [("64x16x256", "four positive integers"), ("64x0x256x4", "four positive"),
                                           ("60x16x256x4", r"ROWS \(60\) must be a multiple of RB \(16\)")])
def test_bad_tiles_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        _module().parse_tiles(spec)
