"""Stage-2 refiner: the default single-shot pass equals a transcription of NVIDIA's refine_latents
(nvidia_refiner_oracle.py), AR parity with diffusers' SanaWMLTX2Refiner (the port), single-shot vs AR semantics,
and the audio half of the checkpoint staying unused and off the execution device."""

from __future__ import annotations

import pytest
import torch

from sana_wm.inference.placement import move_module
from sana_wm.inference.refiner import LTX2Refiner, is_audio_only, plan_blocks
from sana_wm.testing.refiner import tiny_refiner_components

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def parts():
    return tiny_refiner_components(latent_channels=8, seed=0, text_max_sequence_length=64)


@pytest.fixture(scope="module")
def refiner(parts):
    return LTX2Refiner(*parts, text_max_sequence_length=64)


def _oracle(parts):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.sana_wm.refiner import SanaWMLTX2Refiner

    tr, conn, te, tok = parts
    pipe = SanaWMLTX2Refiner(transformer=tr, connectors=conn, tokenizer=tok, text_encoder=te,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), text_max_sequence_length=64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_plan_blocks():
    assert plan_blocks(21, 1, 3) == [(s, min(s + 3, 21)) for s in range(1, 21, 3)]
    assert plan_blocks(21, 1, 3)[-1] == (19, 21)
    assert plan_blocks(5, 1, None) == [(1, 5)]
    with pytest.raises(ValueError):
        plan_blocks(1, 1, 3)


@pytest.mark.parametrize("block_size, kv_max", [(3, 11), (2, 4)])
def test_ar_refiner_matches_diffusers_port(parts, refiner, block_size, kv_max):
    """(2, 4) exercises the history trimming: 9 latent frames, history capped at 3 frames."""
    z = torch.randn(1, 8, 9, 2, 3)
    want = _oracle(parts)(z, "  a quiet forest  ", fps=16.0, output_type="latent", block_size=block_size,
                          kv_max_frames=kv_max)
    got = refiner.refine(z, "  a quiet forest  ", fps=16.0, block_size=block_size, kv_max_frames=kv_max)
    assert got.shape == z.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), atol=2e-6, rtol=0)
    assert torch.equal(got[:, :, 0], z[:, :, 0])  # the sink frame is never changed
    assert (got[:, :, 1:] - z[:, :, 1:]).abs().mean() > 0.1


def test_prompt_encoding_matches_port_up_to_the_double_normalisation(parts, refiner):
    emb, mask = refiner.encode_prompt("a quiet forest")
    want_emb, want_mask = _oracle(parts)._encode_prompt("a quiet forest", device=torch.device("cpu"),
                                                         dtype=torch.float32)
    assert emb.shape == (1, 64, 32) and torch.equal(mask, want_mask)
    torch.testing.assert_close(emb, want_emb, atol=1e-5, rtol=1e-5)
    other, _ = refiner.encode_prompt("a busy city street at night")
    assert (other - emb).abs().max() > 1e-3


def test_single_shot_is_bidirectional_and_ar_is_causal(refiner):
    z = torch.randn(1, 8, 7, 2, 3)
    z2 = z.clone()
    z2[:, :, -1] += 1.0  # change only the last frame
    text = refiner.encode_prompt("p")
    one = refiner.refine(z, prompt_embeds=text, block_size=None)
    one2 = refiner.refine(z2, prompt_embeds=text, block_size=None)
    ar = refiner.refine(z, prompt_embeds=text, block_size=3)
    ar2 = refiner.refine(z2, prompt_embeds=text, block_size=3)
    # single shot: frame 1 sees frame 6 (bidirectional); AR: blocks [1,4) never see [4,7)
    assert (one[:, :, 1] - one2[:, :, 1]).abs().max() > 1e-4
    assert torch.equal(ar[:, :, 1:4], ar2[:, :, 1:4])
    assert (ar[:, :, 4:] - ar2[:, :, 4:]).abs().max() > 1e-4
    assert torch.equal(one[:, :, 0], z[:, :, 0])
    # the same seed gives the same output; another seed another one
    torch.testing.assert_close(refiner.refine(z, prompt_embeds=text, block_size=None), one, rtol=0, atol=0)
    assert (refiner.refine(z, prompt_embeds=text, block_size=None, seed=7) - one).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_single_shot_equals_nvidia_refine_latents(parts, dtype):
    import copy

    from nvidia_refiner_oracle import nvidia_refine_latents

    from sana_wm.inference.refiner import DISTILLED_SIGMAS

    tr = copy.deepcopy(parts[0]).to(dtype)
    refiner = LTX2Refiner(tr, *parts[1:], text_max_sequence_length=64)
    z = torch.randn(2, 8, 6, 2, 3, generator=torch.Generator().manual_seed(3))
    text = refiner.encode_prompt("a quiet forest")
    got = refiner.refine(z, prompt_embeds=text, fps=16.0)  # the default: single shot, one sink frame, seed 42
    want = nvidia_refine_latents(tr, z.to(dtype), text[0].to(dtype).expand(2, -1, -1),
                                 text[1].expand(2, -1), sigmas=DISTILLED_SIGMAS, fps=16.0)
    assert got.shape == want.shape == z.shape
    assert torch.equal(got[:, :, 0], z.to(dtype).float()[:, :, 0])  # the sink comes back unchanged (in the dtype)
    # The same operations in the same order and dtype (the sink's K/V cached vs recomputed per step changes nothing
    # the sink computes). Bit-equal on an AMD EPYC CPU in float32 and bf16; on an Intel Xeon the float32 GEMMs over
    # the cached and the recomputed K/V are blocked differently and land 4.8e-7 apart, so each dtype allows one
    # rounding of its own (bf16: 2 ulp).
    tol = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3)}[dtype]
    torch.testing.assert_close(got, want.float(), **tol)
    # The oracle tells the modes apart: the AR refinement is far from it.
    ar = refiner.refine(z, prompt_embeds=text, fps=16.0, block_size=3)
    assert (ar - want.float()).abs().max() > 1e-2


