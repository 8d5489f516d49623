"""Stage 2: the LTX-2 refiner (docs/design/pipeline.md §5), driven through diffusers' model classes.

The heavy modules are diffusers' / transformers' own — ``SanaWMLTX2RefinerTransformer3DModel`` (an LTX-2 DiT with a
video-only forward and an explicit K/V cache), ``LTX2TextConnectors`` and Gemma-3 — loaded from local folders only.
The refinement loop, the prompt packing and the device placement are ours.

Prompt: the raw user prompt (stripped, no chi prefix), Gemma-3 tokenizer, **left** padding to
``text_max_sequence_length`` (1024). All hidden states (embedding output + every layer) are stacked to
(1, L, D, n_layers + 1) and handed to the connectors, which apply the per-layer masked mean / range normalisation (×8)
once (diffusers' pipeline normalises twice, an idempotent no-op up to rounding) and return the
cross-attention memory (1, L, D_model) and its mask. No CFG.

Refinement of the stage-1 latent z (B, C, T, h, w), normalised as the stage-1 DiT sees it:

* sink = z[:, :, :1] (the clean first-image frame). Its self-attention K/V are captured once at σ = 0, after the q/k
  RMSNorm and before RoPE, in a pass where the sink attends only to itself; the sink frames are never changed.
* by default (``block_size=None``) NVIDIA's single-shot "sink-bidirectional" pass, the CLI default of its
  inference script (docs/design/nvidia-fidelity.md §2): one block holding every non-sink frame, so
  current queries see the sink and all current frames, sink queries only the sink, and one ε covers the whole clip
  (mixed with the latent in the working dtype, as NVIDIA does). The sink K/V are exact for that mask because
  nothing the sink computes depends on the current frames.
* with ``block_size`` set (the AR mode, 3 in the port) the other frames are refined in blocks of that many latent
  frames. Each block starts from
  x = (1 − σ₀)·z_block + σ₀·ε with one ε per block drawn, in block order, from a generator on the execution device
  seeded ``seed`` (42), and runs the distilled Euler steps σ = (0.909375, 0.725, 0.421875, 0):
  v = F(x, σ·1000) (float timesteps), x̂₀ = x − σ·v, x ← x + (σ_next − σ)·(x − x̂₀)/σ.
  Its queries attend to [sink K/V re-RoPE'd at offset (start − history − 1) | history K/V (post-RoPE) | the block].
  After the block, a σ = 0 pass captures its post-RoPE K/V into the history, trimmed to ``kv_max_frames − 1`` frames.
  The diffusers port implements only this mode and states the refiner was trained that way.

The decoded sink frame is dropped by the caller (161 → 160 frames, c2w aligned as c2w[1:]); see
:meth:`sana_wm.inference.pipeline.SanaWMPipeline.generate`.

Memory: the audio half of the LTX-2 checkpoint is loaded (so the released weights load unchanged) but never run and
never moved to the accelerator. With ``offload=True`` the Gemma-3 language model, the connectors and the transformer
live on the offload device and are moved to the execution device only while they run (host copies kept by the
placement, :mod:`sana_wm.inference.placement`: loads from pinned memory, offloads without a copy).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sana_wm.inference.placement import ModulePlacement

log = logging.getLogger(__name__)

__all__ = [
    "DISTILLED_SIGMAS",
    "LTX2Refiner",
    "plan_blocks",
    "is_audio_only",
]

#: The 3-step distilled σ schedule of the released refiner (ends with the terminal 0).
DISTILLED_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)


def is_audio_only(name: str) -> bool:
    """True for parameters/modules of the LTX-2 checkpoint that the video-only refiner forward never touches.

    The audio stream (``audio_*``), the audio↔video cross-attention (``audio_to_video_*``, ``video_to_audio_*``,
    ``*a2v*``/``*v2a*`` tables) and its global modulation (``av_cross_attn_*``).
    """
    for part in name.split("."):
        if "audio" in part or part.startswith("av_") or "a2v" in part or "v2a" in part:
            return True
    return False


def plan_blocks(num_frames: int, sink_frames: int = 1, block_size: int | None = 3) -> list[tuple[int, int]]:
    """Latent-frame ranges [start, end) refined one after another; ``block_size=None`` gives one block.

    Example: 21 latent frames, sink 1, block 3 → [(1, 4), (4, 7), …, (19, 21)] (the last block has 2 frames).
    """
    if sink_frames < 1 or num_frames <= sink_frames:
        raise ValueError(f"need more latent frames ({num_frames}) than sink frames ({sink_frames}) to refine")
    if block_size is None:
        return [(sink_frames, num_frames)]
    if block_size < 1:
        raise ValueError(f"refiner block_size must be >= 1 or None (single shot); got {block_size}")
    return [(s, min(s + block_size, num_frames)) for s in range(sink_frames, num_frames, block_size)]


def _text_backbone(text_encoder: nn.Module) -> nn.Module:
    """The Gemma-3 language model inside ``Gemma3ForConditionalGeneration`` (the vision tower is never needed)."""
    inner = getattr(text_encoder, "model", text_encoder)
    return getattr(inner, "language_model", inner)


class LTX2Refiner:
    """Stage-2 refiner around diffusers' LTX-2 refiner modules.

    Args:
        transformer: ``diffusers.SanaWMLTX2RefinerTransformer3DModel`` (patch size 1).
        connectors: ``diffusers.pipelines.ltx2.LTX2TextConnectors``.
        text_encoder: Gemma-3 (``Gemma3ForConditionalGeneration``, or a bare Gemma-3 text model).
        tokenizer: its tokenizer.
        text_max_sequence_length: prompt tokens (1024 for the release).
        sigmas: distilled σ schedule ending in 0.
        device: execution device (where the transformer runs).
        offload: keep the modules on ``offload_device`` except while they run.
        offload_device: where offloaded modules live (CPU).
        placement: a :class:`sana_wm.inference.placement.ModulePlacement` (or an object with its ``move(name,
            module, device, skip=None)`` and ``where``), shared with the stage-1 pipeline so that every move is
            recorded in one place and host copies are kept once; a private one by default.
    """

    def __init__(
        self,
        transformer: nn.Module,
        connectors: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        *,
        text_max_sequence_length: int = 1024,
        sigmas: tuple[float, ...] = DISTILLED_SIGMAS,
        device: torch.device | str = "cpu",
        offload: bool = False,
        offload_device: torch.device | str = "cpu",
        placement=None,
    ) -> None:
        cfg = transformer.config
        if int(cfg.patch_size) != 1 or int(cfg.patch_size_t) != 1:
            raise ValueError(
                f"LTX2Refiner supports patch_size = patch_size_t = 1 (the LTX-2 refiner); got "
                f"{cfg.patch_size}, {cfg.patch_size_t}"
            )
        sig = [float(s) for s in sigmas]
        if len(sig) < 2 or sig[-1] != 0.0 or any(b >= a for a, b in zip(sig, sig[1:], strict=False)) or sig[0] > 1:
            raise ValueError(f"refiner sigmas must decrease strictly from <= 1 to a terminal 0; got {sigmas}")
        for m in (transformer, connectors, text_encoder):
            m.requires_grad_(False).eval()
        self.transformer = transformer
        self.connectors = connectors
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.text_max_sequence_length = int(text_max_sequence_length)
        self.sigmas = tuple(sig)
        self.device = torch.device(device)
        self.offload = bool(offload)
        self.offload_device = torch.device(offload_device)
        self.placement = placement if placement is not None else ModulePlacement(pin_memory=self.device.type == "cuda")
        self.home()

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        refiner_root,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        offload: bool = False,
        offload_device: torch.device | str = "cpu",
        placement=None,
        text_max_sequence_length: int | None = None,
    ) -> LTX2Refiner:
        """Load from a local refiner folder (``transformer/``, ``connectors/``, ``text_encoder/`` + tokenizer).

        ``refiner_root`` is a path or a :class:`sana_wm.inference.model_root.RefinerPaths`. Weights are read on the CPU and
        moved to ``device`` unless ``offload``.
        """
        from diffusers.models.transformers.transformer_sana_wm_refiner import (
            SanaWMLTX2RefinerTransformer3DModel,
        )
        from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
        from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

        from sana_wm.inference.model_root import RefinerPaths, resolve_refiner_paths

        paths = refiner_root if isinstance(refiner_root, RefinerPaths) else resolve_refiner_paths(refiner_root)
        transformer = SanaWMLTX2RefinerTransformer3DModel.from_pretrained(
            paths.transformer, torch_dtype=dtype, local_files_only=True
        )
        connectors = LTX2TextConnectors.from_pretrained(paths.connectors, torch_dtype=dtype, local_files_only=True)
        text_encoder = Gemma3ForConditionalGeneration.from_pretrained(
            paths.text_encoder, dtype=dtype, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer, local_files_only=True)
        return cls(
            transformer,
            connectors,
            text_encoder,
            tokenizer,
            text_max_sequence_length=text_max_sequence_length or paths.text_max_sequence_length,
            device=device,
            offload=offload,
            offload_device=offload_device,
            placement=placement,
        )

    # ------------------------------------------------------------------------------------------------ helpers

    def _place(self, name: str, module: nn.Module, device, skip=None) -> None:
        self.placement.move(name, module, device, skip)

    def _release(self, name: str, module: nn.Module, skip=None) -> None:
        if self.offload:
            self._place(name, module, self.offload_device, skip)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.proj_in.weight.dtype

    def home(self) -> None:
        """Put every refiner module where it waits between uses: the offload device when ``offload``, else the
        execution device. The audio half of the transformer and the Gemma-3 vision tower are never moved."""
        where = self.offload_device if self.offload else self.device
        self._place("refiner.text_encoder", _text_backbone(self.text_encoder), where)
        self._place("refiner.connectors", self.connectors, where)
        self._place("refiner.transformer", self.transformer, where, skip=is_audio_only)

    # --------------------------------------------------------------------------------------------- prompt

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt → (embeddings (1, L, D_model), mask (1, L)) for the refiner's cross-attention (module docstring)."""
        if not isinstance(prompt, str):
            raise TypeError(f"refiner prompt must be a string; got {type(prompt).__name__}")
        tok = self.tokenizer(
            [prompt.strip()],
            padding="max_length",
            padding_side="left",
            max_length=self.text_max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        lm = _text_backbone(self.text_encoder)
        self._place("refiner.text_encoder", lm, self.device)
        try:
            out = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = torch.stack(out.hidden_states, dim=-1)  # (1, L, D, n_layers + 1)
        finally:
            self._release("refiner.text_encoder", lm)
        self._place("refiner.connectors", self.connectors, self.device)
        try:
            emb, _, emb_mask = self.connectors(hidden.to(self.connectors.dtype), mask, padding_side="left")
        finally:
            self._release("refiner.connectors", self.connectors)
        return emb.to(self.dtype), emb_mask

    # --------------------------------------------------------------------------------------------- refine

    def _rope(self, positions: list[int], h: int, w: int, batch: int, fps: float):
        return self.transformer.build_rotary_emb_for_absolute_positions(
            batch_size=batch, frame_positions=positions, height=h, width=w, device=self.device, fps=float(fps)
        )

    def _forward(self, x: torch.Tensor, positions: list[int], sigma: float, text, cache, mode: str, fps: float):
        """One transformer pass on latent frames x (B, C, n, h, w) at absolute ``positions``; returns v (B, C, n, h, w)."""
        B, C, n, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, n·h·w, C): frame-major, then row, then column
        scale = float(self.transformer.config.timestep_scale_multiplier)
        t = torch.full((B, tokens.shape[1]), sigma * scale, dtype=torch.float32, device=x.device)
        v = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=text[0],
            timestep=t,
            video_rotary_emb=self._rope(positions, h, w, B, fps),
            encoder_attention_mask=text[1],
            kv_cache=cache,
            kv_cache_mode=mode,
            return_dict=False,
        )[0]
        return v.transpose(1, 2).reshape(B, -1, n, h, w)

    @torch.no_grad()
    def refine(
        self,
        latents: torch.Tensor,
        prompt: str | None = None,
        *,
        prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        fps: float = 16.0,
        block_size: int | None = None,
        kv_max_frames: int = 11,
        sink_frames: int = 1,
        seed: int = 42,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Refine stage-1 latents.

        Args:
            latents: (B, C, T, h, w) normalised stage-1 latents (frame 0 = the encoded first image).
            prompt: raw user prompt (encoded with :meth:`encode_prompt` unless ``prompt_embeds`` is given).
            prompt_embeds: precomputed (embeddings, mask) from :meth:`encode_prompt`.
            fps: video frame rate; scales the LTX-2 temporal RoPE.
            block_size: None (default) = NVIDIA's single-shot sink-bidirectional pass; an int = latent frames per AR
                block (3 as the port).
            kv_max_frames: sink + history frames kept in the K/V window (11); must exceed ``sink_frames``.
            sink_frames: leading frames used as the attention sink and left unchanged (1).
            seed: seed of the per-block noise generator on the execution device (42).
            generator: use this generator instead.
            progress: tqdm bar over blocks.

        Returns:
            (B, C, T, h, w) float32 latents: the sink frames unchanged, the rest refined.
        """
        from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMRefinerKVCache

        if latents.ndim != 5:
            raise ValueError(f"refiner latents must be (B, C, T, h, w); got {tuple(latents.shape)}")
        if int(latents.shape[1]) != int(self.transformer.config.in_channels):
            raise ValueError(
                f"refiner expects {self.transformer.config.in_channels} latent channels; got {latents.shape[1]}"
            )
        if kv_max_frames <= sink_frames:
            raise ValueError(f"kv_max_frames ({kv_max_frames}) must exceed sink_frames ({sink_frames})")
        B, _, T, h, w = latents.shape
        blocks = plan_blocks(T, sink_frames, block_size)
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("refine() needs a prompt or prompt_embeds")
            prompt_embeds = self.encode_prompt(prompt)
        emb, emb_mask = prompt_embeds
        text = (emb.to(self.device, self.dtype).expand(B, -1, -1), emb_mask.to(self.device).expand(B, -1))
        dtype = self.dtype
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        sig = torch.tensor(self.sigmas, dtype=torch.float32)  # the schedule in float32, as the scheduler keeps it
        s0 = float(sig[0])

        self._place("refiner.transformer", self.transformer, self.device, skip=is_audio_only)
        try:
            z = latents.to(self.device, dtype)
            out = z.float().clone()  # the sink as the refiner holds it (rounded to its dtype), as NVIDIA returns it
            n_layers = len(self.transformer.transformer_blocks)
            cache = SanaWMRefinerKVCache(n_layers)
            sink_pos = list(range(sink_frames))
            self._forward(z[:, :, :sink_frames], sink_pos, 0.0, text, cache, "capture_pre_rope", fps)
            for i in range(n_layers):
                layer = cache.get(i)
                layer.store_sink(*layer.get_captured_pre_rope())
            max_history = kv_max_frames - sink_frames
            tokens_per_frame = h * w
            history = 0
            iterator = blocks
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(blocks, desc="refiner", leave=False)
            for bi, (start, end) in enumerate(iterator):
                positions = list(range(start, end))
                offset = start - history - sink_frames  # the sink sits right before the kept history
                cache.sink_pe = self._rope(list(range(offset, offset + sink_frames)), h, w, B, fps)
                clean = z[:, :, start:end]
                eps = torch.randn(clean.shape, generator=generator, device=self.device, dtype=dtype)
                if block_size is None:  # NVIDIA's single-shot pass mixes in the working dtype, rounding each term
                    x = (1.0 - s0) * clean + s0 * eps
                else:
                    x = ((1.0 - s0) * clean.float() + s0 * eps.float()).to(dtype)
                for k in range(len(sig) - 1):
                    s, s_next = float(sig[k]), float(sig[k + 1])
                    v = self._forward(x, positions, s, text, cache, "inject", fps)
                    x0 = (x.float() - s * v.float()).to(dtype)  # x̂₀, rounded to the model dtype as in the port
                    xf = x.float()
                    x = (xf + (s_next - s) * ((xf - x0.float()) / s)).to(dtype)
                out[:, :, start:end] = x.float()
                if bi == len(blocks) - 1:
                    break  # nothing attends to the last block: skip its K/V capture
                self._forward(x, positions, 0.0, text, cache, "inject_and_capture_post_rope", fps)
                for i in range(n_layers):
                    layer = cache.get(i)
                    k_new, v_new = layer.get_captured_post_rope()
                    old = layer.get_history()
                    if old is not None:
                        k_new, v_new = torch.cat([old[0], k_new], dim=1), torch.cat([old[1], v_new], dim=1)
                    layer.store_history(k_new, v_new)
                history += end - start
                if history > max_history:
                    keep = max_history * tokens_per_frame
                    for i in range(n_layers):
                        layer = cache.get(i)
                        k_h, v_h = layer.get_history()
                        layer.store_history(k_h[:, -keep:], v_h[:, -keep:])
                    history = max_history
            cache.clear()
        finally:
            self._release("refiner.transformer", self.transformer, skip=is_audio_only)
        return out
