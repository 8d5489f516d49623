"""bench/fp8.py's CPU-runnable parts: the synthetic-world latents, the training loop of --loss-curve (bf16 and
float8-emulated), and the summary and plot it writes. The timings need a GPU of compute capability 8.9+."""

from __future__ import annotations

import pytest
import torch
from PIL import Image


@pytest.mark.slow  # renders, encodes and trains three times on CPU: ~15 s on an idle 2-core box
def test_loss_curve_pieces_run_and_the_summary_compares_like_with_like(bench_module, tmp_path):
    pytest.importorskip("torchao")
    mod = bench_module("fp8.py")
    data = mod.synthetic_world(2, "cpu", num_frames=9)
    assert list(data["latent"].shape) == [2, 16, 2, 8, 14]
    assert list(data["cc"].shape) == [2, 2, 20] and list(data["pl"].shape) == [2, 48, 2, 8, 14]
    mean, std = data["latent"].mean((0, 2, 3, 4)), data["latent"].std((0, 2, 3, 4))
    torch.testing.assert_close(mean, torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(16), atol=1e-5, rtol=0)
    # A 4 × 6 corner of the latents (and of their Plücker maps) keeps the CPU steps short.
    data = {**data, "latent": data["latent"][..., :4, :6], "pl": data["pl"][..., :4, :6]}
    plain = mod.train_curve(data, "tiny", 1, 1, 3e-4, 0, None)
    again = mod.train_curve(data, "tiny", 1, 1, 3e-4, 0, None)
    fp8 = mod.train_curve(data, "tiny", 1, 1, 3e-4, 0, "tensorwise", emulate=True)
    assert plain == again  # same seed: same weights, batches and noise
    assert plain[0] != fp8[0] and abs(fp8[0] - plain[0]) < 0.05 * plain[0]  # only the float8 rounding differs

    curves = {"bf16": [2.0] * 10 + [1.0] * 10, "fp8": [2.0] * 10 + [1.1] * 10, "bf16_other_seed": [0.9] * 20}
    summary = mod.curve_summary(curves, tail=10)
    assert summary["final_bf16"] == 1.0 and summary["final_fp8"] == pytest.approx(1.1)
    assert summary["final_rel_diff_fp8"] == pytest.approx(0.1)
    assert summary["final_rel_diff_other_seed"] == pytest.approx(-0.1)
    assert mod.smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    mod.plot_curves(str(tmp_path / "c.png"), curves, 5, "test")
    assert Image.open(tmp_path / "c.png").size == (900, 540)
    # --emulate's runs are named after float32, the CPU's base precision.
    cpu = {k.replace("bf16", "fp32"): v for k, v in curves.items()}
    assert mod.curve_summary(cpu, tail=10, base="fp32") == {k.replace("bf16", "fp32"): v for k, v in summary.items()}
    mod.plot_curves(str(tmp_path / "d.png"), cpu, 5, "test", base="fp32")


def test_bad_recipe_and_a_missing_gpu_are_refused(bench_module, capsys):
    mod = bench_module("fp8.py")
    with pytest.raises(SystemExit):
        mod.parse_args(["--train-recipes", "blockwise"])
    if not torch.cuda.is_available():
        assert mod.main(["--loss-curve", "3"]) == 2
        assert "compute capability 8.9 or newer" in capsys.readouterr().out
    assert mod.main(["--emulate"]) == 2  # emulation has no speed to measure
    assert "--emulate is for --loss-curve" in capsys.readouterr().out
