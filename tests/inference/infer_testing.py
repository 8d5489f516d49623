"""Shared helper of the infer.py tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_infer():
    """infer.py lives at the repository root, which need not be on sys.path under every pytest invocation."""
    if "infer" in sys.modules:
        return sys.modules["infer"]
    spec = importlib.util.spec_from_file_location("infer", REPO / "infer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["infer"] = module
    spec.loader.exec_module(module)
    return module
