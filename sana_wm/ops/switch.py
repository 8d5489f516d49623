"""The one registry of the fused-kernel switches: every Triton kernel family of `sana_wm.ops` and its off switch.

Each family runs its Triton kernels for a tensor only when all of these hold: the kernels imported (`available`),
the switch is on (its environment variable, read when this module is imported, is "1" or unset rather than "0",
any other value being an error; or `set`/`override` since),
and the tensor is on CUDA in a dtype the kernels take. Otherwise the op runs its PyTorch path, which computes the same
function (the kernels are tested against it). The switches are the A/B knobs of `bench/` and a safety valve should a
kernel misbehave on some card. `python -m sana_wm.ops` prints them with their current state.

    SANA_WM_FUSED_GDN         GDN transitions, state scans and read-out from token layout, inference and training
                              (`gdn`); off: float32 PyTorch GEMMs around the state scan
    SANA_WM_FUSED_GDN_BWD     the training backward of those transitions and read-outs (`gdn`); off: float32
                              PyTorch GEMMs (it matters only while SANA_WM_FUSED_GDN is on)
    SANA_WM_FUSED_GDN_SCAN    the frame-wise state scan, both directions in one launch, and its adjoint, where the
                              path above leaves it to `scan.py` (training, or SANA_WM_FUSED_GDN off; `gdn`); off:
                              a PyTorch loop over frames
    SANA_WM_FUSED_SHORT_CONV  the keys' bidirectional short conv along frames (`short_conv`); off: shifted adds
    SANA_WM_FUSED_PROLOGUE    the GDN query/key RMSNorm → ReLU → scale → RoPE (`qk_prologue`); off: the PyTorch
                              composition
    SANA_WM_FUSED_UCPE        the camera prologue: norm, UCPE, RMS clamp, key norm ratio (`ucpe`); off: the PyTorch
                              composition
    SANA_WM_FUSED_GLU_BWD     the FFN GLU's training backward with the conv bias folded in (`glu_conv`); off: the
                              autograd / Inductor kernels

Why a failed import is logged: a kernel module that no longer imports (a Triton upgrade, a bug in our file) would
otherwise leave a GPU run on the slow path without a word. It is logged once, when the op package is imported: as a
warning, except where Triton itself is absent on a machine without CUDA (a CPU install, where the PyTorch path is the
intended one), which is logged at debug level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
T = TypeVar("T")


class KernelSwitch:
    """The on/off switch of one kernel family: `use(x)` says whether its kernels run for tensor `x`."""

    def __init__(self, env: str, kernels: str, dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES):
        self.env, self.kernels, self.dtypes = env, kernels, dtypes
        self.available = False  # until `load_kernels` imports the family's Triton module
        self.device_type = "cuda"  # where the kernels run (a CPU test may point this at "cpu" with stand-in kernels)
        self.reset()

    def reset(self) -> None:
        """Back to the environment's setting: on unless the variable is "0" ("1" or unset: on)."""
        value = os.environ.get(self.env, "1")
        if value not in ("0", "1"):  # "off" or "false" must not quietly mean on
            raise ValueError(f"environment variable {self.env}={value!r}: expected '0' (kernels off) or '1' (on)")
        self.enabled = value == "1"

    def set(self, enabled: bool) -> bool:
        """Turn the kernels on/off process-wide; returns the previous setting."""
        previous, self.enabled = self.enabled, bool(enabled)
        return previous

    def use(self, x: torch.Tensor) -> bool:
        return self.available and self.enabled and x.device.type == self.device_type and x.dtype in self.dtypes

    def __repr__(self) -> str:
        return f"{self.env}={'on' if self.enabled else 'off'}{'' if self.available else ' (kernels not imported)'}"


SWITCHES: dict[str, KernelSwitch] = {s.env: s for s in (
    KernelSwitch("SANA_WM_FUSED_GDN", "fused GDN transitions, state scans and read-out"),
    KernelSwitch("SANA_WM_FUSED_GDN_BWD", "fused GDN transitions / read-out backward"),
    KernelSwitch("SANA_WM_FUSED_GDN_SCAN", "GDN state scan", dtypes=(torch.float32,)),
    KernelSwitch("SANA_WM_FUSED_SHORT_CONV", "bidirectional short conv"),
    KernelSwitch("SANA_WM_FUSED_PROLOGUE", "GDN query/key prologue"),
    KernelSwitch("SANA_WM_FUSED_UCPE", "camera prologue (UCPE)"),
    KernelSwitch("SANA_WM_FUSED_GLU_BWD", "FFN GLU backward"),
)}


def get(env: str) -> KernelSwitch:
    """The switch named by its environment variable."""
    if env not in SWITCHES:
        raise KeyError(f"no kernel switch {env!r}; the switches are {sorted(SWITCHES)}")
    return SWITCHES[env]


@contextmanager
def override(**settings: bool) -> Iterator[None]:
    """`with override(SANA_WM_FUSED_GDN=False): ...` sets switches for the block and restores them after."""
    switches = {env: get(env) for env in settings}
    previous = {env: s.set(settings[env]) for env, s in switches.items()}
    try:
        yield
    finally:
        for env, s in switches.items():
            s.set(previous[env])


def _expected_absence(err: Exception) -> bool:
    """Triton not installed on a machine without CUDA: the PyTorch path is the intended one, nothing to warn about."""
    missing = getattr(err, "name", None) or ""
    return isinstance(err, ModuleNotFoundError) and missing.split(".")[0] == "triton" and not torch.cuda.is_available()


def load_kernels(importer: Callable[[], T], *switches: KernelSwitch) -> T | None:
    """`importer()` (the import of a family's Triton module, returning what the op keeps of it), marking `switches`
    available; if it raises, the failure is logged once here and None returned, and the switches stay unavailable."""
    try:
        kernels = importer()
    except Exception as err:  # noqa: BLE001 - any import problem (no triton, no driver, a bug) means "not available"
        level = logging.DEBUG if _expected_absence(err) else logging.WARNING
        names = ", ".join(f"{s.kernels} ({s.env})" for s in switches)
        log.log(level, "Triton kernels unavailable, running the PyTorch path instead: %s; import failed with %s: %s",
                names, type(err).__name__, err)
        return None
    for s in switches:
        s.available = True
    return kernels
