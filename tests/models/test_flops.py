"""The FLOP model reproduces the hand derivation of docs/design/flops.md."""

from sana_wm import SanaWMConfig
from sana_wm.models.flops import mfu, model_flops


def test_flops_at_161_frames_match_the_performance_model():
    f = model_flops(SanaWMConfig(), (21, 22, 40))
    N, C = 18480, 2240
    # Linear term: 2·N·24·C² per block (24 C² per token, output gate included; docs/design/flops.md §2).
    assert abs(f.linear - 2 * N * 24 * C * C * 20) / f.linear < 0.02
    assert abs(f.softmax - 0.031e15) / 0.031e15 < 0.03  # b = 2 branches, C′ = 2240
    assert f.gdn < 0.03 * f.linear  # "<3% of F_lin"
    train = model_flops(SanaWMConfig(), (21, 22, 40), training=True)
    assert abs(train.total - 3 * f.total) < 1e-6 * f.total
    assert abs(mfu(989.4e12, 1.0) - 1.0) < 1e-12


def test_softmax_share_grows_quadratically():
    short = model_flops(SanaWMConfig(), (21, 22, 40))
    long = model_flops(SanaWMConfig(), (121, 22, 40))
    assert abs(long.softmax / short.softmax - (121 / 21) ** 2) < 1e-6
    assert abs(long.softmax - 1.016e15) / 1.016e15 < 0.03  # docs/design/flops.md §3, 961 frames
