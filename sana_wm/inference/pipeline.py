"""The one inference path: (first image, prompt, camera trajectory, intrinsics) → video.

Used by ``infer.py``, the training sample callback and evaluation. Stages (docs/design/pipeline.md §1):

1. inputs   :func:`plan_trajectory` checks c2w, intrinsics and the frame count (the only place they are checked;
            ``infer.py`` calls it before loading any model): c2w (F₀, 4, 4) → F = 8k + 1 frames (clipped to the
            trajectory, snapped, with a notice); image → resize + centre crop to H × W; intrinsics (input-image
            pixels) → crop-adjusted (F, 4).
2. text     Gemma-2: prompt with the chi prefix (300 tokens) and the negative prompt without it.
3. image    LTX-2 VAE encode of the first frame → normalised latent (1, C, 1, h, w).
4. camera   :func:`sana_wm.camera.camera_tensors` → camera_conditions (T, 20), chunk_plucker (48, T, h, w).
5. stage 1  noise (1, C, T, h, w) from a CPU generator seeded ``seed`` (so a seed means the same video on any
            device); frame 0 replaced by the image latent and held at t = 0; flow-Euler (LTX per-frame timesteps)
            or DPM-Solver++ over the σ grid of ``inference_sigmas(steps, shift)``, CFG [uncond, cond]; optional
            camera guidance (``camera_guidance`` ≠ 1, off in the release) adds a branch whose camera stands still at
            frame 0's pose (:class:`sana_wm.diffusion.CFGDenoiser`).
            The latent state stays float32; the DiT runs in its own dtype.
6. stage 2  optional LTX-2 refiner (:mod:`sana_wm.inference.refiner`) on the stage-1 latent.
7. decode   LTX-2 VAE decode (frame-wise tiled by default) → uint8 frames. After the refiner the sink frame is
            dropped: 161 → 160 frames, and c2w / intrinsics are returned aligned as [1:F]. Without the refiner all
            F frames are kept (the diffusers port's stage-1 behaviour).

Placement: every module move goes through one :class:`sana_wm.inference.placement.ModulePlacement`, which records
where each named module is (``where``), every move (``log``) with its bytes and copy time (``transfers``,
``totals()``), and keeps each offloaded module's weights in (pinned) host memory, so that an offload is free and a
load is one asynchronous copy. ``offload_vae`` keeps the VAE on the offload device except while encoding or decoding;
``offload_text_encoder`` does the same for Gemma-2; ``offload_refiner`` keeps the refiner's modules off the
accelerator except while each runs and moves the stage-1 DiT, text encoder and VAE off before stage 2 (the DiT's
host copy is made when the pipeline is built, so that move costs no copy). ``prefetch_refiner`` (with
``offload_refiner``) encodes the refiner prompt before stage 1 and uploads the refiner transformer on a side stream
while stage 1 runs: the upload is hidden, but stage 1 then holds the transformer's weights too (its peak grows by
their size, which raises the run's peak wherever stage 1's own peak exceeds the refiner's activations).
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sana_wm.camera import (
    as_fxfycxcy,
    camera_tensors,
    crop_intrinsics,
    intrinsics_matrix,
    snap_num_frames,
    validate_c2w,
)
from sana_wm.diffusion import CFGDenoiser, dpm_solver_pp, flow_euler, inference_sigmas
from sana_wm.inference.placement import ModulePlacement
from sana_wm.inference.refiner import LTX2Refiner, is_audio_only
from sana_wm.inference.video import image_to_tensor, load_image, resize_center_crop, video_to_uint8

log = logging.getLogger(__name__)

__all__ = [
    "SAMPLERS",
    "VAE_TILING",
    "ModulePlacement",
    "GenerationResult",
    "InputNames",
    "TrajectoryPlan",
    "plan_trajectory",
    "SanaWMPipeline",
    "default_device",
    "save_result_arrays",
]

#: Stage-1 samplers by NVIDIA's CLI names.
SAMPLERS = {"flow_euler_ltx": flow_euler, "flow_dpm-solver": dpm_solver_pp}
VAE_TILING = ("framewise", "spatial", "none")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class GenerationResult:
    """Output of :meth:`SanaWMPipeline.generate`.

    video: (F_out, H, W, 3) uint8 RGB without overlay (None when ``decode=False``).
    latents: (1, C, T, h, w) float32 CPU final latents (refined when stage 2 ran).
    stage1_latents: (1, C, T, h, w) float32 CPU latents after stage 1.
    c2w: (F_out, 4, 4) float32 poses aligned with ``video`` (input world frame).
    intrinsics: (F_out, 4) float64 (fx, fy, cx, cy) in pixels of the H × W output frames.
    num_frames: F, frames generated (before the refiner's sink drop). frame_offset: first trajectory index shown (1
    after the refiner, else 0). refined: whether stage 2 ran. fps: frame rate. timings: seconds per stage.
    peak_memory: bytes (per stage on CUDA: ``<stage>``; ``overall``; ``process_max_rss`` on every device).
    notices: human-readable adjustments (frame snapping …). stage1_video: decoded stage-1 frames when requested.
    """

    video: np.ndarray | None
    latents: torch.Tensor
    stage1_latents: torch.Tensor
    c2w: np.ndarray
    intrinsics: np.ndarray
    num_frames: int
    frame_offset: int
    refined: bool
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    stage1_video: np.ndarray | None = None


@dataclass(frozen=True)
class InputNames:
    """How error messages and notices of :func:`plan_trajectory` name the inputs (``infer.py`` passes its flags)."""

    c2w: str = "c2w"
    intrinsics: str = "intrinsics"
    num_frames: str = "num_frames"
    no_refine: str = "refine=False"


@dataclass(frozen=True)
class TrajectoryPlan:
    """The checked camera inputs of one generation.

    c2w: (F, 4, 4) float32, the trajectory's first F poses (input world frame). intrinsics: (F, 4) float64
    [fx, fy, cx, cy] in the caller's pixels. num_frames: F = 8k + 1. notices: adjustments made (frame snapping).
    """

    c2w: np.ndarray
    intrinsics: np.ndarray
    num_frames: int
    notices: tuple[str, ...]


def plan_trajectory(
    c2w: Any,
    intrinsics: Any,
    num_frames: int,
    *,
    refine: bool,
    temporal_stride: int = 8,
    clip_to_trajectory: bool = True,
    names: InputNames = InputNames(),
) -> TrajectoryPlan:
    """Check a generation's trajectory, intrinsics and frame count and choose the frames to generate.

    Needs no model, so a caller can check inputs before loading weights. Checks, in order: c2w is a rigid OpenCV
    trajectory (:func:`sana_wm.camera.validate_c2w`); ``num_frames`` is a positive integer; with
    ``clip_to_trajectory=False`` the trajectory has at least ``num_frames`` poses; the frame count snapped to
    ``stride·k + 1`` within the trajectory (:func:`sana_wm.camera.snap_num_frames`) leaves the refiner at least two
    latent frames; the intrinsics have a usable shape and fx, fy > 0 (:func:`sana_wm.camera.as_fxfycxcy`).

    Args:
        c2w: (F₀, 4, 4) camera-to-world poses (numpy, torch or nested lists).
        intrinsics: (4,), (3, 3), (F, 4) or (F, 3, 3).
        num_frames: requested frames.
        refine: whether stage 2 will run.
        temporal_stride: the VAE's temporal compression (8).
        clip_to_trajectory: True → a request past the trajectory's end is clipped to it (with a notice); False → an
            error.
        names: how messages name the inputs.

    Returns:
        :class:`TrajectoryPlan`.

    Raises:
        ValueError (TypeError for non-numeric arrays): naming the input, the bad value and the expected form.
    """
    poses = c2w.detach().cpu().numpy() if isinstance(c2w, torch.Tensor) else np.asarray(c2w)
    validate_c2w(poses, names.c2w)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"{names.num_frames} must be a positive integer (frames to generate); got {num_frames!r}")
    requested, available = int(num_frames), poses.shape[0]
    if requested > available and not clip_to_trajectory:
        raise ValueError(
            f"{names.c2w} gives {available} poses but {names.num_frames} is {requested}; lengthen the trajectory "
            f"or pass {names.num_frames} {available} or less"
        )
    F = snap_num_frames(requested, max_frames=available, temporal_stride=temporal_stride)
    clipped = f", at most the {available} poses of {names.c2w}" if requested > available else ""
    notices = ()
    if F != requested:
        notices = (f"{names.num_frames} {requested} -> {F} (snapped to {F}: the VAE needs {temporal_stride}k+1 frames"
                   f"{clipped})",)
    if refine and F < temporal_stride + 1:
        how = (f"{names.num_frames} is {requested}" if F == requested
               else f"{names.num_frames} {requested} snapped to {temporal_stride}k+1{clipped}")
        raise ValueError(
            f"the refiner needs at least {temporal_stride + 1} frames; got {F} ({how}); raise {names.num_frames} "
            f"or pass {names.no_refine}"
        )
    intr = as_fxfycxcy(intrinsics, F, name=names.intrinsics)
    return TrajectoryPlan(poses[:F].astype(np.float32), intr, F, notices)


@dataclass(frozen=True)
class _Prepared:
    """Output of the "prepare" stage: the planned poses and frame count, intrinsics in model-resolution pixels,
    the first frame (None when a latent was passed in) and the DiT's camera inputs."""

    c2w: np.ndarray
    intrinsics: np.ndarray
    num_frames: int
    notices: tuple[str, ...]
    pixels: torch.Tensor | None
    camera_conditions: torch.Tensor
    chunk_plucker: torch.Tensor
    # the same tensors for a camera standing still at frame 0's pose (camera guidance's unconditional branch)
    still_camera: tuple[torch.Tensor, torch.Tensor] | None = None


