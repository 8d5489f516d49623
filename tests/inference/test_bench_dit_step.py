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


def test_cp1_table_and_gradient_difference(bench_module):
    bench = bench_module("dit_step.py")
    rows = {"cp1_rows": [{"case": "fwd21 (B=1), eager", "plain_ms": 368.3, "cp_ms": 368.9},
                         {"case": "train21 step (ffn AC, compiled)", "plain_ms": 913.9, "cp_ms": 905.0}]}
    assert bench.cp1_table(rows).splitlines() == [
        "| case | plain ms | CP path at cp_size 1, ms | overhead |", "|---|---|---|---|",
        "| fwd21 (B=1), eager | 368.3 | 368.9 | +0.16 % |", "| train21 step (ffn AC, compiled) | 913.9 | 905.0 | -0.97 % |"]
    a = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0])}
    assert bench.max_rel_diff(a, {"w": torch.tensor([3.0, 4.5]), "b": torch.tensor([1.0])}) == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(ValueError, match=r"different tensor names: \['b'\]"):
        bench.max_rel_diff(a, {"w": a["w"]})


CP1_PAIR = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, "bench")
import dit_step
from sana_wm import SanaWM
from sana_wm.context_parallel import context_parallel_of

dist.init_process_group("gloo")
torch.manual_seed(0)
model = SanaWM.from_preset("tiny", reference_numerics=False)
with torch.no_grad():  # the released initialisation zeroes the camera branch's output and the temporal conv
    for p in model.parameters():
        p.add_(torch.randn(p.shape) * 0.05)
plain, cp = dit_step.cp1_pair(model, dist.group.WORLD, "full", False)
assert plain is model and context_parallel_of(plain) is None and context_parallel_of(cp).size == 1
assert all(hasattr(b, "_checkpoint_wrapped_module") for m in (plain, cp) for b in m.blocks)
inp = dit_step.make_inputs(1, 5, torch.float32, hw=(4, 6), text=9, in_channels=16, caption_channels=32, device="cpu")
grads = []
for m in (plain, cp):
    dit_step.train_step(m, inp, False)()
    grads.append({n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in m.named_parameters()
                  if p.grad is not None})
print("CP1-PAIR", len(grads[0]), dit_step.max_rel_diff(*grads))
dist.destroy_process_group()
"""


def test_cp1_pair_is_the_plain_model_with_the_cp_path_forced(bench_module):
    """The cp1 case's two models (CPU, tiny, one-rank gloo group, eager with full checkpointing as without
    --compile): both checkpointed, CP installed on the copy only, and the same gradients on the bench's inputs."""
    from sana_wm.testing.training import run_in_process_group

    r = run_in_process_group(["-c", CP1_PAIR], timeout=300)
    assert r.returncode == 0 and "CP1-PAIR" in r.stdout, (r.stdout + r.stderr)[-4000:]
    assert r.stdout.split("CP1-PAIR", 1)[1].split() == ["178", "0.0"]
