"""Shared timing helper for the GPU benchmarks (run as `python bench/<script>.py`, so this directory is on sys.path)."""

from __future__ import annotations

import json
import statistics

import torch


def cuda_time(fn, warmup: int = 2, reps: int = 5) -> tuple[float, float]:
    """(median ms, peak GiB) of `fn` over `reps` CUDA-event-timed runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def idle_gaps(spans, top: int = 10) -> dict:
    """GPU idle time from kernel intervals `spans` = [(start_ns, end_ns, name), ...] on one device (any order,
    overlaps allowed): {"span_ms", "busy_ms", "idle_ms", "by_size_ms": idle per gap-size bucket, "largest": the `top`
    gaps as (µs, ms since the first kernel, kernel before, kernel after)}. A gap is time with no kernel running; in a
    step whose kernels are queued ahead of the GPU there are none, so idle time is where the host fell behind."""
    spans = sorted(spans)
    if not spans:
        return {"span_ms": 0.0, "busy_ms": 0.0, "idle_ms": 0.0, "by_size_ms": {}, "largest": []}
    t0, end, prev = spans[0][0], spans[0][1], spans[0][2]
    busy, gaps = spans[0][1] - spans[0][0], []
    for start, stop, name in spans[1:]:
        if start > end:
            gaps.append((start - end, start - t0, prev, name))
        busy += max(0, stop - max(start, end))  # the part not already covered by earlier kernels
        if stop > end:
            end, prev = stop, name
    buckets = {"<5us": 5e3, "5-20us": 2e4, "20-100us": 1e5, "0.1-1ms": 1e6, ">1ms": float("inf")}
    by_size = dict.fromkeys(buckets, 0.0)
    for g, *_ in gaps:
        by_size[next(k for k, limit in buckets.items() if g < limit)] += g / 1e6
    largest = [(round(g / 1e3, 1), round(at / 1e6, 2), before, after) for g, at, before, after in sorted(gaps)[::-1]]
    return {"span_ms": (end - t0) / 1e6, "busy_ms": busy / 1e6, "idle_ms": sum(g for g, *_ in gaps) / 1e6,
            "by_size_ms": {k: round(v, 3) for k, v in by_size.items()}, "largest": largest[:top]}


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """`rows` as a Markdown table: `columns` maps each row key to its header, in order."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | None, obj) -> None:
    """Write `obj` as indented JSON to `path` (the scripts' --out); nothing when `path` is None."""
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)


def report(rows: list[dict], columns: dict[str, str], out: str | None) -> int:
    """The scripts' ending: print `rows` as a Markdown table of `columns`, write them to --out, exit status 0."""
    print("\n" + markdown_table(rows, columns))
    write_json(out, rows)
    return 0
