"""Tests for sana_wm.diffusion.samplers: Euler / DPM-Solver++ with oracle velocity fields, frame-0
conditioning, agreement with the diffusers per-token Euler path, and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

from sana_wm.diffusion.samplers import CFGDenoiser, dpm_solver_pp, flow_euler, guidance_combine
from sana_wm.diffusion.timesteps import inference_sigmas

SAMPLERS = [flow_euler, dpm_solver_pp]
SHAPE = (2, 3, 4, 5, 6)  # (B, C, T, H, W)


def _sigma_of(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, T) timesteps → σ broadcastable over x (B, C, T, H, W)."""
    return (t.to(x.dtype) / 1000).view(x.shape[0], 1, x.shape[2], 1, 1)


def _point_mass_oracle(mu: torch.Tensor):
    """Exact velocity when the data distribution is a single point μ: v = (x − μ)/σ."""
    return lambda x, t: (x - mu) / _sigma_of(t, x)


def _gaussian_oracle(mu: torch.Tensor, sd: torch.Tensor):
    """Exact velocity for x₀ ~ N(μ, sd²) per element: v = E[ε|x] − E[x₀|x]."""

    def den(x, t):
        s = _sigma_of(t, x)
        a = 1 - s
        var = a * a * sd * sd + s * s
        r = x - a * mu
        return s / var * r - (mu + a * sd * sd / var * r)

    return den


def _gaussian_ode_solution(mu, sd, eps, sigma):
    """The probability-flow ODE maps ε (at σ = 1) to (1 − σ)μ + sqrt((1 − σ)²sd² + σ²)·ε."""
    return (1 - sigma) * mu + ((1 - sigma) ** 2 * sd * sd + sigma**2) ** 0.5 * eps


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps, shift", [(3, 1.0), (60, 9.8)])
def test_point_mass_is_recovered(sampler, steps, shift):
    # Flow trajectories towards a point mass are straight lines, so both solvers are exact.
    g = torch.Generator().manual_seed(0)
    mu, eps = (
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
    )
    out = sampler(_point_mass_oracle(mu), eps, inference_sigmas(steps, shift), progress=False)
    assert out.dtype == torch.float64
    assert torch.allclose(out, mu, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_gaussian_target_converges_to_the_ode_solution(sampler):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    sd = torch.rand(SHAPE, generator=g, dtype=torch.float64) + 0.5
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    out = sampler(_gaussian_oracle(mu, sd), eps, inference_sigmas(120, 1.0), progress=False)
    assert (out - (mu + sd * eps)).abs().max().item() < 0.06


def test_dpm_solver_pp_beats_euler_and_is_second_order():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    sd = torch.rand(SHAPE, generator=g, dtype=torch.float64) + 0.5
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    den = _gaussian_oracle(mu, sd)
    errs = {}
    for n in (8, 16, 32):
        # Stop at σ = 0.05 so the error measures ODE integration, not the final jump to σ = 0.
        sig = torch.linspace(1.0, 0.05, n + 1, dtype=torch.float64)
        exact = _gaussian_ode_solution(mu, sd, eps, 0.05)
        errs[n] = [
            (s(den, eps, sig, progress=False) - exact).abs().max().item() for s in (flow_euler, dpm_solver_pp)
        ]
    assert errs[8][1] < 0.3 * errs[8][0], errs
    # Halving the step: Euler's error halves (order 1), DPM-Solver++(2M)'s drops about 4× (order 2).
    assert 1.6 < errs[16][0] / errs[32][0] < 2.4, errs
    assert errs[16][1] / errs[32][1] > 3.0, errs


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_condition_frame_is_bit_identical_and_gets_timestep_zero(sampler):
    g = torch.Generator().manual_seed(3)
    mu, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    cond = torch.randn(SHAPE[0], SHAPE[1], 1, *SHAPE[3:], generator=g)
    sigmas = inference_sigmas(6, 9.8)
    calls = []

    def den(x, t):
        calls.append((x.clone(), t.clone()))
        v = (x - mu) / _sigma_of(t, x)  # division by σ = 0 makes frame 0's velocity inf/NaN
        assert not torch.isfinite(v[:, :, 0]).all()
        return v

    eps_before = eps.clone()
    out = sampler(den, eps, sigmas, condition_latent=cond, progress=False)
    assert torch.equal(eps, eps_before), "the noise tensor must not be modified in place"
    assert torch.equal(calls[0][0][:, :, 1:], eps[:, :, 1:])
    assert len(calls) == 6
    for i, (x, t) in enumerate(calls):
        assert t.shape == (2, 4) and t.dtype == torch.float32
        assert bool((t[:, 0] == 0).all())
        assert bool((t[:, 1:] == sigmas[i].float() * 1000).all())
        assert torch.equal(x[:, :, :1], cond)
    assert torch.equal(out[:, :, :1], cond)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :, 1:], mu[:, :, 1:], atol=1e-4)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_state_keeps_noise_dtype(sampler):
    eps = torch.randn(1, 2, 3, 2, 2).to(torch.bfloat16)
    out = sampler(lambda x, t: torch.zeros_like(x), eps, inference_sigmas(2, 3.0), progress=False)
    assert out.dtype == torch.bfloat16


