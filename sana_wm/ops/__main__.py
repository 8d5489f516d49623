"""`python -m sana_wm.ops`: each kernel switch (`sana_wm.ops.switch`), on or off, and whether its kernels imported."""

import importlib

from sana_wm.ops.switch import SWITCHES

for package in ("gdn", "short_conv", "qk_prologue", "ucpe", "glu_conv"):  # each loads its kernels on import
    importlib.import_module(f"sana_wm.ops.{package}")
for switch in SWITCHES.values():
    print(f"{switch!r:60s} {switch.kernels}")
