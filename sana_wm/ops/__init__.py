"""Stateless numerical kernels used by the SANA-WM layers (no parameters, no model imports)."""
