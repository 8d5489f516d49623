"""Frozen stage-1 text encoder: Gemma-2 (``gemma-2-2b-it``), last hidden state, SANA prompt recipe.

Recipe (docs/design/pipeline.md §3; our tests compare it with the diffusers port's encoding):

* Tokeniser padding on the **right**; the decoder stack's last hidden state (after the final
  RMSNorm, 2304-d for Gemma-2-2B) is the embedding; the attention mask comes from the tokeniser.
* Positive prompts get the "chi" instruction prefix: text = CHI_PROMPT + prompt (the prefix ends with
  ``"User Prompt: "``; no separator is added). With L = ``max_sequence_length`` (300) and
  L_c = number of tokens of the prefix alone (BOS included), the text is padded/truncated to
  L_c + L − 2 tokens, encoded, and then position 0 (BOS) plus the last L − 1 positions are kept.
  The kept window is BOS, the last prefix token, and up to L − 2 = 298 prompt tokens, right-padded.
* Negative / null prompts are encoded without the prefix at exactly L tokens (no selection):
  "" gives BOS followed by L − 1 pads, mask [1, 0, …, 0].

Outputs: embeddings (B, L, D) in the encoder dtype and a boolean mask (B, L) (True = real token).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["CHI_PROMPT", "CHI_PROMPT_LINES", "GemmaTextEncoder"]

#: The SANA "Enhanced prompt" instruction that SANA-WM was trained with, one entry per line. It is a
#: model input (the released weights expect this exact text), reproduced verbatim from the released
#: inference config / the diffusers port's default.
CHI_PROMPT_LINES: tuple[str, ...] = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)

#: The prefix as one string (lines joined with "\n"); the user prompt is appended directly after it.
CHI_PROMPT: str = "\n".join(CHI_PROMPT_LINES)


def _resolve(path: Path, sub: str) -> Path:
    """Diffusers layout keeps ``text_encoder/`` and ``tokenizer/`` subfolders; a plain HF model dir has both at the top."""
    return path / sub if (path / sub).is_dir() else path


class GemmaTextEncoder(nn.Module):
    """Frozen Gemma-2 prompt encoder with SANA's chi-prompt window.

    Args:
        model: the Gemma-2 decoder stack (``Gemma2Model``) or a causal LM whose ``get_decoder()``
            returns it; only the decoder is kept (the LM head is never needed).
        tokenizer: the matching tokenizer; it must add BOS (Gemma's does).
        max_sequence_length: L, tokens per prompt seen by the DiT (300).
        chi_prompt: instruction prefix for positive prompts (default :data:`CHI_PROMPT`).

    Attributes:
        hidden_size (int): D (2304 for Gemma-2-2B).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_sequence_length: int = 300,
        chi_prompt: str = CHI_PROMPT,
    ) -> None:
        super().__init__()
        if max_sequence_length < 2:
            raise ValueError(f"GemmaTextEncoder: max_sequence_length must be >= 2, got {max_sequence_length}")
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        decoder.requires_grad_(False).eval()
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.max_sequence_length = int(max_sequence_length)
        self.chi_prompt = chi_prompt
        self.hidden_size = int(decoder.config.hidden_size)
        # BOS + at least one prefix token, otherwise the kept window [0] + last L−1 overlaps position 0.
        self._chi_len = len(self.tokenizer(chi_prompt)["input_ids"])
        if self._chi_len < 2:
            raise ValueError(
                f"GemmaTextEncoder: chi_prompt {chi_prompt!r} tokenises to {self._chi_len} token(s); need BOS plus "
                "at least one prefix token"
            )
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> GemmaTextEncoder:
        """Load a local Gemma-2 checkpoint and tokenizer (never downloads).

        ``path`` is either a plain model folder (``config.json``, weights and ``tokenizer.json``
        together, e.g. ``gemma-2-2b-it``) or a diffusers pipeline root with ``text_encoder/`` and
        ``tokenizer/``. Extra keyword arguments go to the constructor.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        root = Path(path)
        model_dir, tok_dir = _resolve(root, "text_encoder"), _resolve(root, "tokenizer")
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no Gemma-2 model at {str(root)!r}: expected config.json in it or in its 'text_encoder/' subfolder"
            )
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        # Gemma-2's attention soft-capping is only implemented by the eager path.
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, local_files_only=True, attn_implementation="eager"
        )
        enc = cls(model, tokenizer, **kwargs)
        return enc.to(device) if device is not None else enc

    def train(self, mode: bool = True) -> GemmaTextEncoder:
        """The encoder is frozen: it always stays in eval mode."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    @torch.no_grad()
    def _run(self, texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise to exactly ``length`` (right pad / right truncate) and run Gemma → (B, length, D), (B, length)."""
        tok = self.tokenizer(
            texts,
            max_length=length,
            padding="max_length",
            padding_side="right",
            truncation=True,
            return_tensors="pt",
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden = self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask

    def encode(
        self, prompts: list[str] | str, use_chi_prompt: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts.

        Args:
            prompts: a list of B strings (a single string is treated as a batch of one).
            use_chi_prompt: True for positive prompts (prefix + window selection), False for negative
                prompts and the null caption (plain L-token encoding).

        Returns:
            emb: (B, L, D) last hidden states, encoder dtype.
            mask: (B, L) bool, True on real tokens.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"GemmaTextEncoder.encode: prompts must be a non-empty list of strings, got {prompts!r}"
            )
        L = self.max_sequence_length
        if not use_chi_prompt:
            emb, mask = self._run(list(prompts), L)
            return emb, mask.bool()
        total = self._chi_len + L - 2
        emb, mask = self._run([self.chi_prompt + p for p in prompts], total)
        # BOS, then the last L − 1 positions (last prefix token + up to L − 2 prompt tokens + pads).
        keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(total - L + 1, total)]).to(
            emb.device
        )
        return emb[:, keep], mask[:, keep].bool()

    def null_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoding of the empty caption "" without the chi prefix: (1, L, D), (1, L); cached.

        This is the negative prompt used for CFG at inference, and the natural initialisation of the
        DiT's null-caption table for caption dropout. Whether NVIDIA's training
        script encoded "" with or without the prefix is not documented; we use the inference form.
        """
        if self._null is None or self._null[0].device != self.device or self._null[0].dtype != self.dtype:
            self._null = self.encode([""], use_chi_prompt=False)
        return self._null

    def forward(self, prompts: list[str], use_chi_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Alias of :meth:`encode`."""
        return self.encode(prompts, use_chi_prompt)