def test_audio_half_is_never_used(parts):
    """Put every audio-only tensor on `meta`: if the forward touched one it would fail or change."""
    import copy

    tr = copy.deepcopy(parts[0])
    names = [n for n, _ in tr.named_parameters()]
    audio = [n for n in names if is_audio_only(n)]
    assert audio and any(n.startswith("transformer_blocks.0.attn1.") for n in names if not is_audio_only(n))
    assert not any(is_audio_only(n) for n in names if n.startswith(("proj_in", "proj_out", "time_embed.",
                                                                    "caption_projection.")))
    ref = LTX2Refiner(tr, *parts[1:], text_max_sequence_length=64)
    z = torch.randn(1, 8, 5, 2, 3)
    text = ref.encode_prompt("p")
    before = ref.refine(z, prompt_embeds=text)
    move_module(tr, "meta", skip=lambda n: not is_audio_only(n))
    assert all(p.device.type == "meta" for n, p in tr.named_parameters() if is_audio_only(n))
    assert all(p.device.type == "cpu" for n, p in tr.named_parameters() if not is_audio_only(n))
    torch.testing.assert_close(ref.refine(z, prompt_embeds=text), before, rtol=0, atol=0)


def test_offload_moves_modules_around_each_use(parts):
    """With offload, each refiner module sits on the offload device except while it runs (a recording placement
    stands in for a second device on this CPU-only machine)."""

    class Recorder:
        def __init__(self):
            self.where, self.log = {}, []

        def move(self, name, module, device, skip=None):
            self.where[name] = str(torch.device(device))
            self.log.append((name, self.where[name]))

    rec = Recorder()
    ref = LTX2Refiner(*parts, text_max_sequence_length=64, device="cpu", offload=True, offload_device="meta",
                      placement=rec)
    seen = {}

    def snapshot(key):
        def hook(module, args):
            seen.setdefault(key, dict(rec.where))

        return hook

    hooks = [parts[0].register_forward_pre_hook(snapshot("transformer")),
             parts[1].register_forward_pre_hook(snapshot("connectors"))]
    try:
        assert set(rec.where.values()) == {"meta"}  # everything starts offloaded
        ref.refine(torch.randn(1, 8, 5, 2, 3), "p")
    finally:
        for h in hooks:
            h.remove()
    assert seen["connectors"] == {"refiner.text_encoder": "meta", "refiner.connectors": "cpu",
                                  "refiner.transformer": "meta"}
    assert seen["transformer"] == {"refiner.text_encoder": "meta", "refiner.connectors": "meta",
                                   "refiner.transformer": "cpu"}
    assert set(rec.where.values()) == {"meta"}
    assert ("refiner.text_encoder", "cpu") in rec.log


def test_move_module_really_moves_and_skips(parts):
    import copy

    tr = copy.deepcopy(parts[0])
    move_module(tr, "meta", skip=is_audio_only)
    for n, p in tr.named_parameters():
        assert p.device.type == ("cpu" if is_audio_only(n) else "meta"), n


def test_bad_arguments(refiner):
    z = torch.randn(1, 8, 5, 2, 3)
    with pytest.raises(ValueError, match="kv_max_frames"):
        refiner.refine(z, "p", kv_max_frames=1)
    with pytest.raises(ValueError, match="channels"):
        refiner.refine(torch.randn(1, 4, 5, 2, 3), "p")
    with pytest.raises(ValueError, match="prompt"):
        refiner.refine(z)
