"""The kernel-switch registry (`sana_wm.ops.switch`): one list, honoured by every op, and loud import failures.

No GPU here, so the dispatch tests point a switch at the CPU and put a counting stand-in where its Triton kernel goes:
what is counted is which path the op really took."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sana_wm.ops import glu_conv, qk_prologue, short_conv, switch, ucpe
from sana_wm.ops.gdn import scan, torch_scan

ROOT = Path(__file__).resolve().parents[2]
OP_MODULES = (scan, torch_scan, short_conv, qk_prologue, ucpe, glu_conv)


def test_registry_lists_every_switch_once_and_the_ops_use_its_objects():
    names = list(switch.SWITCHES)
    assert len(names) == len(set(names)) == 7
    # every switch an op module holds is a registry object, and every registry switch is held by one op module
    held = [v for m in OP_MODULES for v in vars(m).values() if isinstance(v, switch.KernelSwitch)]
    assert sorted(s.env for s in held) == sorted(names)
    assert all(switch.get(s.env) is s for s in held)
    # the documented lists: the registry's docstring and the README name each switch exactly once
    doc_names = re.findall(r"^    (SANA_WM_\w+) ", switch.__doc__, flags=re.M)
    readme_names = re.findall(r"^\| `(SANA_WM_\w+)` \|", (ROOT / "README.md").read_text(), flags=re.M)
    assert sorted(doc_names) == sorted(readme_names) == sorted(names)
    # and nothing in the code, benchmarks or docs names a switch that does not exist (bench/RESULTS.md is a log: it
    # may name switches of kernels since removed)
    files = [*ROOT.glob("sana_wm/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("bench/*.sh"),
             *ROOT.glob("docs/**/*.md"), ROOT / "README.md"]
    mentioned = {n for f in files if f.is_file() for n in re.findall(r"SANA_WM_FUSED_\w+", f.read_text())}
    assert mentioned == set(names)


def test_unknown_switch_is_named():
    with pytest.raises(KeyError, match=r"no kernel switch 'SANA_WM_FUSED_GLU'; the switches are \['SANA_WM_FUSED_GDN'"):
        switch.get("SANA_WM_FUSED_GLU")


def test_a_bad_environment_value_is_named(monkeypatch):
    sw = switch.get("SANA_WM_FUSED_UCPE")
    monkeypatch.setattr(sw, "enabled", sw.enabled)
    monkeypatch.setenv("SANA_WM_FUSED_UCPE", "off")
    with pytest.raises(ValueError, match=r"SANA_WM_FUSED_UCPE='off': expected '0' \(kernels off\) or '1' \(on\)"):
        sw.reset()


def test_override_sets_and_restores():
    gdn_switch, ucpe_switch = switch.get("SANA_WM_FUSED_GDN"), switch.get("SANA_WM_FUSED_UCPE")
    before = gdn_switch.enabled, ucpe_switch.enabled
    with pytest.raises(RuntimeError), switch.override(SANA_WM_FUSED_GDN=False, SANA_WM_FUSED_UCPE=True):
        assert (gdn_switch.enabled, ucpe_switch.enabled) == (False, True)
        raise RuntimeError  # restored on the way out of an error too
    assert (gdn_switch.enabled, ucpe_switch.enabled) == before


class _Counted:
    """`fn` with a call counter."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.fn(*a, **k)


def _short_conv(mp):
    kernel = _Counted(lambda x, w: short_conv.naive_bidirectional_short_conv(x, w).contiguous())
    reference = _Counted(short_conv.naive_bidirectional_short_conv)
    mp.setattr(short_conv, "short_conv_forward", kernel)
    mp.setattr(short_conv, "naive_bidirectional_short_conv", reference)
    return kernel, reference, lambda: short_conv.bidirectional_short_conv(torch.randn(1, 3, 2, 4), torch.rand(4, 2))


def _prologue(mp):
    naive = qk_prologue.naive_rms_relu_rope
    kernel = _Counted(lambda x, w, cos, sin, scale, eps: naive(x, w, cos, sin, scale, eps))
    reference = _Counted(naive)
    mp.setattr(qk_prologue, "rms_relu_rope_forward", kernel)
    mp.setattr(qk_prologue, "naive_rms_relu_rope", reference)
    return kernel, reference, lambda: qk_prologue.rms_relu_rope(torch.randn(1, 3, 8), torch.ones(8),
                                                                torch.ones(3, 2), torch.zeros(3, 2))


