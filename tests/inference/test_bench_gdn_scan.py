"""bench/gdn_scan.py's fla baseline, the parts that run without a GPU: the token layout, the two-way run, and the
reason given where fla's chunk kernel cannot load."""

from __future__ import annotations

import torch


def test_token_inputs_put_frames_as_runs_of_tokens_and_the_decay_on_each_frame_start(bench_module):
    bench = bench_module("gdn_scan.py")
    B, T, S, H, D = 1, 3, 2, 2, 4
    q = torch.arange(B * T * S * H * D, dtype=torch.float32).reshape(B, T, S, H, D)
    beta = torch.arange(B * T * S * H, dtype=torch.float32).reshape(B, T, S, H)
    g = torch.tensor([[[0.5, 0.25], [1.0, 0.5], [0.125, 1.0]]])  # [B, T, H]
    tq, tk, tv, tb, log_g = bench.fla_token_inputs(q, q, q, beta, g)
    assert tq.shape == (B, T * S, H, D) and tb.shape == log_g.shape == (B, T * S, H)
    assert torch.equal(tq[0, 3], q[0, 1, 1])  # token t·S + s is frame t's token s
    assert torch.equal(tb[0, 5], beta[0, 2, 1])
    ln2 = torch.log(torch.tensor(2.0)).item()
    want = torch.tensor([[-ln2, -2 * ln2], [0, 0], [0, -ln2], [0, 0], [-3 * ln2, 0], [0, 0]])
    torch.testing.assert_close(log_g[0], want, rtol=0, atol=1e-6)


def test_token_bidirectional_sums_a_forward_and_a_time_reversed_run(bench_module):
    bench = bench_module("gdn_scan.py")
    calls = []

    def kernel(*, q, k, v, g, beta, scale):  # keyword-only: both fla signatures (chunked, reference) take these
        calls.append((q.clone(), g.clone(), scale))
        return q.cumsum(1), None  # a causal scan along the tokens

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 2, 3, generator=gen) for _ in range(3))
    beta, log_g = torch.rand(1, 5, 2, generator=gen), -torch.rand(1, 5, 2, generator=gen)
    out = bench.token_bidirectional(kernel, q, k, v, beta, log_g)
    assert len(calls) == 2 and all(c[2] == 1.0 for c in calls)
    assert torch.equal(calls[1][0], q.flip(1)) and torch.equal(calls[1][1], log_g.flip(1))
    # inclusive prefix + inclusive suffix, back in the original order: every token sees all, itself twice
    torch.testing.assert_close(out, q.sum(1, keepdim=True) + q, rtol=1e-6, atol=1e-6)


def test_missing_fla_kernel_is_reported_not_raised(bench_module, monkeypatch):
    import sys

    bench = bench_module("gdn_scan.py")
    monkeypatch.setitem(sys.modules, "fla.ops.gated_delta_rule", None)
    kernel, why = bench.fla_chunk_kernel()
    assert kernel is None and why == ("ModuleNotFoundError: import of fla.ops.gated_delta_rule halted; None in "
                                      "sys.modules")
