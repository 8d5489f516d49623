"""LPIPS (learned perceptual image patch similarity, version 0.1) in plain torch, with weights from local files.

Why not the ``lpips`` package: it builds its trunk through torchvision, and torchvision pins one torch build per
release, so it cannot be installed beside the CPU torch of this project's environment. The network is small, so
it is written out here; the weights are the published ones, read from local files only:

- the trunk: torchvision's ``alexnet`` or ``vgg16`` ImageNet state dict (``features.N.weight`` / ``.bias`` keys;
  the ``classifier.*`` keys are ignored; a bare ``features`` dict with ``N.weight`` keys is accepted too);
- the linear heads: the ``lpips`` package's ``weights/v0.1/alex.pth`` / ``vgg.pth``
  (``lin0.model.1.weight`` … ``lin4.model.1.weight``, each ``(1, C_k, 1, 1)``).

The distance, for images ``x, y`` in [−1, 1]:

1. scaling layer: ``(x − shift) / scale`` with shift ``(−0.030, −0.088, −0.188)`` and scale
   ``(0.458, 0.448, 0.450)`` per RGB channel;
2. the trunk's activations after five ReLUs (AlexNet: after conv1 … conv5; VGG16: relu1_2, relu2_2, relu3_3,
   relu4_3, relu5_3);
3. each activation divided by its L2 norm over channels at every pixel (``f / (‖f‖ + 1e−10)``);
4. squared difference of the normalised activations, weighted per channel by the linear head (a 1 × 1
   convolution to one channel, no bias), averaged over the feature map's pixels;
5. summed over the five layers.

The dropout before each linear head in the published model is inactive at evaluation and holds no weights; it is
kept as an identity at index 0 so the head's weight sits at ``model.1`` like in the published files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .quality import _pair

__all__ = ["LPIPS", "LPIPS_CHANNELS", "LPIPS_SCALE", "LPIPS_SHIFT", "build_trunk", "load_lpips_model", "lpips_fn"]

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: Channels of the five tapped activations.
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
#: Indices in ``features`` of the ReLUs whose outputs are tapped.
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
_EPS = 1e-10


def build_trunk(net: str) -> nn.Sequential:
    """torchvision's ``alexnet().features`` / ``vgg16().features`` up to the last tapped ReLU, same indices."""
    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
    if net == "vgg":
        layers: list[nn.Module] = []
        c_in = 3
        for block, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
            if block:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
                c_in = width
        return nn.Sequential(*layers)
    raise ValueError(f"LPIPS net must be 'alex' or 'vgg'; got {net!r}")


class _Linear(nn.Module):
    """One LPIPS head: ``model.1`` is the 1 × 1 convolution (``model.0``, the published dropout, is inactive)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS v0.1 (module docstring). ``forward(x, y)`` on ``(B, 3, H, W)`` in [−1, 1] → ``(B,)`` distances.

    State-dict keys: ``features.N.*`` (torchvision's), ``lin0.model.1.weight`` … (the lpips package's); the scaling
    constants are buffers ``shift`` / ``scale`` that are not part of either file.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net = net
        self.features = build_trunk(net)
        self.taps = _TAPS[net]
        for k, c in enumerate(LPIPS_CHANNELS[net]):
            self.add_module(f"lin{k}", _Linear(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
                if i == self.taps[-1]:
                    break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for k, (fx, fy) in enumerate(zip(self.activations(x), self.activations(y), strict=True)):
            nx = fx / (fx.square().sum(1, keepdim=True).sqrt() + _EPS)
            ny = fy / (fy.square().sum(1, keepdim=True).sqrt() + _EPS)
            total = total + getattr(self, f"lin{k}").model((nx - ny).square()).mean(dim=(1, 2, 3))
        return total


def _state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: name it
        raise ValueError(f"{what} {path}: not a readable torch state dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: expected a state dict; got {type(state).__name__}")
    return state


def load_lpips_model(net: str, backbone_weights: str | os.PathLike, linear_weights: str | os.PathLike) -> LPIPS:
    """:class:`LPIPS` with its trunk from a torchvision state dict and its heads from an lpips weight file, both
    loaded strictly (every expected key present, none unknown besides torchvision's ``classifier.*``).

    Raises:
        ValueError: a file that is not a state dict of the expected layout (names the file and the keys).
    """
    model = LPIPS(net)
    trunk = _state(Path(backbone_weights), f"LPIPS {net} trunk weights")
    feats = {k.removeprefix("features."): v for k, v in trunk.items() if not k.startswith("classifier.")}
    # Both torchvision trunks end with a weightless max-pool after the last tapped ReLU, so the keys match exactly.
    expected = set(model.features.state_dict())
    missing, unknown = sorted(expected - set(feats)), sorted(set(feats) - expected)
    if missing or unknown:
        raise ValueError(f"LPIPS {net} trunk weights {backbone_weights}: expected torchvision's "
                         f"{'alexnet' if net == 'alex' else 'vgg16'} `features.N.weight/bias` keys; missing "
                         f"{missing[:6]}, unexpected {unknown[:6]}")
    try:
        model.features.load_state_dict(feats, strict=True)
    except RuntimeError as err:  # shapes of another network
        raise ValueError(f"LPIPS {net} trunk weights {backbone_weights}: {err}") from None
    heads = _state(Path(linear_weights), f"LPIPS {net} linear weights")
    want = {f"lin{k}.model.1.weight" for k in range(5)}
    if set(heads) != want:
        raise ValueError(f"LPIPS {net} linear weights {linear_weights}: expected the lpips package's keys "
                         f"{sorted(want)}; got {sorted(heads)[:8]}")
    try:
        for k in range(5):
            getattr(model, f"lin{k}").load_state_dict({"model.1.weight": heads[f"lin{k}.model.1.weight"]}, strict=True)
    except RuntimeError as err:  # the heads of the other network
        raise ValueError(f"LPIPS {net} linear weights {linear_weights}: {err}") from None
    return model.eval().requires_grad_(False)


def lpips_fn(model: LPIPS, batch: int = 16) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(a, b)`` on two ``(F, H, W, 3)`` uint8 stacks → ``(F,)`` float64 distances (frames mapped to [−1, 1])."""

    @torch.no_grad()
    def fn(a, b) -> np.ndarray:
        a, b = _pair(a, b)  # the frame-stack checks every quality metric applies
        to = lambda z: z.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = [model(to(a[i:i + batch]), to(b[i:i + batch])) for i in range(0, len(a), batch)]
        return torch.cat(out).double().numpy()

    fn.metric_name = f"lpips_{model.net}"  # the column stem: lpips_alex / lpips_vgg
    return fn
