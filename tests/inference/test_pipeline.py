"""SanaWMPipeline with tiny in-memory components: shapes, frame/pose alignment, conditioning, determinism,
camera sensitivity, samplers, precomputed inputs (the validation-callback path) and device placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana_wm.camera import action_to_c2w
from sana_wm.encoders import GemmaTextEncoder, LatentCodec
from sana_wm.encoders.tiny import tiny_gemma2, tiny_ltx2_vae, tiny_tokenizer
from sana_wm.inference.pipeline import InputNames, ModulePlacement, SanaWMPipeline, plan_trajectory
from sana_wm.inference.refiner import LTX2Refiner, _text_backbone, is_audio_only
from sana_wm.models import SanaWM
from sana_wm.testing.refiner import tiny_refiner_components

pytestmark = pytest.mark.filterwarnings("ignore")
H, W = 64, 96
K = np.array([90.0, 90.0, 60.0, 45.0])  # (fx, fy, cx, cy) of the 120 x 160 input image


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    dit = SanaWM.from_preset("tiny", in_channels=8, out_channels=8, caption_channels=32, depth=2)
    with torch.no_grad():  # NVIDIA's init silences the camera branches; wake them so cameras matter
        for name, p in dit.named_parameters():
            if any(k in name for k in ("out_proj_cam", "plucker_proj", "plucker_embedder")):
                p.normal_(0.0, 0.05)
    codec = LatentCodec(tiny_ltx2_vae(8))
    tok = tiny_tokenizer()
    te = GemmaTextEncoder(tiny_gemma2(32, vocab_size=len(tok)), tok, max_sequence_length=32)
    return dit, codec, te, tiny_refiner_components(8, text_max_sequence_length=64)


def make(parts, refine=True, **kw):
    dit, codec, te, rparts = parts
    refiner = LTX2Refiner(*rparts, text_max_sequence_length=64) if refine else None
    kw.setdefault("device", "cpu")
    return SanaWMPipeline(dit, codec, te, refiner, height=H, width=W, **kw)


@pytest.fixture(scope="module")
def image():
    yy, xx = np.mgrid[0:120, 0:160]
    return np.stack([xx * 1.5, yy * 2.0, (xx + yy) % 256], -1).astype(np.uint8)


def run(pipe, image, action="w-8,l-8", **kw):
    kw.setdefault("num_frames", 17)
    kw.setdefault("num_steps", 2)
    return pipe.generate(image, "a forest path", action_to_c2w(action), K, progress=False, **kw)


def test_refined_output_drops_the_sink_frame_and_aligns_poses(parts, image):
    pipe = make(parts)
    res = run(pipe, image)
    c2w = action_to_c2w("w-8,l-8")
    assert res.refined and res.num_frames == 17 and res.frame_offset == 1
    assert res.video.shape == (16, H, W, 3) and res.video.dtype == np.uint8
    np.testing.assert_array_equal(res.c2w, c2w[1:17])
    assert res.intrinsics.shape == (16, 4)
    # 120x160 → 72x96 resize (scale 0.6), crop 4 rows: fx·0.6, cy·0.6 − 4
    np.testing.assert_allclose(res.intrinsics[0], [54.0, 54.0, 36.0, 23.0])
    assert res.latents.shape == res.stage1_latents.shape == (1, 8, 3, 2, 3)
    assert torch.equal(res.latents[:, :, 0], res.stage1_latents[:, :, 0])  # sink untouched
    assert (res.latents[:, :, 1:] - res.stage1_latents[:, :, 1:]).abs().mean() > 1e-3
    assert set(res.timings) >= {"prepare", "text_encoder", "vae_encode", "stage1", "stage2", "vae_decode"}
    assert res.peak_memory["process_max_rss"] > 0


def test_stage1_only_keeps_all_frames_and_the_image_latent(parts, image):
    pipe = make(parts, refine=False)
    res = run(pipe, image, num_frames=12)  # snapped to the nearest 8k+1 = 9
    assert not res.refined and res.num_frames == 9 and res.frame_offset == 0
    assert res.video.shape == (9, H, W, 3) and len(res.c2w) == 9
    assert any("num_frames 12 -> 9" in n for n in res.notices)
    tensor, _ = pipe.prepare_image(image)
    z0 = parts[1].encode(tensor)
    torch.testing.assert_close(res.latents[:, :, :1], z0)  # frame 0 = the encoded first image, never updated
    # the decoded first frame resembles the (cropped) input image more than the reversed one
    target = pipe.prepare_image(image)[0][0, :, 0].permute(1, 2, 0).add(1).mul(127.5).numpy()
    err = np.abs(res.video[0].astype(float) - target).mean()
    assert err < np.abs(res.video[0].astype(float) - target[::-1, ::-1]).mean()


def test_seed_determinism_and_camera_sensitivity(parts, image):
    pipe = make(parts, refine=False)
    a = run(pipe, image, seed=3, decode=False)
    b = run(pipe, image, seed=3, decode=False)
    c = run(pipe, image, seed=4, decode=False)
    d = run(pipe, image, action="s-8,j-8", seed=3, decode=False)
    assert torch.equal(a.latents, b.latents)
    assert (a.latents - c.latents).abs().max() > 1e-3
    assert (a.latents - d.latents).abs().max() > 1e-4  # the trajectory steers the result
    assert a.video is None


def test_dpm_solver_and_guidance_off(parts, image):
    pipe = make(parts, refine=False)
    # 4 steps: DPM-Solver++ equals Euler on first-order steps (from σ = 1 and into σ = 0); step 3 is second order
    euler = run(pipe, image, num_steps=4, decode=False)
    dpm = run(pipe, image, num_steps=4, decode=False, sampler="flow_dpm-solver")
    no_cfg = run(pipe, image, num_steps=4, decode=False, cfg_scale=1.0)
    assert torch.isfinite(dpm.latents).all()
    assert (euler.latents - dpm.latents).abs().max() > 1e-4
    assert (euler.latents - no_cfg.latents).abs().max() > 1e-4
    with pytest.raises(ValueError, match="sampler"):
        run(pipe, image, sampler="unipc")


def test_camera_guidance_branch_is_a_still_camera(parts, image):
    """camera_guidance = 0 is the still camera's prediction: the same latents as commanding a still camera; a still
    command is unchanged by any scale; 1 is off; a moving command is pushed away from the still one."""
    pipe = make(parts, refine=False)
    moving = run(pipe, image, decode=False, cfg_scale=1.0)
    still_command = run(pipe, image, action="none-16", decode=False, cfg_scale=1.0)
    only_still = run(pipe, image, decode=False, cfg_scale=1.0, camera_guidance=0.0)
    torch.testing.assert_close(only_still.latents, still_command.latents, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(only_still.c2w, action_to_c2w("w-8,l-8")[:17])  # the commanded poses are returned
    assert torch.equal(run(pipe, image, decode=False, cfg_scale=1.0, camera_guidance=1.0).latents, moving.latents)
    still_guided = run(pipe, image, action="none-16", decode=False, camera_guidance=3.0)
    torch.testing.assert_close(still_guided.latents, run(pipe, image, action="none-16", decode=False).latents,
                               rtol=1e-5, atol=1e-5)
    guided = run(pipe, image, decode=False, cfg_scale=1.0, camera_guidance=3.0)
    # two Euler steps of v_still + 3 (v_c − v_still) move further from the still result than the plain ones
    assert (guided.latents - still_command.latents).abs().mean() > 1.5 * (moving.latents - still_command.latents).abs().mean()
    for bad in (-0.5, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match=f"camera_guidance must be a finite number >= 0 \\(1 = off\\); got {bad!r}"):
            run(pipe, image, decode=False, camera_guidance=bad)


def test_precomputed_embeddings_and_latent(parts, image):
    """The training helper's validation path: no text encoder, no image decode of the input."""
    dit, codec, te, _ = parts
    pipe = make(parts, refine=False)
    cond, uncond = pipe.encode_prompt("a forest path", "")
    tensor, geom = pipe.prepare_image(image)
    z0 = codec.encode(tensor)
    from sana_wm.camera import crop_intrinsics

    K_model = crop_intrinsics(K[None], geom)[0]
    bare = SanaWMPipeline(dit, codec, None, None, height=H, width=W, device="cpu")
    got = bare.generate(None, None, action_to_c2w("w-8,l-8"), K_model, num_frames=17, num_steps=2, progress=False,
                        prompt_embeds=cond, negative_prompt_embeds=uncond, image_latent=z0, decode=False)
    want = run(pipe, image, decode=False)
    torch.testing.assert_close(got.latents, want.latents)
    with pytest.raises(ValueError, match="text encoder"):
        bare.generate(None, "p", action_to_c2w("w-8"), K_model, num_frames=9, image_latent=z0, progress=False)


