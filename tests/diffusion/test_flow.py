"""Tests for sana_wm.diffusion.flow (interpolation, target, loss) and .timesteps (σ schedules)."""

from __future__ import annotations

import pytest
import torch

from sana_wm.diffusion.flow import flow_loss, interpolate, shift_sigma, velocity_target
from sana_wm.diffusion.timesteps import (
    apply_image_condition,
    inference_sigmas,
    sample_training_sigmas,
    sigma_to_timestep,
)

# The 61 σ values of diffusers' FlowMatchEulerDiscreteScheduler(shift=9.8), 60 steps (6 decimals), read from the
# scheduler itself (docs/design/diffusion.md §4).
PORT_SIGMAS_9P8_60 = [
    1.000000,
    0.998261,
    0.996468,
    0.994619,
    0.992710,
    0.990739,
    0.988702,
    0.986597,
    0.984420,
    0.982167,
    0.979833,
    0.977416,
    0.974910,
    0.972309,
    0.969610,
    0.966805,
    0.963888,
    0.960854,
    0.957694,
    0.954401,
    0.950965,
    0.947378,
    0.943629,
    0.939707,
    0.935600,
    0.931295,
    0.926775,
    0.922027,
    0.917030,
    0.911766,
    0.906213,
    0.900345,
    0.894135,
    0.887553,
    0.880564,
    0.873130,
    0.865205,
    0.856740,
    0.847678,
    0.837954,
    0.827491,
    0.816203,
    0.803988,
    0.790726,
    0.776277,
    0.760475,
    0.743120,
    0.723971,
    0.702735,
    0.679051,
    0.652469,
    0.622424,
    0.588191,
    0.548829,
    0.503092,
    0.449295,
    0.385102,
    0.307176,
    0.210584,
    0.087705,
    0.0,
]


# ---------------------------------------------------------------------------------------------- flow


def test_shift_sigma_endpoints_identity_and_reference_examples():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(shift_sigma(s, 1.0), s)
    out = shift_sigma(s, 9.95)
    assert out[0] == 0 and out[-1] == 1 and bool((out[1:] > out[:-1]).all())
    # docs/design/diffusion.md §2: u = 0.25 / 0.5 / 0.75 → σ′ ≈ 0.768 / 0.909 / 0.968 for s = 9.95.
    got = [shift_sigma(u, 9.95) for u in (0.25, 0.5, 0.75)]
    assert got == pytest.approx([0.768, 0.909, 0.968], abs=1e-3)
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(0.5, 0.0)


def test_interpolate_endpoints_and_per_frame_broadcast():
    x0, eps = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 5, 6)
    assert torch.equal(interpolate(x0, eps, 0.0), x0)
    assert torch.equal(interpolate(x0, eps, torch.ones(2)), eps)
    sig = torch.tensor([[0.0, 0.25, 0.5, 1.0], [1.0, 0.0, 0.75, 0.1]])
    xt = interpolate(x0, eps, sig)
    for b in range(2):
        for t in range(4):
            s = sig[b, t]
            assert torch.allclose(xt[b, :, t], (1 - s) * x0[b, :, t] + s * eps[b, :, t])
    assert torch.equal(interpolate(x0, eps, sig.view(2, 1, 4, 1, 1)), xt)
    per_sample = interpolate(x0, eps, torch.tensor([0.3, 0.7]))
    assert torch.allclose(per_sample[1], 0.3 * x0[1] + 0.7 * eps[1])
    with pytest.raises(ValueError, match=r"\(2, 4\) per frame"):
        interpolate(x0, eps, torch.zeros(2, 5))


def test_velocity_target_is_the_sigma_derivative_of_the_path():
    x0, eps = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64), torch.randn(1, 2, 3, 4, 4, dtype=torch.float64)
    h, s = 1e-6, 0.37
    fd = (interpolate(x0, eps, s + h) - interpolate(x0, eps, s - h)) / (2 * h)
    assert torch.allclose(fd, velocity_target(x0, eps), atol=1e-8)


def test_flow_loss_plain_and_masked_normalisation():
    pred, tgt = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    assert torch.allclose(flow_loss(pred, tgt), torch.nn.functional.mse_loss(pred, tgt))
    # Frame 0 of sample 0 is excluded: the loss is the mean over exactly the other elements.
    mask = torch.ones(2, 4)
    mask[0, 0] = 0
    err = (pred - tgt).square()
    kept = torch.cat([err[0, :, 1:].flatten(), err[1].flatten()])
    assert torch.allclose(flow_loss(pred, tgt, mask), kept.mean())
    assert torch.allclose(flow_loss(pred, tgt, mask.view(2, 1, 4, 1, 1)), kept.mean())
    # A huge error on a masked frame has no influence.
    pred2 = pred.clone()
    pred2[0, :, 0] += 1e6
    assert torch.allclose(flow_loss(pred2, tgt, mask), kept.mean())


