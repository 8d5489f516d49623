"""Shared timing helper for the GPU benchmarks (run as `python bench/<script>.py`, so this directory is on sys.path)."""

from __future__ import annotations

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
