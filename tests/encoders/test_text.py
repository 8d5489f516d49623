"""Tests for sana_wm.encoders.text.GemmaTextEncoder on a tiny Gemma-2 with an in-process tokenizer,
using the diffusers SANA-WM port's ``encode_prompt`` as the oracle."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sana_wm.encoders.text import CHI_PROMPT, CHI_PROMPT_LINES, GemmaTextEncoder
from sana_wm.encoders.tiny import save_tiny_text_encoder, tiny_gemma2, tiny_tokenizer

SHORT = "A car driving across a vast desert plain at golden hour."
LONG = " ".join(["a winding mountain road with pine trees, fog, and a red car"] * 60)  # > 298 tokens


@pytest.fixture(scope="module")
def parts():
    tok = tiny_tokenizer()
    return tiny_gemma2(32, vocab_size=len(tok)), tok


@pytest.fixture(scope="module")
def encoder(parts):
    model, tok = parts
    return GemmaTextEncoder(model, tok)


def _port_encode(parts, prompt: str, negative: str):
    from diffusers.pipelines.sana_wm.pipeline_sana_wm import DEFAULT_CHI_PROMPT, SanaWMPipeline

    model, tok = parts
    fake = SimpleNamespace(tokenizer=tok, text_encoder=model, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        cond, cond_mask, neg, neg_mask = SanaWMPipeline.encode_prompt(
            fake,
            prompt,
            negative,
            device=torch.device("cpu"),
            max_sequence_length=300,
            chi_prompt=DEFAULT_CHI_PROMPT,
        )
    return cond[:, 0], cond_mask, neg[:, 0], neg_mask  # port embeddings are (1, 1, L, D)


def test_chi_prompt_is_the_released_text():
    from diffusers.pipelines.sana_wm.pipeline_sana_wm import DEFAULT_CHI_PROMPT

    assert CHI_PROMPT_LINES == tuple(DEFAULT_CHI_PROMPT)
    assert CHI_PROMPT.endswith("\nUser Prompt: ") and CHI_PROMPT.startswith(
        'Given a user prompt, generate an "Enhanced'
    )


@pytest.mark.parametrize("prompt, negative", [(SHORT, ""), (LONG, "blurry, low quality")])
def test_encode_matches_port_encode_prompt(parts, encoder, prompt, negative):
    cond_p, cmask_p, neg_p, nmask_p = _port_encode(parts, prompt, negative)
    emb, mask = encoder.encode([prompt])
    nemb, nmask = encoder.encode([negative], use_chi_prompt=False)
    assert emb.shape == (1, 300, 32) and mask.shape == (1, 300) and mask.dtype == torch.bool
    assert torch.equal(emb, cond_p) and torch.equal(mask, cmask_p.bool())
    assert torch.equal(nemb, neg_p) and torch.equal(nmask, nmask_p.bool())


def test_window_arithmetic(encoder, parts):
    _, tok = parts
    chi_len = len(tok(CHI_PROMPT)["input_ids"])
    assert chi_len + 298 < 1024, "the tiny model must cover the whole chi window"
    emb, mask = encoder.encode([SHORT, LONG])
    # Short prompt: BOS + last prefix token(s) + prompt tokens, then right padding (a contiguous run of Trues).
    n_short = int(mask[0].sum())
    assert mask[0, :n_short].all() and not mask[0, n_short:].any()
    n_full = len(tok(CHI_PROMPT + SHORT)["input_ids"])
    assert n_short == n_full - (chi_len + 298 - 300) - 1 + 1  # = n_full - chi_len + 2
    assert mask[1].all(), "a prompt longer than 298 tokens fills the whole window (right-truncated)"
    # Batched encoding gives each row what a single-prompt call gives.
    e0, _ = encoder.encode([SHORT])
    assert torch.allclose(emb[:1], e0, atol=1e-6)
    # The empty negative prompt is BOS followed by 299 pads.
    _, nmask = encoder.encode([""], use_chi_prompt=False)
    assert nmask[0, 0] and not nmask[0, 1:].any()


def test_null_embedding_is_cached_empty_prompt(encoder):
    e1, m1 = encoder.null_embedding()
    e2, _ = encoder.null_embedding()
    assert e1 is e2
    ref, mref = encoder.encode([""], use_chi_prompt=False)
    assert torch.equal(e1, ref) and torch.equal(m1, mref) and e1.shape == (1, 300, 32)


def test_from_pretrained_roundtrip(tmp_path, encoder):
    save_tiny_text_encoder(tmp_path, hidden=32, seed=0)
    loaded = GemmaTextEncoder.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    assert loaded.hidden_size == 32 and not any(p.requires_grad for p in loaded.parameters())
    a, am = loaded.encode([SHORT])
    b, bm = encoder.encode([SHORT])
    assert torch.allclose(a, b, atol=1e-6) and torch.equal(am, bm)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GemmaTextEncoder.from_pretrained(tmp_path / "nope")


def test_rejects_bad_prompts(encoder):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        encoder.encode([])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        encoder.encode([1, 2])