def _ucpe(mp):
    naive = ucpe.naive_ucpe_clamp
    kernel = _Counted(lambda x, mat, cos, sin, w, relu, scale, norm_eps, clamp_eps, heads, downscale:
                      naive(x, mat, cos, sin, w, relu, scale, norm_eps, heads, downscale))
    reference = _Counted(naive)
    mp.setattr(ucpe, "ucpe_clamp_forward", kernel)
    mp.setattr(ucpe, "naive_ucpe_clamp", reference)
    mat = torch.eye(4).expand(1, 3, 4, 4)
    return kernel, reference, lambda: ucpe.ucpe_clamp(torch.randn(1, 3, 8), mat, torch.ones(3, 2), torch.zeros(3, 2), 1)


def _scan(mp):
    kernel = _Counted(lambda A, U, g, reverse, transpose_a: scan._torch_scan(A, U, g, reverse, transpose_a))
    reference = _Counted(scan._torch_scan)
    mp.setattr(scan, "triton_state_scan", kernel)
    mp.setattr(scan, "_torch_scan", reference)
    return kernel, reference, lambda: scan.state_scan(0.1 * torch.rand(1, 3, 4, 4), torch.randn(1, 3, 2, 4),
                                                      torch.rand(1, 3))


def _fused_gdn(mp):
    kernel = _Counted(lambda q, k, q_rot, k_rot, v, *rest: torch.zeros(v.shape))
    reference = _Counted(torch_scan._transitions)
    mp.setattr(torch_scan, "_gdn_fused_forward", kernel)
    mp.setattr(torch_scan, "_transitions", reference)
    x = [torch.rand(1, 2, 3, 1, 8) for _ in range(5)]

    def call():
        with torch.no_grad():
            return torch_scan.bidirectional_gdn(*x, torch.rand(1, 2, 3, 1), torch.rand(1, 2, 1))

    return kernel, reference, call


def _glu_backward(mp):
    # Off, the GLU's backward is plain autograd: there is no reference function to count, only the kernel's absence.
    kernel = _Counted(lambda z, b, d: glu_conv.naive_glu_backward(z, b, d))
    mp.setattr(glu_conv, "_triton_glu_backward", kernel)
    h, dout = torch.randn(1, 2, 6, 4, requires_grad=True), torch.randn(1, 2, 6, 2)  # (a dense output gradient)
    return kernel, None, lambda: glu_conv.silu_depthwise_glu(h, torch.randn(4, 1, 3, 3), torch.randn(4),
                                                              (2, 3)).backward(dout)


class _Stop(Exception):
    pass


def _gdn_backward(mp):
    # The switch is read when the training path is traced and passed to the fused ops as `fused_bwd`, which picks
    # the Triton or the PyTorch backward: the stand-in records that argument and stops the call there.
    seen = []

    def transitions_op(k, v, beta, use_v, fused_bwd):
        seen.append(fused_bwd)
        raise _Stop

    for attr, value in (("device_type", "cpu"), ("available", True), ("enabled", True)):
        mp.setattr(switch.get("SANA_WM_FUSED_GDN"), attr, value)
    mp.setattr(torch_scan, "_transitions_op", transitions_op)
    x = [torch.rand(1, 2, 3, 1, 8, requires_grad=True) for _ in range(3)]

    class TritonBackwardChosen:  # `calls`: the traced calls that handed the ops fused_bwd=True
        @property
        def calls(self):
            return sum(seen)

    def call():
        with pytest.raises(_Stop):
            torch_scan.bidirectional_delta(*x, torch.rand(1, 2, 3, 1), torch.rand(1, 2, 1))

    return TritonBackwardChosen(), None, call


DISPATCH = {"SANA_WM_FUSED_SHORT_CONV": _short_conv, "SANA_WM_FUSED_PROLOGUE": _prologue,
            "SANA_WM_FUSED_UCPE": _ucpe, "SANA_WM_FUSED_GDN_SCAN": _scan, "SANA_WM_FUSED_GDN": _fused_gdn,
            "SANA_WM_FUSED_GLU_BWD": _glu_backward, "SANA_WM_FUSED_GDN_BWD": _gdn_backward}