def test_bad_inputs(parts, image):
    pipe = make(parts)
    bad = action_to_c2w("w-16")
    bad[3, :3, :3] *= 2.0
    with pytest.raises(ValueError, match="non-rigid"):
        pipe.generate(image, "p", bad, K, num_frames=17, progress=False)
    with pytest.raises(ValueError, match="focal"):
        pipe.generate(image, "p", action_to_c2w("w-16"), np.array([0.0, 90, 60, 45]), num_frames=17, progress=False)
    with pytest.raises(ValueError, match="at least 9"):
        run(pipe, image, num_frames=1)


def test_plan_trajectory_checks_snaps_and_names_inputs():
    """The one place generation inputs are checked (generate and infer.py both call it, infer.py with its flags)."""
    c2w = action_to_c2w("w-20")  # 21 poses
    plan = plan_trajectory(c2w, K, 12, refine=False)
    assert plan.num_frames == 9 and plan.c2w.dtype == np.float32
    np.testing.assert_array_equal(plan.c2w, c2w[:9])
    np.testing.assert_array_equal(plan.intrinsics, np.tile(K, (9, 1)))
    assert plan.notices == ("num_frames 12 -> 9 (snapped to 9: the VAE needs 8k+1 frames)",)
    assert plan_trajectory(c2w, K, 17, refine=True).notices == ()
    clipped = plan_trajectory(c2w, K, 30, refine=True)
    assert clipped.num_frames == 17
    assert clipped.notices == ("num_frames 30 -> 17 (snapped to 17: the VAE needs 8k+1 frames, at most the 21 poses "
                               "of c2w)",)
    with pytest.raises(ValueError, match=r"^c2w gives 21 poses but num_frames is 30; lengthen the trajectory or "
                                         r"pass num_frames 21 or less$"):
        plan_trajectory(c2w, K, 30, refine=True, clip_to_trajectory=False)
    for bad in (0, True, 9.0):
        with pytest.raises(ValueError, match=rf"^num_frames must be a positive integer \(frames to generate\); "
                                             rf"got {bad!r}$"):
            plan_trajectory(c2w, K, bad, refine=False)
    with pytest.raises(ValueError, match=r"^the refiner needs at least 9 frames; got 1 \(num_frames 4 snapped to "
                                         r"8k\+1\); raise num_frames or pass refine=False$"):
        plan_trajectory(c2w, K, 4, refine=True)
    assert plan_trajectory(c2w, K, 4, refine=False).num_frames == 1

    names = InputNames(c2w="--camera 'cam.npy'", intrinsics="--intrinsics 'K.npy'", num_frames="--num_frames",
                       no_refine="--no_refiner")
    bent = c2w.copy()
    bent[3, :3, :3] *= 2.0
    with pytest.raises(ValueError, match=r"^`--camera 'cam.npy'` frame 3 has a non-rigid rotation block"):
        plan_trajectory(bent, K, 17, refine=True, names=names)
    with pytest.raises(ValueError, match=r"^--camera 'cam.npy' gives 21 poses but --num_frames is 25;"):
        plan_trajectory(c2w, K, 25, refine=True, clip_to_trajectory=False, names=names)
    with pytest.raises(ValueError, match=r"\(--num_frames is 1\); raise --num_frames or pass --no_refiner$"):
        plan_trajectory(c2w, K, 1, refine=True, names=names)
    with pytest.raises(ValueError, match=r"^`--intrinsics 'K.npy'` has shape \(5, 4\): 5 per-frame entries for 17"):
        plan_trajectory(c2w, np.tile(K, (5, 1)), 17, refine=True, names=names)


