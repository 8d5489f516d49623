"""Shared fixtures for the camera tests."""

import numpy as np


def random_c2w(n: int, seed: int = 0, t_scale: float = 3.0) -> np.ndarray:
    """(n, 4, 4) float64 random rigid OpenCV c2w poses."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    ).reshape(n, 3, 3)  # fmt: skip
    P = np.tile(np.eye(4), (n, 1, 1))
    P[:, :3, :3] = R
    P[:, :3, 3] = rng.normal(size=(n, 3)) * t_scale
    return P
