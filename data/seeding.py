"""Deterministic seed derivation shared by the loader and the synthetic-world generator.

Kept dependency-free (numpy only) so renderer worker processes import nothing heavy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["seed_for"]


def seed_for(base_seed: int, *parts: int) -> int:
    """Deterministic 32-bit seed from ``base_seed`` and non-negative integer parts (rank, epoch, worker…).

    Uses numpy's ``SeedSequence`` rather than Python's ``hash`` (salted per process for strings), so
    the same arguments give the same seed in every process and on every machine.
    """
    return int(np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, *[int(p) for p in parts]]).generate_state(1)[0])
