"""Fixtures of the inference and benchmark tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_module(monkeypatch):
    """`load("dit_step.py")` imports a `bench/` script as a module (the benchmarks themselves need a GPU; their helpers
    are tested here). For the test's duration bench/ is on sys.path (the scripts import their sibling `common`) and the
    module is in sys.modules (dataclasses look their module up there)."""

    def load(script: str):
        name = "bench_" + Path(script).stem
        spec = importlib.util.spec_from_file_location(name, BENCH / script)
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.syspath_prepend(str(BENCH))
        spec.loader.exec_module(mod)
        return mod

    return load