class RecordingPlacement(ModulePlacement):
    """A fake second device: records where each module is asked to be but leaves the weights on the CPU."""

    def move(self, name, module, device, skip=None):
        dev = str(torch.device(device))
        if self.where.get(name) != dev:
            self.log.append((name, dev))
        self.where[name] = dev


def _watch(pipe, placement):
    """Forward pre-hooks that snapshot the placement record when each network first runs."""
    dit, codec, te, _ = pipe.dit, pipe.codec, pipe.text_encoder, None
    seen, hooks = {}, []
    targets = {"dit": dit, "vae_encoder": codec.vae.encoder, "vae_decoder": codec.vae.decoder, "gemma2": te.decoder}
    if pipe.refiner is not None:
        targets["refiner"] = pipe.refiner.transformer
        targets["refiner_text"] = pipe.refiner.connectors
    for key, module in targets.items():
        def hook(m, a, key=key):
            seen.setdefault(key, dict(placement.where))

        hooks.append(module.register_forward_pre_hook(hook))
    return seen, hooks


@pytest.mark.parametrize("offload", [True, False])
def test_offload_flags_move_modules(parts, image, offload):
    placement = RecordingPlacement()
    pipe = make(parts, placement=placement, offload_device="meta", offload_vae=offload, offload_refiner=offload,
                offload_text_encoder=offload)
    seen, hooks = _watch(pipe, placement)
    try:
        run(pipe, image)
    finally:
        for h in hooks:
            h.remove()
    off = "meta" if offload else "cpu"
    assert seen["dit"]["dit"] == "cpu"
    assert seen["dit"]["vae"] == off and seen["dit"]["text_encoder"] == off
    assert seen["dit"]["refiner.transformer"] == off and seen["dit"]["refiner.text_encoder"] == off
    assert seen["gemma2"]["text_encoder"] == "cpu" and seen["vae_encoder"]["vae"] == "cpu"
    assert seen["refiner"]["refiner.transformer"] == "cpu"
    # during stage 2 the stage-1 modules are off the accelerator when --offload_refiner is set
    for name in ("dit", "text_encoder", "vae", "refiner.text_encoder", "refiner.connectors"):
        assert seen["refiner"][name] == off, name
    assert seen["refiner_text"]["refiner.connectors"] == "cpu"
    assert seen["vae_decoder"]["vae"] == "cpu" and seen["vae_decoder"]["refiner.transformer"] == off
    if not offload:
        assert all(dev == "cpu" for _, dev in placement.log)


