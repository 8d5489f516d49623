"""TEST ORACLE — our own transcription of NVIDIA's single-shot "sink-bidirectional" LTX-2 refinement
(`DiffusersLTX2Refiner.refine_latents` in diffusion/refiner/diffusers_ltx2_refiner.py of NVlabs/Sana at 40151c8, the
CLI default), written against the diffusers LTX-2 modules directly so that a test can hold
`sana_wm.inference.refiner.LTX2Refiner.refine(block_size=None)` to it. Never imported by production code.

The algorithm:
  * sink = the first `sink_size` latent frames (kept as they are); current = the rest.
  * noise once for all current frames: ε ~ N(0, I) from a generator seeded `seed`, in the working dtype;
    x = (1 − σ₀)·current + σ₀·ε, computed in the working dtype.
  * per step σ → σ_next of the distilled schedule: one transformer pass over [sink | x] (frame-major tokens), RoPE
    over the whole clip at `fps`; per-token timesteps: 0 for sink tokens, σ·timestep_scale_multiplier for current
    ones; self-attention with the sink/current mask (sink queries see sink keys only, current queries see all keys),
    as two attention calls split at the sink's last token.
    x̂₀ = (tokens − v·σ_token) in float32, rounded to the working dtype, current tokens only;
    x ← x + (σ_next − σ)·(x − x̂₀)/σ in float32, rounded to the working dtype.
  * returns [sink | x] in the working dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) → (B, T·h·w, C), patch size 1."""
    return latents.flatten(2).transpose(1, 2)


def _unpack(tokens: torch.Tensor, T: int, h: int, w: int) -> torch.Tensor:
    return tokens.transpose(1, 2).unflatten(2, (T, h, w))


def _self_attention(attn, hidden: torch.Tensor, rope, n_sink: int) -> torch.Tensor:
    from diffusers.models.transformers.transformer_sana_wm_refiner import (
        apply_interleaved_rotary_emb,
        apply_split_rotary_emb,
    )

    gate_logits = attn.to_gate_logits(hidden) if attn.to_gate_logits is not None else None
    q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    q, k = attn.norm_q(q), attn.norm_k(k)
    rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
    q, k = rotate(q, rope), rotate(k, rope)
    heads = lambda t: t.unflatten(2, (attn.heads, -1)).transpose(1, 2)  # (B, H, N, D)
    q, k, v = heads(q), heads(k), heads(v)
    sink_out = F.scaled_dot_product_attention(q[:, :, :n_sink], k[:, :, :n_sink], v[:, :, :n_sink])
    current_out = F.scaled_dot_product_attention(q[:, :, n_sink:], k, v)
    out = torch.cat([sink_out, current_out], dim=2).transpose(1, 2)  # (B, N, H, D)
    if gate_logits is not None:
        out = out * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)
    out = out.flatten(2).to(q.dtype)
    return attn.to_out[1](attn.to_out[0](out))


def _block(block, hidden, text, temb, rope, text_bias, n_sink):
    B = hidden.shape[0]
    ada = block.scale_shift_table[None, None] + temb.reshape(B, temb.shape[1], block.scale_shift_table.shape[0], -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(dim=2)
    h = block.norm1(hidden) * (1 + scale_msa) + shift_msa
    hidden = hidden + _self_attention(block.attn1, h, rope, n_sink) * gate_msa
    hidden = hidden + block.attn2(block.norm2(hidden), encoder_hidden_states=text, query_rotary_emb=None,
                                  attention_mask=text_bias)
    h = block.norm3(hidden) * (1 + scale_mlp) + shift_mlp
    return hidden + block.ff(h) * gate_mlp


def _velocity(tr, tokens, text, text_mask, timestep, T, h, w, fps, n_sink):
    B = tokens.shape[0]
    text_bias = ((1 - text_mask.to(tokens.dtype)) * -10000.0).unsqueeze(1)
    coords = tr.rope.prepare_video_coords(B, T, h, w, tokens.device, fps=fps)
    rope = tr.rope(coords, device=tokens.device)
    hidden = tr.proj_in(tokens)
    temb, embedded = tr.time_embed(timestep.flatten(), batch_size=B, hidden_dtype=hidden.dtype)
    temb, embedded = temb.view(B, -1, temb.shape[-1]), embedded.view(B, -1, embedded.shape[-1])
    text = tr.caption_projection(text).view(B, -1, hidden.shape[-1])
    for block in tr.transformer_blocks:
        hidden = _block(block, hidden, text, temb, rope, text_bias, n_sink)
    mod = tr.scale_shift_table[None, None] + embedded[:, :, None]
    shift, scale = mod[:, :, 0], mod[:, :, 1]
    return tr.proj_out(tr.norm_out(hidden) * (1 + scale) + shift)


@torch.no_grad()
def nvidia_refine_latents(tr, latent, text, text_mask, *, sigmas, fps, sink_size=1, seed=42):
    """The oracle: latent (B, C, T, h, w) stage-1 latents in the working dtype; text / text_mask the connectors'
    output. Returns (B, C, T, h, w) in the working dtype."""
    dtype, device = latent.dtype, latent.device
    sig = torch.tensor(sigmas, dtype=torch.float32, device=device)
    sink, current = latent[:, :, :sink_size], latent[:, :, sink_size:]
    generator = torch.Generator(device=device).manual_seed(int(seed))
    eps = torch.randn(current.shape, generator=generator, device=device, dtype=dtype)
    noisy = (1.0 - float(sig[0])) * current + float(sig[0]) * eps
    for i in range(len(sig) - 1):
        sigma = sig[i]
        full = torch.cat([sink, noisy], dim=2)
        B, _, T, h, w = full.shape
        tokens = _pack(full)
        n_sink = _pack(sink).shape[1]
        raw_t = torch.zeros(B, tokens.shape[1], 1, dtype=torch.float32, device=device)
        raw_t[:, n_sink:, 0] = sigma
        v = _velocity(tr, tokens, text, text_mask, raw_t.squeeze(-1) * float(tr.config.timestep_scale_multiplier),
                      T, h, w, fps, n_sink)
        x0 = (tokens.float() - v.float() * raw_t)[:, n_sink:].to(dtype)
        noisy_tokens = _pack(noisy)
        velocity = (noisy_tokens.float() - x0.float()) / sigma
        nxt = noisy_tokens.float() + velocity * (sig[i + 1] - sigma)
        noisy = _unpack(nxt.to(dtype), noisy.shape[2], h, w)
    return torch.cat([sink, noisy], dim=2)
