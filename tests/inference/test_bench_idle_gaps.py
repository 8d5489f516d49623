"""bench/common.idle_gaps: GPU idle time from kernel intervals (the `kernels` case of bench/dit_step.py prints it)."""

from __future__ import annotations

import pytest


def test_overlaps_count_once_and_gaps_are_bucketed_by_size(bench_module):
    idle_gaps = bench_module("common.py").idle_gaps
    # a [0, 10] and b [5, 20] overlap; c [30, 40]; d [1040, 50 040] swallows e; f 2 ms later (times in ns)
    spans = [(30, 40, "c"), (0, 10, "a"), (5, 20, "b"), (1040, 50_040, "d"), (1045, 1046, "e"),
             (2_050_040, 2_050_050, "f")]
    out = idle_gaps(spans, top=2)
    assert out["busy_ms"] == pytest.approx((20 + 10 + 49_000 + 10) / 1e6)
    assert out["idle_ms"] == pytest.approx((10 + 1000 + 2_000_000) / 1e6)
    assert out["span_ms"] == pytest.approx(2_050_050 / 1e6)
    # per bucket, rounded to µs: 1.01 µs of small gaps, one 2 ms gap
    assert out["by_size_ms"] == {"<5us": 0.001, "5-20us": 0.0, "20-100us": 0.0, "0.1-1ms": 0.0, ">1ms": 2.0}
    # largest first, named by the kernel that ended last before the gap (d, not e inside it) and the next one
    assert out["largest"] == [(2000.0, 2.05, "d", "f"), (1.0, 0.0, "c", "d")]


def test_no_kernels_is_no_time(bench_module):
    assert bench_module("common.py").idle_gaps([])["idle_ms"] == 0.0


def test_markdown_table_follows_the_column_order_and_blanks_missing_keys(bench_module):
    table = bench_module("common.py").markdown_table([dict(a=1, b="x"), dict(b="y")], dict(b="B", a="A"))
    assert table.splitlines() == ["| B | A |", "|---|---|", "| x | 1 |", "| y |  |"]