class _Stages:
    """Wall time and peak accelerator memory per stage (synchronising CUDA at the boundaries)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.timings: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                self.peaks[name] = int(torch.cuda.max_memory_allocated())
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def memory(self) -> dict[str, int]:
        out = dict(self.peaks)
        if self.peaks:
            out["overall"] = max(self.peaks.values())
        out["process_max_rss"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
        return out


class SanaWMPipeline:
    """Two-stage SANA-WM generation.

    Args:
        dit: :class:`sana_wm.models.SanaWM` (any dtype; its parameters' dtype is the compute dtype).
        codec: :class:`sana_wm.encoders.LatentCodec` (LTX-2 VAE).
        text_encoder: :class:`sana_wm.encoders.GemmaTextEncoder`; may be None if every call passes prompt_embeds.
        refiner: optional :class:`sana_wm.inference.refiner.LTX2Refiner`.
        height, width: model resolution in pixels (704 × 1280 released; multiples of 32).
        flow_shift: default σ-grid shift (9.8 released).
        device: execution device (default CUDA if present).
        offload_device: where offloaded modules wait (CPU).
        offload_vae / offload_text_encoder / offload_refiner: see module docstring.
        vae_tiling: ``"framewise"`` (temporal tiles of ``vae_tile_frames`` with stride ``vae_tile_stride``, the
            release's 96/64), ``"spatial"`` (frame-wise plus diffusers' spatial tiles), ``"none"``.
        placement: a shared :class:`ModulePlacement` (one is created if None).
        fp8: ``"rowwise"`` or ``"tensorwise"`` to run the DiT's per-token GEMMs with float8 weights and activations
            (`sana_wm.fp8.quantize_for_inference`: torchao, a bfloat16 DiT, a CUDA device of compute capability
            8.9+), None (default) for none. The DiT is changed in place, once it is on ``device``; it then stays
            there (not combinable with ``offload_refiner``, which moves it off and back).
        prefetch_refiner: with ``offload_refiner``, upload the refiner transformer during stage 1 (module docstring).
    """

    def __init__(
        self,
        dit: nn.Module,
        codec: nn.Module,
        text_encoder: nn.Module | None = None,
        refiner: LTX2Refiner | None = None,
        *,
        height: int = 704,
        width: int = 1280,
        flow_shift: float = 9.8,
        device: torch.device | str | None = None,
        offload_device: torch.device | str = "cpu",
        offload_vae: bool = False,
        offload_text_encoder: bool = False,
        offload_refiner: bool = False,
        vae_tiling: str = "framewise",
        vae_tile_frames: int = 96,
        vae_tile_stride: int = 64,
        placement: ModulePlacement | None = None,
        fp8: str | None = None,
        prefetch_refiner: bool = False,
    ) -> None:
        if prefetch_refiner and not offload_refiner:
            raise ValueError("prefetch_refiner needs offload_refiner (without it the refiner stays on the device); "
                             "infer.py: add --offload_refiner or drop --prefetch_refiner")
        if fp8 is not None and offload_refiner:
            # Moving float8 weight tensors off the GPU and back is a path nothing here tests.
            raise ValueError("fp8 with offload_refiner is not supported: the float8 DiT stays on the device; "
                             "drop one of them (infer.py: --fp8 / --offload_refiner)")
        s = codec.spatial_compression
        if height % s or width % s or height <= 0 or width <= 0:
            raise ValueError(f"height × width = {height} × {width} must be positive multiples of {s}")
        if vae_tiling not in VAE_TILING:
            raise ValueError(f"vae_tiling must be one of {VAE_TILING}; got {vae_tiling!r}")
        if dit.config.in_channels != codec.latent_channels:
            raise ValueError(
                f"DiT takes {dit.config.in_channels} latent channels but the VAE has {codec.latent_channels}"
            )
        if text_encoder is not None and text_encoder.hidden_size != dit.config.caption_channels:
            raise ValueError(
                f"text encoder width {text_encoder.hidden_size} != DiT caption_channels {dit.config.caption_channels}"
            )
        self.dit, self.codec, self.text_encoder, self.refiner = dit.eval(), codec, text_encoder, refiner
        self.height, self.width, self.flow_shift = int(height), int(width), float(flow_shift)
        self.device = torch.device(device) if device is not None else default_device()
        self.offload_device = torch.device(offload_device)
        self.offload_vae, self.offload_text_encoder = bool(offload_vae), bool(offload_text_encoder)
        self.offload_refiner, self.prefetch_refiner = bool(offload_refiner), bool(prefetch_refiner)
        self.vae_tiling, self.vae_tile_frames, self.vae_tile_stride = vae_tiling, vae_tile_frames, vae_tile_stride
        self.placement = placement or ModulePlacement(pin_memory=self.device.type == "cuda")
        if refiner is not None:  # one placement record and one policy for both stages
            refiner.placement = self.placement
            refiner.offload = self.offload_refiner
            refiner.device = self.device
            refiner.offload_device = self.offload_device
            refiner.home()
        if self.offload_refiner:  # the DiT leaves before every stage 2: make its host copy now, not in the first run
            self.placement.keep_host_copy("dit", self.dit)
        self._home("dit")
        self._home("text_encoder")
        self._home("vae")
        self.fp8 = fp8
        if fp8 is not None:
            from sana_wm.fp8 import quantize_for_inference

            quantize_for_inference(self.dit, fp8, device=self.device)

    # ------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_model_root(
        cls,
        model_root: str | os.PathLike | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        model_config: str | os.PathLike | None = None,
        vae_root: str | os.PathLike | None = None,
        text_encoder_root: str | os.PathLike | None = None,
        refiner_root: str | os.PathLike | None = None,
        use_refiner: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        height: int | None = None,
        width: int | None = None,
        **kwargs: Any,
    ) -> SanaWMPipeline:
        """Load every component from local folders (see :mod:`sana_wm.inference.model_root` for the layouts).

        ``dtype`` defaults to bfloat16 on CUDA and float32 elsewhere (DiT, Gemma-2, VAE and refiner alike).
        Remaining keyword arguments go to the constructor (offload flags, vae_tiling, fp8, …); with ``fp8`` the GPU
        and torchao are checked before any weight is read.
        """
        from sana_wm.checkpoint import load_checkpoint
        from sana_wm.encoders import GemmaTextEncoder, LatentCodec
        from sana_wm.encoders.text import CHI_PROMPT
        from sana_wm.inference.model_root import load_inference_config, resolve_model_paths
        from sana_wm.models import SanaWM

        paths = resolve_model_paths(
            model_root, checkpoint=checkpoint, model_config=model_config, vae_root=vae_root,
            text_encoder_root=text_encoder_root, refiner_root=refiner_root, need_refiner=use_refiner,
        )
        cfg = load_inference_config(paths)
        device = torch.device(device) if device is not None else default_device()
        if kwargs.get("fp8") is not None:
            from sana_wm.fp8 import check_fp8_device

            check_fp8_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

        # Build on `meta` (no 2.6 B-parameter random init), materialise on CPU, then load strictly.
        with torch.device("meta"):
            dit = SanaWM(cfg.model)
        dit.to_empty(device="cpu")
        for buf in dit.buffers():  # unused buffers a checkpoint may lack (null-caption table, recall gate)
            buf.zero_()
        load_checkpoint(dit, paths.dit)
        dit = dit.to(dtype).eval().requires_grad_(False)
        log.info("DiT %s (%s) from %s; config from %s", type(dit).__name__, dtype, paths.dit, cfg.source)

        codec = LatentCodec.from_pretrained(paths.vae, dtype=dtype)
        declared = cfg.vae_stride
        actual = (codec.temporal_compression, codec.spatial_compression, codec.spatial_compression)
        if declared != actual:
            raise ValueError(
                f"{paths.config_file}: vae.vae_stride = {list(declared)} but the VAE in {paths.vae} compresses "
                f"(T, H, W) by {list(actual)}; fix vae_stride in config.yaml"
            )
        text_encoder = GemmaTextEncoder.from_pretrained(
            paths.text_encoder, dtype=dtype, max_sequence_length=cfg.text_max_length,
            chi_prompt=cfg.chi_prompt or CHI_PROMPT,
        )
        placement = kwargs.pop("placement", None) or ModulePlacement(pin_memory=device.type == "cuda")
        refiner = None
        if use_refiner:
            refiner = LTX2Refiner.from_pretrained(
                paths.refiner, dtype=dtype, device=device, offload=kwargs.get("offload_refiner", False),
                offload_device=kwargs.get("offload_device", "cpu"), placement=placement,
            )
        kwargs.setdefault("vae_tiling", "framewise" if cfg.vae_framewise else "none")
        kwargs.setdefault("vae_tile_frames", cfg.vae_tile_frames)
        kwargs.setdefault("vae_tile_stride", cfg.vae_tile_stride)
        return cls(
            dit, codec, text_encoder, refiner, height=height or cfg.height, width=width or cfg.width,
            flow_shift=cfg.flow_shift, device=device, placement=placement, **kwargs,
        )

    # ------------------------------------------------------------------------------------------- placement

    def _module(self, name: str) -> nn.Module | None:
        return {"dit": self.dit, "text_encoder": self.text_encoder, "vae": self.codec}[name]

    def _offloaded_by_default(self, name: str) -> bool:
        return {"dit": False, "text_encoder": self.offload_text_encoder, "vae": self.offload_vae}[name]

    def _home(self, name: str) -> None:
        """Put a stage-1 module where it waits between uses."""
        module = self._module(name)
        if module is not None:
            dev = self.offload_device if self._offloaded_by_default(name) else self.device
            self.placement.move(name, module, dev)

    def _onload(self, name: str) -> None:
        module = self._module(name)
        if module is not None:
            self.placement.move(name, module, self.device)

    def _offload(self, name: str) -> None:
        module = self._module(name)
        if module is not None:
            self.placement.move(name, module, self.offload_device)

    # ------------------------------------------------------------------------------------------- inputs

    def prepare_image(self, image) -> tuple[torch.Tensor, Any]:
        """Image (path, PIL, uint8 (h, w, 3) array, or a (1, 3, 1, H, W) / (3, H, W) tensor in [−1, 1] at model
        resolution) → ((1, 3, 1, H, W) float tensor, CropGeometry or None when no resize/crop happened)."""
        if image is None:
            raise ValueError("an image is required (or pass image_latent=)")
        if isinstance(image, torch.Tensor):
            t = image[:, :, None] if image.ndim == 4 else image[None, :, None] if image.ndim == 3 else image
            if t.ndim != 5 or t.shape[:3] != (1, 3, 1) or tuple(t.shape[3:]) != (self.height, self.width):
                raise ValueError(
                    f"image tensor must be (1, 3, 1, {self.height}, {self.width}) or (3, {self.height}, {self.width}) "
                    f"in [-1, 1]; got {tuple(image.shape)}"
                )
            return t.float(), None
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        pixels, geom = resize_center_crop(image, self.height, self.width)
        return image_to_tensor(pixels), geom

    def encode_prompt(self, prompt: str | None, negative_prompt: str | None = ""):
        """Gemma-2 encodings (emb (1, L, D), mask (1, L)) of the prompt (chi prefix) and of the negative prompt (no
        prefix); either is None when its text is None."""
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder; pass prompt_embeds")
        self._onload("text_encoder")
        try:
            cond = self.text_encoder.encode([prompt], use_chi_prompt=True) if prompt is not None else None
            uncond = (
                self.text_encoder.encode([negative_prompt], use_chi_prompt=False) if negative_prompt is not None else None
            )
        finally:
            if self.offload_text_encoder:
                self._offload("text_encoder")
        return cond, uncond

    def _set_vae_tiling(self) -> None:
        if self.vae_tiling == "none":
            self.codec.disable_framewise_tiling()
            self.codec.vae.use_tiling = False
            return
        self.codec.enable_framewise_tiling(self.vae_tile_frames, self.vae_tile_stride)
        if self.vae_tiling == "spatial":
            self.codec.vae.enable_tiling()
        else:
            self.codec.vae.use_tiling = False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (1, C, T, h, w) → video (1, 3, 8(T − 1) + 1, H, W) float32 in [−1, 1] on CPU."""
        self._onload("vae")
        try:
            self._set_vae_tiling()
            return self.codec.decode(latents.to(self.device)).cpu()
        finally:
            if self.offload_vae:
                self._offload("vae")

    # ------------------------------------------------------------------------------------------- generate

    @torch.no_grad()
    def generate(
        self,
        image,
        prompt: str,
        c2w,
        intrinsics,
        *,
        num_frames: int = 161,
        fps: float = 16.0,
        num_steps: int = 60,
        cfg_scale: float = 5.0,
        flow_shift: float | None = None,
        sampler: str = "flow_euler_ltx",
        seed: int = 42,
        negative_prompt: str = "",
        refine: bool | None = None,
        refiner_block_size: int | None = None,
        refiner_kv_max_frames: int = 11,
        refiner_seed: int = 42,
        decode: bool = True,
        decode_stage1: bool = False,
        prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        negative_prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_latent: torch.Tensor | None = None,
        sigmas: torch.Tensor | None = None,
        progress: bool = True,
        camera_guidance: float = 1.0,
    ) -> GenerationResult:
        """Generate one video.

        Args:
            image: first frame (see :meth:`prepare_image`); ignored when ``image_latent`` is given.
            prompt: user prompt (stage-1 chi prefix is added here; the refiner sees it raw).
            c2w: (F₀, 4, 4) OpenCV camera-to-world poses (any world frame; made relative to frame 0).
            intrinsics: (4,), (3, 3), (F, 4) or (F, 3, 3) in pixels of the *input* image (crop-adjusted here); in
                model-resolution pixels when ``image`` is a tensor or ``image_latent`` is given.
            num_frames: requested frames; clipped to F₀ and snapped to 8k + 1 (a notice is added).
            fps: output frame rate (also the refiner's RoPE time scale).
            num_steps, cfg_scale, flow_shift (None → the model's), sampler (``flow_euler_ltx`` | ``flow_dpm-solver``),
            seed, negative_prompt: stage-1 sampling.
            refine: run stage 2 (default: when a refiner is loaded).
            refiner_block_size: None (single-shot sink-bidirectional, NVIDIA's default) or AR blocks (3).
            refiner_kv_max_frames, refiner_seed: stage-2 settings (11, 42).
            decode: decode to pixels. decode_stage1: also decode the stage-1 latent (``stage1_video``).
            prompt_embeds / negative_prompt_embeds: precomputed Gemma-2 (emb (1, L, D), mask (1, L)).
            image_latent: precomputed normalised first-frame latent (1, C, 1, h, w).
            sigmas: explicit stage-1 σ grid (overrides num_steps / flow_shift; e.g. a truncated grid to time a few
                steps of a long schedule).
            progress: tqdm bars.
            camera_guidance: camera guidance scale (1 = off, as released): each step also predicts the video for a
                camera that stands still at frame 0's pose and moves the prediction away from it by this factor,
                one more DiT batch per step (docs/inference.md).
        """
        stages = _Stages(self.device)
        refine = self._check_settings(sampler, num_steps, refine, camera_guidance)
        guidance = cfg_scale != 1.0
        prefetch = refine and self.prefetch_refiner
        with stages("prepare"):
            inputs = self._prepare_inputs(image, c2w, intrinsics, num_frames, refine, image_latent,
                                          still_camera=camera_guidance != 1.0)
        with stages("text_encoder"):
            cond, uncond = self._text_embeddings(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance)
        refiner_text = None
        if prefetch:  # Gemma-3 runs before the refiner transformer is uploaded, never beside it
            with stages("refiner_text"):
                refiner_text = self.refiner.encode_prompt(prompt)
        with stages("vae_encode"):
            z0 = self._first_frame_latent(inputs.pixels, image_latent)
        try:
            with stages("stage1"):
                stage1 = self._stage1(inputs, z0, cond, uncond, cfg_scale=cfg_scale, sampler=sampler, seed=seed,
                                      sigmas=sigmas, num_steps=num_steps, flow_shift=flow_shift, progress=progress,
                                      prefetch=prefetch, camera_guidance=camera_guidance)
            final = stage1
            if refine:
                with stages("stage2"):
                    final = self._stage2(stage1, prompt, refiner_text, fps=fps, block_size=refiner_block_size,
                                         kv_max_frames=refiner_kv_max_frames, seed=refiner_seed, progress=progress)
        finally:
            if prefetch:  # a failed stage must not leave the upload holding device memory
                self.placement.cancel_prefetch("refiner.transformer")
        offset = 1 if refine else 0  # the refiner's sink frame is not part of the video
        video = stage1_video = None
        if decode:
            with stages("vae_decode"):
                video = video_to_uint8(self.decode(final))[offset:]
            if decode_stage1 and refine:
                with stages("vae_decode_stage1"):
                    stage1_video = video_to_uint8(self.decode(stage1))

        F = inputs.num_frames
        return GenerationResult(
            video=video,
            latents=final,
            stage1_latents=stage1,
            c2w=inputs.c2w[offset:F],
            intrinsics=np.asarray(inputs.intrinsics)[offset:F],
            num_frames=F,
            frame_offset=offset,
            refined=refine,
            fps=float(fps),
            timings=stages.timings,
            peak_memory=stages.memory(),
            notices=list(inputs.notices),
            stage1_video=stage1_video,
        )

    def _check_settings(self, sampler: str, num_steps: int, refine: bool | None, camera_guidance: float = 1.0) -> bool:
        """Check the sampling settings; returns whether stage 2 runs."""
        real = isinstance(camera_guidance, numbers.Real) and not isinstance(camera_guidance, bool)
        if not (real and math.isfinite(camera_guidance) and camera_guidance >= 0):
            raise ValueError(f"camera_guidance must be a finite number >= 0 (1 = off); got {camera_guidance!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}; got {sampler!r}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
        refine = (self.refiner is not None) if refine is None else bool(refine)
        if refine and self.refiner is None:
            raise ValueError("refine=True but no refiner is loaded")
        return refine

    def _latent_hw(self) -> tuple[int, int]:
        s = self.codec.spatial_compression
        return self.height // s, self.width // s

    def _prepare_inputs(self, image, c2w, intrinsics, num_frames, refine: bool, image_latent,
                        still_camera: bool = False) -> _Prepared:
        """Stage "prepare": the trajectory plan (the one place generation inputs are checked), the first frame at
        model resolution, crop-adjusted intrinsics and the DiT's camera tensors (``still_camera``: also those of a
        camera that stays at frame 0's pose, with the same intrinsics)."""
        stride = self.codec.temporal_compression
        plan = plan_trajectory(c2w, intrinsics, num_frames, refine=refine, temporal_stride=stride)
        pixels = geom = None
        if image_latent is None:
            pixels, geom = self.prepare_image(image)
        intr = plan.intrinsics if geom is None else crop_intrinsics(plan.intrinsics, geom)
        cam, plucker = camera_tensors(plan.c2w, intr, (self.height, self.width), self._latent_hw(), stride)
        still = None
        if still_camera:
            still_c2w = np.repeat(np.asarray(plan.c2w)[:1], len(plan.c2w), axis=0)
            still = camera_tensors(still_c2w, intr, (self.height, self.width), self._latent_hw(), stride)
        return _Prepared(plan.c2w, intr, plan.num_frames, plan.notices, pixels, cam, plucker, still)

    def _text_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance: bool):
        """Stage "text_encoder": (cond, uncond) Gemma-2 embeddings, encoding only what was not passed in; uncond is
        None without guidance."""
        cond, uncond = prompt_embeds, negative_prompt_embeds if guidance else None
        if cond is None or (guidance and uncond is None):
            if self.text_encoder is None:
                raise ValueError("no text encoder: pass prompt_embeds (and negative_prompt_embeds when cfg_scale != 1)")
            enc_cond, enc_uncond = self.encode_prompt(
                prompt if cond is None else None, negative_prompt if guidance and uncond is None else None
            )
            cond = enc_cond if cond is None else cond
            uncond = enc_uncond if uncond is None else uncond
        return cond, uncond

    def _first_frame_latent(self, pixels: torch.Tensor | None, image_latent: torch.Tensor | None) -> torch.Tensor:
        """Stage "vae_encode": the normalised latent (1, C, 1, h, w) of the first frame (or the one passed in)."""
        if image_latent is None:
            self._onload("vae")
            try:
                z0 = self.codec.encode(pixels.to(self.device))
            finally:
                if self.offload_vae:
                    self._offload("vae")
        else:
            z0 = image_latent
        C, (h, w) = self.codec.latent_channels, self._latent_hw()
        if tuple(z0.shape) != (1, C, 1, h, w):
            raise ValueError(f"image latent must be (1, {C}, 1, {h}, {w}); got {tuple(z0.shape)}")
        return z0

    def _stage1(self, inputs: _Prepared, z0, cond, uncond, *, cfg_scale, sampler, seed, sigmas, num_steps, flow_shift,
                progress, prefetch: bool = False, camera_guidance: float = 1.0) -> torch.Tensor:
        """Stage 1: seeded CPU noise, frame 0 held at the image latent, CFG denoising with the camera inputs shared by
        the text branches (and, with camera guidance, a still camera's branch; ``prefetch``: the refiner transformer
        uploads meanwhile). Returns (1, C, T, h, w) float32 CPU latents."""
        self._onload("dit")
        if prefetch:
            self.placement.prefetch("refiner.transformer", self.refiner.transformer, self.device, skip=is_audio_only)
        dev = self.device
        C, (h, w), T = self.codec.latent_channels, self._latent_hw(), inputs.camera_conditions.shape[0]
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn((1, C, T, h, w), generator=gen, dtype=torch.float32).to(dev)

        def emb(pair):
            return {"y": pair[0].to(dev), "mask": pair[1].to(dev)}

        denoise = CFGDenoiser(
            self.dit, cfg_scale, cond=emb(cond), uncond=emb(uncond) if cfg_scale != 1.0 else None,
            shared={"camera_conditions": inputs.camera_conditions[None].to(dev),
                    "chunk_plucker": inputs.chunk_plucker[None].to(dev)},
            camera_scale=camera_guidance,
            camera_uncond=None if inputs.still_camera is None else {
                "camera_conditions": inputs.still_camera[0][None].to(dev),
                "chunk_plucker": inputs.still_camera[1][None].to(dev)},
        )
        if sigmas is None:
            sigmas = inference_sigmas(num_steps, self.flow_shift if flow_shift is None else float(flow_shift))
        latents = SAMPLERS[sampler](denoise, noise, sigmas, condition_latent=z0.to(dev, torch.float32), progress=progress)
        return latents.float().cpu()

    def _stage2(self, stage1: torch.Tensor, prompt, prompt_embeds, *, fps, block_size, kv_max_frames, seed,
                progress) -> torch.Tensor:
        """Stage 2: the LTX-2 refiner on the stage-1 latents (stage-1 modules leave the accelerator first when
        ``offload_refiner``; ``prompt_embeds`` when the refiner prompt was encoded already). Returns float32 CPU
        latents of the same shape."""
        if self.offload_refiner:
            for name in ("dit", "text_encoder", "vae"):
                self._offload(name)
        return self.refiner.refine(
            stage1, prompt, prompt_embeds=prompt_embeds, fps=fps, block_size=block_size, kv_max_frames=kv_max_frames,
            seed=seed, progress=progress,
        ).float().cpu()

    __call__ = generate


def save_result_arrays(result: GenerationResult, stem: str | os.PathLike) -> dict[str, Path]:
    """Write ``<stem>_c2w.npy`` (F_out, 4, 4) and ``<stem>_intrinsics.npy`` (F_out, 3, 3) K in output pixels."""
    stem = Path(stem)
    K = intrinsics_matrix(result.intrinsics).astype(np.float32)
    out = {"c2w": stem.with_name(stem.name + "_c2w.npy"), "intrinsics": stem.with_name(stem.name + "_intrinsics.npy")}
    np.save(out["c2w"], result.c2w.astype(np.float32))
    np.save(out["intrinsics"], K)
    return out