def test_prefetch_refiner_encodes_its_prompt_before_stage1_and_changes_nothing(parts, image):
    base = run(make(parts, placement=RecordingPlacement(), offload_device="meta", offload_refiner=True), image)
    placement = RecordingPlacement()
    pipe = make(parts, placement=placement, offload_device="meta", offload_refiner=True, prefetch_refiner=True)
    seen, hooks = _watch(pipe, placement)
    order = []
    hooks += [m.register_forward_pre_hook(lambda m, a, k=k: order.append(k))
              for k, m in (("connectors", pipe.refiner.connectors), ("dit", pipe.dit))]
    try:
        res = run(pipe, image)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(res.latents, base.latents) and np.array_equal(res.video, base.video)
    assert list(res.timings)[:5] == ["prepare", "text_encoder", "refiner_text", "vae_encode", "stage1"]
    assert order.index("connectors") < order.index("dit")
    # Gemma-3 runs beside the resident DiT, never beside the refiner transformer
    assert seen["refiner_text"]["dit"] == "cpu" and seen["refiner_text"]["refiner.transformer"] == "meta"
    assert seen["refiner"]["dit"] == "meta" and seen["refiner"]["refiner.transformer"] == "cpu"
    with pytest.raises(ValueError, match=r"^prefetch_refiner needs offload_refiner"):
        make(parts, prefetch_refiner=True)


def _nbytes(module):
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_offload_refiner_keeps_the_dits_host_copy_so_no_offload_copies_back(parts):
    """`meta` stands in for the accelerator: every load is counted, and an offload that copied device→host would
    fail (a meta tensor has no data), so only re-pointing at host copies gets through."""
    import copy

    dit, codec, te, rparts = copy.deepcopy(parts)
    pipe = SanaWMPipeline(dit, codec, te, LTX2Refiner(*rparts, text_max_sequence_length=64), height=H, width=W,
                          device="meta", offload_vae=True, offload_refiner=True, offload_text_encoder=True,
                          placement=ModulePlacement(pin_memory=False))
    pl = pipe.placement
    assert pl.where == {"refiner.text_encoder": "cpu", "refiner.connectors": "cpu", "refiner.transformer": "cpu",
                        "dit": "meta", "text_encoder": "cpu", "vae": "cpu"}
    since = len(pl.transfers)
    for _ in range(2):  # the stage-1 modules in and out as two generations move them
        for name in ("text_encoder", "vae"):
            pipe._onload(name)
            pipe._offload(name)
        pipe._offload("dit")
        pipe._onload("dit")
    assert pl.log[since:] == 2 * [("text_encoder", "meta"), ("text_encoder", "cpu"), ("vae", "meta"), ("vae", "cpu"),
                                  ("dit", "cpu"), ("dit", "meta")]
    tot = pl.totals(since)
    assert tot["d2h_bytes"] == 0 and tot["moves"] == 12
    assert tot["h2d_bytes"] == tot["reused_bytes"] == 2 * (_nbytes(te) + _nbytes(codec) + _nbytes(dit))