def test_every_switch_has_a_dispatch_test():
    assert sorted(DISPATCH) == sorted(switch.SWITCHES)


@pytest.mark.parametrize("env", sorted(DISPATCH))
def test_environment_variable_off_runs_the_reference_path(env, monkeypatch):
    sw = switch.get(env)
    for attr in ("enabled", "available", "device_type"):  # restored by monkeypatch after the test
        monkeypatch.setattr(sw, attr, getattr(sw, attr))
    sw.available, sw.device_type = True, "cpu"
    kernel, reference, call = DISPATCH[env](monkeypatch)

    monkeypatch.delenv(env, raising=False)
    sw.reset()
    call()
    assert kernel.calls == 1
    on_reference_calls = reference.calls if reference else 0

    monkeypatch.setenv(env, "0")
    sw.reset()
    assert not sw.enabled
    call()
    assert kernel.calls == 1  # not called again
    if reference is not None:
        assert reference.calls > on_reference_calls


def test_switches_are_read_from_the_environment_at_import():
    env = {**os.environ, "SANA_WM_FUSED_GDN": "0", "SANA_WM_FUSED_UCPE": "0", "SANA_WM_FUSED_PROLOGUE": "1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "sana_wm.ops"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    states = dict(re.findall(r"^(SANA_WM_\w+)=(on|off)", out, flags=re.M))
    assert states == {name: "off" if name in ("SANA_WM_FUSED_GDN", "SANA_WM_FUSED_UCPE") else "on"
                      for name in switch.SWITCHES}


def _records(caplog):
    return [r for r in caplog.records if r.name == "sana_wm.ops.switch"]


def _short_conv_without_triton(mp, cuda: bool) -> switch.KernelSwitch:
    """A fresh short-conv switch whose real kernel module cannot import Triton, on a machine with or without CUDA."""
    mp.setitem(sys.modules, "triton", None)
    mp.delitem(sys.modules, "sana_wm.ops.short_conv.triton_conv", raising=False)
    mp.setattr(torch.cuda, "is_available", lambda: cuda)
    return switch.KernelSwitch("SANA_WM_FUSED_SHORT_CONV", "bidirectional short conv")


def test_a_failed_triton_import_logs_exactly_one_warning(monkeypatch, caplog):
    sw = _short_conv_without_triton(monkeypatch, cuda=True)
    with caplog.at_level(logging.DEBUG, logger="sana_wm.ops.switch"):
        assert switch.load_kernels(short_conv._import_kernels, sw) is None
        for _ in range(3):  # falling back later logs nothing more
            assert not sw.use(torch.zeros(2))
    (record,) = _records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "Triton kernels unavailable, running the PyTorch path instead: bidirectional short conv "
        "(SANA_WM_FUSED_SHORT_CONV); import failed with ModuleNotFoundError: import of triton halted; None in "
        "sys.modules")
    assert not sw.available


def test_no_triton_on_a_cpu_machine_is_logged_at_debug_level(monkeypatch, caplog):
    sw = _short_conv_without_triton(monkeypatch, cuda=False)
    with caplog.at_level(logging.DEBUG, logger="sana_wm.ops.switch"):
        switch.load_kernels(short_conv._import_kernels, sw)
    assert [r.levelno for r in _records(caplog)] == [logging.DEBUG]


def test_a_broken_kernel_module_warns_even_without_cuda(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    first, second = switch.KernelSwitch("A", "first kernels"), switch.KernelSwitch("B", "second kernels")

    def broken():
        raise NameError("name 'tl' is not defined")

    with caplog.at_level(logging.DEBUG, logger="sana_wm.ops.switch"):
        assert switch.load_kernels(broken, first, second) is None
    (record,) = _records(caplog)
    assert record.levelno == logging.WARNING
    assert "first kernels (A), second kernels (B); import failed with NameError: name 'tl' is not defined" in (
        record.getMessage())


def test_a_successful_import_marks_every_switch_it_serves():
    first, second = switch.KernelSwitch("A", "first"), switch.KernelSwitch("B", "second")
    assert switch.load_kernels(lambda: ("k1", "k2"), first, second) == ("k1", "k2")
    assert first.available and second.available

