"""Shared helpers of the model tests: fully random weights (so the camera branch matters) and a moving camera."""

import math

import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (not the zero-camera training init), in ranges where the GDN stays stable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 - 1.0)
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) - 2.0)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(fan_in, 1)))


def rotation(yaw: float, pitch: float) -> torch.Tensor:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return ry @ rx


def moving_camera(B: int, T: int, H: int, W: int) -> torch.Tensor:
    """Relative c2w per latent frame (frame 0 = I), turning and translating, plus latent-unit intrinsics: [B, T, 20]."""
    cc = torch.zeros(B, T, 20)
    for b in range(B):
        for t in range(T):
            pose = torch.eye(4)
            if t:
                pose[:3, :3] = rotation(0.15 * t * (b + 1), -0.05 * t)
                pose[:3, 3] = torch.tensor([0.3 * t, -0.05 * t, 0.8 * t * (1 - 0.3 * b)])
            cc[b, t, :16] = pose.flatten()
            cc[b, t, 16:] = torch.tensor([W * 0.8, W * 0.8, (W - 1) / 2, (H - 1) / 2])
    return cc