def test_module_placement_really_moves(parts):
    import copy

    dit = copy.deepcopy(parts[0])
    placement = ModulePlacement()
    placement.move("dit", dit, "meta")
    assert all(p.device.type == "meta" for p in dit.parameters())
    assert placement.where == {"dit": "meta"} and placement.log == [("dit", "meta")]
    placement.move("dit", dit, "meta")
    assert placement.log == [("dit", "meta")]  # no-op moves are not logged


@pytest.mark.gpu
@pytest.mark.parametrize("prefetch", [False, True])
def test_offload_on_cuda_from_pinned_host_copies(parts, image, prefetch):
    """Offloaded modules wait in pinned memory; once the host copies exist no offload copies anything back; the
    refiner upload overlaps stage 1 with ``prefetch_refiner``; the result matches the all-resident pipeline."""
    resident = run(make(parts, device="cuda"), image, decode=False)
    pipe = make(parts, device="cuda", offload_vae=True, offload_refiner=True, offload_text_encoder=True,
                prefetch_refiner=prefetch)
    pl = pipe.placement
    since = len(pl.transfers)
    first = run(pipe, image, decode=False)
    second = run(pipe, image, decode=False)
    assert pl.totals(since)["d2h_bytes"] == 0 and pl.totals(since)["h2d_bytes"] > 0
    loads = [t for t in pl.transfers[since:] if t.name == "refiner.transformer" and t.kind == "load"]
    assert len(loads) == 2 and all(t.prefetched == prefetch for t in loads)
    ref = pipe.refiner
    for module in (pipe.codec, pipe.text_encoder, pipe.dit, ref.connectors, ref.transformer, _text_backbone(ref.text_encoder)):
        named = [*module.named_parameters(), *module.named_buffers()]
        host = [n for n, t in named if not is_audio_only(n) and t.device.type == "cpu" and not t.is_pinned()]
        assert not host, host[:3]
    torch.testing.assert_close(first.latents, resident.latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(second.latents, first.latents, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_offload_on_cuda(parts, image):
    """On a real accelerator the offloaded modules' weights are on the CPU while other stages run."""
    pipe = make(parts, device="cuda", offload_vae=True, offload_refiner=True, offload_text_encoder=True)
    devs = {}
    watch = {"dit": pipe.dit, "vae": pipe.codec.vae, "refiner": pipe.refiner.transformer.proj_in,
             "gemma2": pipe.text_encoder.decoder}

    def snapshot(key):
        def hook(m, a):
            devs.setdefault(key, {k: next(v.parameters()).device.type for k, v in watch.items()})

        return hook

    hooks = [pipe.dit.register_forward_pre_hook(snapshot("dit")),
             pipe.refiner.transformer.register_forward_pre_hook(snapshot("refiner")),
             pipe.codec.vae.decoder.register_forward_pre_hook(snapshot("decode"))]
    try:
        res = run(pipe, image)
    finally:
        for h in hooks:
            h.remove()
    assert res.video.shape == (16, H, W, 3)
    assert devs["dit"] == {"dit": "cuda", "vae": "cpu", "refiner": "cpu", "gemma2": "cpu"}
    assert devs["refiner"] == {"dit": "cpu", "vae": "cpu", "refiner": "cuda", "gemma2": "cpu"}
    assert devs["decode"]["vae"] == "cuda" and devs["decode"]["refiner"] == "cpu"
    assert res.peak_memory["stage1"] > 0
    audio = [p for n, p in pipe.refiner.transformer.named_parameters() if "audio" in n]
    assert all(p.device.type == "cpu" for p in audio)