def test_flow_loss_all_masked_is_zero_with_finite_grad():
    pred = torch.randn(1, 2, 2, 3, 3, requires_grad=True)
    loss = flow_loss(pred, torch.zeros_like(pred), torch.zeros(1, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
    with pytest.raises(ValueError, match="must match"):
        flow_loss(pred, torch.zeros(1, 2, 2, 3, 4))


# ---------------------------------------------------------------------------------- training sigmas


def test_training_sigmas_lie_on_the_shifted_table_and_follow_logit_normal():
    g = torch.Generator().manual_seed(1)
    s = sample_training_sigmas(4000, 3, shift=9.95, generator=g)
    assert s.shape == (4000, 3) and s.dtype == torch.float32
    assert bool((s[:, :1] == s).all()), "per_frame=False must give one σ per sample"
    assert bool((s >= 0).all()) and bool((s < 1).all())
    table = shift_sigma(torch.arange(1000, dtype=torch.float64) / 1000, 9.95).float()
    assert torch.isin(s, table).all()
    # Median of u = sigmoid(N(0,1)) is 0.5 → median σ′ = shift(0.5) ≈ 0.909; the lower quartile
    # u ≈ sigmoid(-0.674) = 0.338 → σ′ ≈ 0.836.
    q = torch.quantile(s[:, 0].double(), torch.tensor([0.25, 0.5], dtype=torch.float64))
    assert q[1].item() == pytest.approx(0.909, abs=0.01)
    assert q[0].item() == pytest.approx(shift_sigma(0.338, 9.95), abs=0.015)


def test_training_sigmas_per_frame_seeded_and_uniform_scheme():
    a = sample_training_sigmas(3, 5, per_frame=True, generator=torch.Generator().manual_seed(7))
    b = sample_training_sigmas(3, 5, per_frame=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not bool((a[:, :1] == a).all()), "per_frame=True must draw frames independently"
    u = sample_training_sigmas(
        5000, 1, shift=1.0, scheme="uniform", generator=torch.Generator().manual_seed(0)
    )
    assert u.mean().item() == pytest.approx(0.4995, abs=0.02)
    assert torch.equal(sigma_to_timestep(torch.tensor([0.5])), torch.tensor([500.0]))
    with pytest.raises(ValueError, match="scheme"):
        sample_training_sigmas(1, 1, scheme="cosine")


def test_apply_image_condition():
    s = torch.full((2000, 3), 0.8)
    s_all, m_all = apply_image_condition(s, 1.0)
    assert bool((s_all[:, 0] == 0).all()) and bool((s_all[:, 1:] == 0.8).all())
    assert bool((m_all[:, 0] == 0).all()) and bool((m_all[:, 1:] == 1).all())
    assert bool((s == 0.8).all()), "input must not be modified"
    s_none, m_none = apply_image_condition(s, 0.0)
    assert torch.equal(s_none, s) and bool((m_none == 1).all())
    s_p, m_p = apply_image_condition(s, 0.9, generator=torch.Generator().manual_seed(3))
    frac = (s_p[:, 0] == 0).float().mean().item()
    assert frac == pytest.approx(0.9, abs=0.03)
    assert torch.equal(s_p[:, 0] == 0, m_p[:, 0] == 0)
    with pytest.raises(ValueError, match="prob"):
        apply_image_condition(s, 1.5)


# --------------------------------------------------------------------------------- inference sigmas


@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0, 9.8])
@pytest.mark.parametrize("steps", [1, 2, 7, 60])
def test_inference_sigmas_match_diffusers_scheduler_bit_for_bit(shift, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    ours = inference_sigmas(steps, shift)
    assert ours.dtype == torch.float64 and ours.shape == (steps + 1,)
    assert torch.equal(ours.float(), sched.sigmas)
    assert torch.equal((ours[:-1].float() * 1000), sched.timesteps)


def test_inference_sigmas_match_port_check_literal_list():
    ours = inference_sigmas(60, 9.8)
    assert torch.allclose(ours, torch.tensor(PORT_SIGMAS_9P8_60, dtype=torch.float64), atol=1e-6, rtol=0)
    # The low end is shifted twice (σ_min = shift(shift(0.001)) ≈ 0.0877), not shift(0.001) ≈ 0.0097.
    assert ours[-2].item() == pytest.approx(shift_sigma(shift_sigma(0.001, 9.8), 9.8), rel=1e-6)
    assert inference_sigmas(60, 8.0)[-2].item() == pytest.approx(0.060207, abs=1e-6)
    # Integers the DiT embeds after truncating float32 1000·σ (the port's: ..., 307, 210, 87).
    assert (ours[:-1].float() * 1000).long()[-3:].tolist() == [307, 210, 87]


def test_inference_sigmas_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        inference_sigmas(0, 9.8)
    with pytest.raises(ValueError, match="shift"):
        inference_sigmas(10, -1.0)
