"""bench/dit_step.py's switch between our compiled and eager model (the benchmark itself needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from sana_wm import SanaWM


def test_set_compiled_compiles_the_prologue_and_final_layer_and_undoes_them(bench_module):
    """Compiled timings must include the compiled prologue (`apply_compile`), and the eager timings after them must
    be eager again: blocks, `embed` and the final layer. torch.compile is lazy, so nothing compiles here."""
    bench = bench_module("dit_step.py")
    model = SanaWM.from_preset("tiny")
    plain = list(model.blocks)
    for _ in range(2):  # back and forth twice: nothing is left wrapped or marked
        bench.set_compiled(model, plain, True)
        assert list(model.blocks) == plain and all("forward" in vars(b) for b in model.blocks)
        assert "embed" in vars(model) and "forward" in vars(model.final_layer)
        bench.set_compiled(model, plain, False)
        assert list(model.blocks) == plain and "embed" not in vars(model)
        assert all("forward" not in vars(m) for m in (*model.blocks, model.final_layer))


def test_resident_gib_counts_parameters_buffers_and_gradients(bench_module):
    """The other model's share subtracted from a peak measured with both models in one process."""
    bench = bench_module("dit_step.py")
    lin = torch.nn.Linear(256, 1024)  # 263 168 float32 values
    lin.register_buffer("table", torch.zeros(1024, dtype=torch.bfloat16))
    params = (256 * 1024 + 1024) * 4 / 2**30
    assert bench.resident_gib(None) == 0.0
    assert abs(bench.resident_gib(lin) - params - 2048 / 2**30) < 1e-12
    lin(torch.randn(3, 256)).sum().backward()
    assert abs(bench.resident_gib(lin) - 2 * params - 2048 / 2**30) < 1e-12


def test_memory_cap_is_a_fraction_of_the_card_and_names_a_bad_cap(bench_module):
    bench = bench_module("dit_step.py")
    assert bench.memory_fraction(79.0, 158 * 2**30) == 0.5
    for bad in (0.0, -1.0, 200.0):
        with pytest.raises(ValueError, match=rf"--cap-gib {bad}: must be positive and at most this card's 158.0 GiB"):
            bench.memory_fraction(bad, 158 * 2**30)