def test_flow_euler_matches_diffusers_per_token_scheduler_loop():
    """Replays the port's stage-1 loop (FlowMatchEulerDiscreteScheduler.step with per-token
    timesteps, the sign-flipped velocity and the condition-frame mask) with a nonlinear denoiser."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(4)
    B, C, T, H, W = SHAPE
    eps, cond = torch.randn(SHAPE, generator=g), torch.randn(B, C, 1, H, W, generator=g)
    a = torch.randn(C, generator=g).view(1, C, 1, 1, 1)

    def den(x, t):
        return torch.tanh(a * x) + 0.3 * torch.sin(t.view(B, 1, T, 1, 1) / 100.0) * x

    steps, shift = 8, 9.8
    ours = flow_euler(den, eps, inference_sigmas(steps, shift), condition_latent=cond, progress=False)

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    latents = eps.clone()
    latents[:, :, :1] = cond
    mask = torch.zeros_like(latents)
    mask[:, :, :1] = 1.0
    for t in sched.timesteps:
        ts = torch.minimum(t.expand(mask.shape).float(), (1.0 - mask) * 1000.0)
        v = den(latents, ts[:, 0, :, 0, 0])
        new = sched.step(
            -v.reshape(B, C, -1).transpose(1, 2),
            t,
            latents.reshape(B, C, -1).transpose(1, 2),
            per_token_timesteps=ts.reshape(B, C, -1)[:, 0],
            return_dict=False,
        )[0]
        new = new.transpose(1, 2).reshape(SHAPE)
        latents = torch.where(t / 1000.0 - 1e-6 < (1.0 - mask), new, latents)
    assert torch.allclose(ours, latents, atol=2e-5, rtol=0)
    assert torch.equal(ours[:, :, :1], latents[:, :, :1])


def test_sampler_input_validation():
    eps = torch.randn(1, 2, 3, 2, 2)
    den = lambda x, t: x
    with pytest.raises(ValueError, match="decrease"):
        flow_euler(den, eps, torch.tensor([0.5, 0.8, 0.0]), progress=False)
    with pytest.raises(ValueError, match="condition_latent"):
        flow_euler(
            den, eps, inference_sigmas(2, 1.0), condition_latent=torch.zeros(1, 2, 1, 3, 2), progress=False
        )
    with pytest.raises(ValueError, match="denoise returned shape"):
        dpm_solver_pp(lambda x, t: x[:, :1], eps, inference_sigmas(2, 1.0), progress=False)


def test_progress_bar_path_runs():
    eps = torch.randn(1, 1, 2, 1, 1)
    out = flow_euler(lambda x, t: torch.zeros_like(x), eps, inference_sigmas(2, 1.0), progress=True)
    assert torch.equal(out, eps)


# ------------------------------------------------------------------------------------------- CFG


def test_cfg_batches_uncond_then_cond_and_combines():
    B, L, D = 2, 3, 4
    y_c, y_u = torch.randn(B, L, D), torch.randn(B, L, D)
    m_c, m_u = torch.ones(B, L, dtype=torch.bool), torch.zeros(B, L, dtype=torch.bool)
    cam = torch.randn(B, 5, 20)
    seen = []

    def model_fn(x, t, y, mask, camera, flag):
        seen.append((x.shape[0], t.shape, y, mask, camera, flag))
        # A velocity that depends on the text, so the two halves differ.
        return x * y.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + t.mean()

    x, t = torch.randn(B, 2, 3, 2, 2), torch.full((B, 3), 500.0)
    den = CFGDenoiser(
        model_fn,
        5.0,
        cond={"y": y_c, "mask": m_c},
        uncond={"y": y_u, "mask": m_u},
        shared={"camera": cam, "flag": "x"},
    )
    v = den(x, t)
    (nb, tshape, y, mask, camera, flag) = seen[-1]
    assert nb == 2 * B and tshape == (2 * B, 3) and flag == "x"
    assert torch.equal(y[:B], y_u) and torch.equal(y[B:], y_c)
    assert torch.equal(mask[:B], m_u) and torch.equal(mask[B:], m_c)
    assert torch.equal(camera[:B], cam) and torch.equal(camera[B:], cam)
    v_u = model_fn(x, t, y_u, m_u, cam, "x")
    v_c = model_fn(x, t, y_c, m_c, cam, "x")
    assert torch.allclose(v, v_u + 5.0 * (v_c - v_u))
    assert torch.equal(guidance_combine(v_u, v_c, 1.0), v_c)


def _text_camera_model(x, t, y, camera, flag):
    # a velocity that depends non-linearly on text and camera, so every branch differs from the others
    return x * y.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + torch.tanh(camera).sum(dim=(1, 2)).view(-1, 1, 1, 1, 1) ** 2


@pytest.mark.parametrize("text_scale, camera_scale, batches", [(1.0, 2.5, 2), (4.0, 1.0, 2), (4.0, 2.5, 3),
                                                               (1.0, 0.0, 2)])
def test_camera_guidance_combines_each_condition_around_the_conditional(text_scale, camera_scale, batches):
    """v = v_c + (s − 1)(v_c − v_u) + (s_cam − 1)(v_c − v_still), in float64 from separate calls; one batched call
    of [uncond, cond, still] (the branches in use)."""
    torch.manual_seed(0)
    B = 2
    y_c, y_u = torch.randn(B, 3, 4, dtype=torch.float64), torch.randn(B, 3, 4, dtype=torch.float64)
    cam, still = torch.randn(B, 5, 20, dtype=torch.float64), torch.randn(B, 5, 20, dtype=torch.float64)
    x, t = torch.randn(B, 2, 3, 2, 2, dtype=torch.float64), torch.full((B, 3), 500.0, dtype=torch.float64)
    seen = []

    def model_fn(x, t, y, camera, flag):
        seen.append((x.shape[0], y, camera))
        return _text_camera_model(x, t, y, camera, flag)

    den = CFGDenoiser(model_fn, text_scale, cond={"y": y_c}, uncond={"y": y_u}, shared={"camera": cam, "flag": "x"},
                      camera_scale=camera_scale, camera_uncond={"camera": still})
    assert den.uses_guidance
    v = den(x, t)
    assert len(seen) == 1 and seen[0][0] == batches * B
    v_c = _text_camera_model(x, t, y_c, cam, "x")
    v_u = _text_camera_model(x, t, y_u, cam, "x")
    v_still = _text_camera_model(x, t, y_c, still, "x")
    expected = v_c + (text_scale - 1) * (v_c - v_u) + (camera_scale - 1) * (v_c - v_still)
    torch.testing.assert_close(v, expected, rtol=1e-12, atol=1e-12)
    # the still branch carries the conditional text and the still camera; the text branch the commanded camera
    _, y, camera = seen[0]
    assert torch.equal(y[-B:], y_c) and torch.equal(camera[-B:], still if camera_scale != 1.0 else cam)
    if text_scale != 1.0:
        assert torch.equal(y[:B], y_u) and torch.equal(camera[:B], cam)
    if camera_scale == 0.0:  # s_cam = 0 is the still camera's prediction
        torch.testing.assert_close(v, v_still, rtol=1e-12, atol=1e-12)


def test_camera_guidance_of_a_still_command_changes_nothing():
    """When the commanded camera is the still one, the camera term vanishes: the same velocity as text CFG alone."""
    B = 2
    y_c, y_u = torch.randn(B, 3, 4), torch.randn(B, 3, 4)
    cam = torch.randn(B, 5, 20)
    x, t = torch.randn(B, 2, 3, 2, 2), torch.full((B, 3), 500.0)
    plain = CFGDenoiser(_text_camera_model, 3.0, cond={"y": y_c}, uncond={"y": y_u}, shared={"camera": cam,
                                                                                            "flag": "x"})
    guided = CFGDenoiser(_text_camera_model, 3.0, cond={"y": y_c}, uncond={"y": y_u},
                         shared={"camera": cam, "flag": "x"}, camera_scale=4.0, camera_uncond={"camera": cam.clone()})
    torch.testing.assert_close(guided(x, t), plain(x, t), rtol=1e-5, atol=1e-5)


def test_camera_guidance_rejects_bad_settings():
    y = torch.ones(2, 1, 1)
    cam = torch.zeros(2, 5, 20)

    def model_fn(x, t, y, camera):
        return x

    with pytest.raises(ValueError, match="needs camera_uncond"):
        CFGDenoiser(model_fn, 1.0, cond={"y": y}, shared={"camera": cam}, camera_scale=2.0)
    with pytest.raises(ValueError, match=r"camera_uncond keys \['cam'\] are not keys of shared \['camera'\]"):
        CFGDenoiser(model_fn, 1.0, cond={"y": y}, shared={"camera": cam}, camera_scale=2.0,
                    camera_uncond={"cam": cam})
    with pytest.raises(ValueError, match=r"shared\['camera'\] and camera_uncond\['camera'\] must be tensors of the "
                                         r"same shape"):
        CFGDenoiser(model_fn, 1.0, cond={"y": y}, shared={"camera": cam}, camera_scale=2.0,
                    camera_uncond={"camera": torch.zeros(2, 4, 20)})
    with pytest.raises(ValueError, match="camera_scale must be a finite number; got nan"):
        CFGDenoiser(model_fn, 1.0, cond={"y": y}, shared={"camera": cam}, camera_scale=float("nan"),
                    camera_uncond={"camera": cam})
    # a differing keyword without the batch on dim 0 cannot be split into branches
    den = CFGDenoiser(model_fn, 1.0, cond={"y": y}, shared={"camera": torch.zeros(5, 20)}, camera_scale=2.0,
                      camera_uncond={"camera": torch.ones(5, 20)})
    with pytest.raises(ValueError, match=r"must be a tensor with the batch \(2\) on dim 0; got torch.Size\(\[5, 20\]\)"):
        den(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2, 1))


def test_cfg_scale_one_is_a_single_conditional_call():
    calls = []

    def model_fn(x, t, y):
        calls.append(x.shape[0])
        return x + y.sum()

    x, t = torch.randn(2, 1, 2, 1, 1), torch.zeros(2, 2)
    y_c = torch.ones(2, 1, 1)
    den = CFGDenoiser(model_fn, 1.0, cond={"y": y_c}, uncond={"y": torch.zeros(2, 1, 1)})
    assert not den.uses_guidance
    assert torch.equal(den(x, t), x + 2.0) and calls == [2]
    with pytest.raises(ValueError, match="same keys"):
        CFGDenoiser(model_fn, 3.0, cond={"y": y_c}, uncond={"z": y_c})
    with pytest.raises(ValueError, match=r"cond\['y'\] and uncond\['y'\] must be tensors of the same shape, got "
                                         r"torch.Size\(\[2, 1, 1\]\) and torch.Size\(\[2, 3, 1\]\)"):
        CFGDenoiser(model_fn, 3.0, cond={"y": y_c}, uncond={"y": torch.zeros(2, 3, 1)})
