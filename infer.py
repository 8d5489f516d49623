"""Generate a camera-controlled video: image + prompt + camera path → mp4 (SANA-WM stage 1 + LTX-2 refiner).

    python infer.py --model_root SANA-WM_bidirectional --text_encoder_root gemma-2-2b-it \\
        --image first.png --prompt prompt.txt --action "w-60,wl-40,w-60" --intrinsics K.npy --output_dir out/

Without --intrinsics, K is estimated from --image by Pi3X (--intrinsics_estimator_weights, a local folder).

Every input is checked before any model is loaded; a bad one ends the run with exit status 2 and a one-line reason.
Outputs in --output_dir: <name>.mp4 (H.264, --fps), <name>_c2w.npy (F, 4, 4) and <name>_intrinsics.npy (F, 3, 3)
aligned with the video frames (intrinsics in output pixels), and <name>.json (timings per stage, peak memory,
settings). See docs/inference.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("infer")

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class InputError(ValueError):
    """A user input is unusable; the message is the one-line reason shown to the user."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and a non-zero exit, like every other input check here."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="infer.py", description=__doc__.split("\n\n")[0])
    w = p.add_argument_group("weights (local folders only; nothing is downloaded)")
    w.add_argument("--model_root", help="release layout: config.yaml, dit/*.safetensors, vae/, refiner/")
    w.add_argument("--checkpoint", help="DiT .safetensors to use instead of <model_root>/dit (ours or official)")
    w.add_argument("--model_config", help="YAML/JSON describing the DiT when the checkpoint carries no config")
    w.add_argument("--vae_root", help="LTX-2 VAE folder (default <model_root>/vae)")
    w.add_argument("--text_encoder_root", help="stage-1 Gemma-2-2B-it (default <model_root>/text_encoder)")
    w.add_argument("--refiner_root", help="LTX-2 refiner folder (default <model_root>/refiner)")

    i = p.add_argument_group("inputs")
    i.add_argument("--image", required=True, help="first frame; resized and centre-cropped to the model size")
    i.add_argument("--prompt", required=True, help="UTF-8 text file with the prompt")
    i.add_argument("--negative_prompt", default="", help="negative prompt text (default empty)")
    cam = i.add_mutually_exclusive_group()
    cam.add_argument("--action", help='action DSL, e.g. "w-60,wl-40,none-8" (docs/inference.md)')
    cam.add_argument("--camera", help="(F, 4, 4) OpenCV camera-to-world .npy")
    i.add_argument("--action_scheme", choices=["release", "unified"], default="release",
                   help="key mapping of --action; 'unified' (a/d yaw, j/l strafe, smoothing) is opt-in")
    i.add_argument("--translation_speed", type=float, default=None,
                   help="units per frame for --action (default 0.05; 0.025 with --action_scheme unified)")
    i.add_argument("--rotation_speed_deg", type=float, default=None,
                   help="degrees per frame for --action (default 1.2; 0.6 with --action_scheme unified)")
    i.add_argument("--intrinsics", help=".npy: (4,) fx,fy,cx,cy, (3,3) K, (F,4) or (F,3,3) in input-image pixels; "
                                        "without it K is estimated from --image (--intrinsics_estimator_weights)")
    i.add_argument("--intrinsics_estimator", choices=["pi3x", "pi3"], default="pi3x",
                   help="estimator of K when --intrinsics is not given (annotation package)")
    i.add_argument("--intrinsics_estimator_weights", metavar="PATH",
                   help="local folder with the estimator's official model.safetensors (+ config.json), or the file; "
                        "the Pi3 / Pi3X weights are CC BY-NC 4.0 (non-commercial)")

    s = p.add_argument_group("sampling")
    s.add_argument("--num_frames", type=int, default=161, help="frames to generate, snapped to 8k+1 (161)")
    s.add_argument("--fps", type=float, default=16.0)
    s.add_argument("--step", type=int, default=60, help="stage-1 sampling steps")
    s.add_argument("--cfg_scale", type=float, default=5.0)
    s.add_argument("--camera_cfg_scale", type=float, default=1.0,
                   help="camera guidance: 1 = off (as released); s > 1 also predicts a still camera each step and "
                        "moves away from it by s (one more DiT batch per step; docs/inference.md)")
    s.add_argument("--flow_shift", type=float, default=None, help="σ-grid shift (default from config.yaml, 9.8)")
    s.add_argument("--sampling_algo", choices=["flow_euler_ltx", "flow_dpm-solver"], default="flow_euler_ltx")
    s.add_argument("--seed", type=int, default=42, help="stage-1 noise seed")
    s.add_argument("--height", type=int, default=None, help="override the model resolution (multiple of the VAE's spatial compression, 32 for LTX-2)")
    s.add_argument("--width", type=int, default=None)

    r = p.add_argument_group("stage 2 (LTX-2 refiner)")
    r.add_argument("--no_refiner", action="store_true", help="decode the stage-1 latents directly")
    r.add_argument("--refiner_block_size", type=int, default=0,
                   help="0 = NVIDIA's default single-shot sink-bidirectional pass; N = autoregressive blocks of N "
                        "latent frames (3 in the diffusers port)")
    r.add_argument("--refiner_kv_max_frames", type=int, default=11, help="sink + history frames in the window")
    r.add_argument("--refiner_seed", type=int, default=42)

    o = p.add_argument_group("memory and output")
    o.add_argument("--offload_vae", action="store_true", help="keep the VAE on the CPU except while it runs")
    o.add_argument("--compile", action="store_true",
                   help="torch.compile each DiT block (GPU: ~1.9x faster stage 1 after a one-off compile, bench/RESULTS.md)")
    o.add_argument("--fp8", nargs="?", const="rowwise", choices=["rowwise", "tensorwise"], default=None,
                   help="stage-1 DiT GEMMs in float8 (torchao: pip install 'sana-wm[fp8]'; a GPU of compute "
                        "capability 8.9+, bf16). Scaling per token and channel (rowwise, the default) or per tensor "
                        "(tensorwise: faster, less exact); see docs/inference.md")
    o.add_argument("--offload_refiner", action="store_true",
                   help="refiner modules on the CPU except while each runs; stage-1 modules leave the GPU for stage 2")
    o.add_argument("--offload_text_encoder", action="store_true", help="Gemma-2 on the CPU except while encoding")
    o.add_argument("--prefetch_refiner", action="store_true",
                   help="with --offload_refiner: encode the refiner prompt before stage 1 and upload the refiner "
                        "during stage 1 (hides the upload; stage 1 then also holds the refiner's weights)")
    o.add_argument("--vae_tiling", choices=["framewise", "spatial", "none"], default=None,
                   help="VAE decode tiling (default from config.yaml: frame-wise 96/64)")
    o.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default cuda if available)")
    o.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    o.add_argument("--no_action_overlay", action="store_true", help="do not draw the WASD + joystick overlay")
    o.add_argument("--save_stage1", action="store_true", help="also write the unrefined stage-1 video")
    o.add_argument("--output_dir", default="outputs")
    o.add_argument("--output_name", default=None, help="file stem (default: the image file's stem)")
    return p


# ---------------------------------------------------------------------------------------------------------------------
# Input checks (no model is touched here)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    image: object  # PIL.Image
    prompt: str
    c2w: np.ndarray  # (F0, 4, 4), the whole trajectory (the overlay reads the pose after the last frame)
    intrinsics: np.ndarray  # (F, 4) in input-image pixels
    num_frames: int
    output_dir: Path
    stem: str
    notices: list[str]
    intrinsics_estimate: dict | None = None  # what estimated K when --intrinsics was not given (see the JSON)


def _read_prompt(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--prompt {path!r}: file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"--prompt {path!r}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(f"--prompt {path!r}: cannot read ({err.strerror})") from None
    text = text.strip()
    if not text:
        raise InputError(f"--prompt {path!r}: the file is empty; write the prompt text into it")
    return text


def _load_npy(path: str, flag: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{flag} {path!r}: file not found") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{flag} {path!r}: not a readable .npy array ({err})") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{flag} {path!r}: expected a numeric array, got {getattr(arr, 'dtype', type(arr))}")
    return arr


def _trajectory(args) -> tuple[np.ndarray, str]:
    """The trajectory as given (checked later, by the pipeline's plan) and how messages name it."""
    from sana_wm.camera import action_to_c2w

    if args.action is None and args.camera is None:
        raise InputError("one of --action (DSL string) or --camera (.npy of (F, 4, 4) c2w) is required")
    if args.action is not None:
        try:
            c2w = action_to_c2w(args.action, args.translation_speed, args.rotation_speed_deg, scheme=args.action_scheme)
        except (TypeError, ValueError) as err:
            raise InputError(f"--action: {err}") from None
        return c2w, "--action"
    return _load_npy(args.camera, "--camera").astype(np.float64), f"--camera {args.camera!r}"


def _intrinsics(args, image) -> tuple[np.ndarray, str, dict | None]:
    """The intrinsics as given or estimated (checked later, by the pipeline's plan), how messages name them, and the
    estimate's record (None when given)."""
    if args.intrinsics is None:
        estimate = estimate_intrinsics(image, args.intrinsics_estimator, args.intrinsics_estimator_weights,
                                       device=args.device, fps=args.fps)
        return np.asarray(estimate["K"]), f"intrinsics estimated by {args.intrinsics_estimator}", estimate
    return _load_npy(args.intrinsics, "--intrinsics"), f"--intrinsics {args.intrinsics!r}", None


_PASS_INTRINSICS = ("pass --intrinsics <file.npy> with (4,) [fx, fy, cx, cy], (3, 3) K, (F, 4) or (F, 3, 3) in "
                    "input-image pixels")


def estimate_intrinsics(image, estimator: str = "pi3x", weights: str | None = None, device: str | None = None,
                        fps: float = 16.0) -> dict:
    """K of ``image`` (PIL, in its own pixels) from the annotation package's estimator, gated on the horizontal FOV.

    The single-image path needs a feed-forward model (Pi3X / Pi3: K from the predicted rays); the weight-free COLMAP
    backend cannot calibrate from one image, so without ``weights`` this is an input error, never a default K.

    Returns the JSON record: estimator, version, licence, weights, image_hw, K (3×3), hfov_deg, vfov_deg.

    Raises:
        InputError: no weights, unusable weights, a failed estimate, or a horizontal or vertical FOV outside
            the annotation pipeline's FOV range (``annotation.quality.QualityConfig``; the message gives the FOV
            and the ways out).
    """
    if weights is None:
        raise InputError(
            f"--intrinsics is required unless K can be estimated from the image: {_PASS_INTRINSICS}, or pass "
            f"--intrinsics_estimator_weights <folder with the {estimator} model.safetensors (+ config.json)> to "
            f"estimate K with {estimator} (weights CC BY-NC 4.0, non-commercial)")
    from annotation.estimators import EstimationError, build_estimator
    from annotation.quality import QualityConfig
    from sana_wm.camera import fov_deg

    try:
        model = build_estimator(estimator, weights=weights, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"--intrinsics_estimator_weights {weights!r}: {err}") from None
    frame = np.asarray(image.convert("RGB"), dtype=np.uint8)
    try:
        result = model.estimate(frame[None], fps)
    except (EstimationError, ValueError) as err:
        raise InputError(f"estimating the intrinsics of --image with {estimator} failed ({err}); "
                         f"{_PASS_INTRINSICS}") from None
    del model  # the estimator's weights leave memory before the generator loads
    K = np.asarray(result.K[0], dtype=np.float64)
    height, width = frame.shape[:2]
    hfov, vfov = (float(v) for v in fov_deg(K, height, width))
    limits = QualityConfig()
    lo, hi = limits.fov_min_deg, limits.fov_max_deg
    # Both axes are gated, as the reference CLI does; the horizontal one is the annotation pipeline's filter.
    for axis, fov, focal, extent, size in (("horizontal", hfov, "fx", K[0, 0], f"{width}-px-wide"),
                                           ("vertical", vfov, "fy", K[1, 1], f"{height}-px-high")):
        if not lo <= fov <= hi:
            raise InputError(
                f"the intrinsics estimated by {result.estimator} give a {axis} FOV of {fov:.1f}° ({focal} = "
                f"{extent:.1f} px for a {size} image), outside [{lo:g}°, {hi:g}°]: the estimate is not trusted; "
                f"{_PASS_INTRINSICS}, or pass other --intrinsics_estimator_weights")
    return {
        "estimator": result.estimator, "version": result.version, "licence": result.licence, "weights": str(weights),
        "image_hw": [int(height), int(width)], "K": K.tolist(), "hfov_deg": hfov, "vfov_deg": vfov,
    }


def _check_fp8(args) -> None:
    """--fp8 needs torchao, a CUDA GPU of compute capability 8.9+ and a bf16 DiT; checked before any model loads."""
    import torch

    from sana_wm.fp8 import Fp8Unavailable, check_fp8_device

    if args.offload_refiner:
        raise InputError("--fp8 with --offload_refiner is not supported (the float8 DiT stays on the GPU); drop one")
    if args.dtype not in ("auto", "bf16"):
        raise InputError(f"--fp8 needs the DiT in bfloat16; got --dtype {args.dtype} (use bf16 or auto)")
    try:
        check_fp8_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except Fp8Unavailable as err:
        raise InputError(f"--fp8: {err}") from None


def _output_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test_"):
            pass
    except OSError as err:
        raise InputError(f"--output_dir {path!r}: cannot write there ({err.strerror or err})") from None
    return out


def check_inputs(args) -> Inputs:
    """Validate every user input (cheap: no model is loaded). Raises :class:`InputError` with a one-line reason.

    The trajectory, intrinsics and frame count are checked by the pipeline's own
    :func:`~sana_wm.inference.pipeline.plan_trajectory` (named by their flags here), so the CLI and the library
    accept exactly the same inputs; a trajectory shorter than --num_frames is an error here, not clipped.
    """
    from sana_wm.inference.pipeline import InputNames, plan_trajectory
    from sana_wm.inference.video import load_image

    for flag, value, ok, want in (
        ("--fps", args.fps, args.fps > 0, "> 0"),
        ("--step", args.step, args.step >= 1, ">= 1"),
        ("--cfg_scale", args.cfg_scale, args.cfg_scale >= 0, ">= 0"),
        ("--camera_cfg_scale", args.camera_cfg_scale, 0 <= args.camera_cfg_scale < float("inf"),
         "a finite number >= 0 (1 = off)"),
        ("--refiner_block_size", args.refiner_block_size, args.refiner_block_size >= 0, ">= 0 (0 = single shot)"),
        ("--refiner_kv_max_frames", args.refiner_kv_max_frames, args.refiner_kv_max_frames >= 2, ">= 2"),
    ):
        if not ok:
            raise InputError(f"{flag} must be {want}; got {value}")
    if args.flow_shift is not None and not args.flow_shift > 0:
        raise InputError(f"--flow_shift must be > 0; got {args.flow_shift}")
    for flag in ("--height", "--width"):
        v = getattr(args, flag[2:])
        if v is not None and (v <= 0 or v % 8):
            # the exact multiple is the VAE's spatial compression (32 for LTX-2), checked once the VAE is loaded
            raise InputError(f"{flag} must be a positive multiple of 8 (of the VAE's spatial compression); got {v}")
    if args.action is None and (args.translation_speed is not None or args.rotation_speed_deg is not None):
        raise InputError("--translation_speed / --rotation_speed_deg apply to --action only")
    if args.prefetch_refiner and args.no_refiner:
        raise InputError("--prefetch_refiner uploads the refiner, which --no_refiner leaves out; drop one")
    if args.prefetch_refiner and not args.offload_refiner:
        raise InputError("--prefetch_refiner needs --offload_refiner (without it the refiner stays on the GPU); "
                         "add --offload_refiner or drop --prefetch_refiner")
    if args.fp8 is not None:
        _check_fp8(args)

    output_dir = _output_dir(args.output_dir)
    prompt = _read_prompt(args.prompt)
    try:
        image = load_image(args.image)
    except ValueError as err:
        raise InputError(str(err)) from None
    c2w, c2w_source = _trajectory(args)
    intrinsics, intrinsics_source, estimate = _intrinsics(args, image)
    names = InputNames(c2w=c2w_source, intrinsics=intrinsics_source, num_frames="--num_frames", no_refine="--no_refiner")
    try:
        plan = plan_trajectory(c2w, intrinsics, args.num_frames, refine=not args.no_refiner, clip_to_trajectory=False,
                               names=names)
    except (TypeError, ValueError) as err:
        raise InputError(str(err)) from None
    stem = args.output_name or Path(args.image).stem
    if not stem or os.sep in stem:
        raise InputError(f"--output_name must be a plain file stem; got {stem!r}")
    notices = list(plan.notices)
    if estimate is not None:
        K = estimate["K"]
        notices.insert(0, f"intrinsics estimated by {estimate['estimator']} ({estimate['licence']} weights) from "
                          f"--image: fx={K[0][0]:.1f} fy={K[1][1]:.1f} cx={K[0][2]:.1f} cy={K[1][2]:.1f}, horizontal "
                          f"FOV {estimate['hfov_deg']:.1f}°, vertical {estimate['vfov_deg']:.1f}°")
    return Inputs(image, prompt, c2w, plan.intrinsics, plan.num_frames, output_dir, stem, notices, estimate)


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def _dtype(name: str):
    import torch

    if name == "auto":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def run(args, inputs: Inputs) -> dict:
    """Load the models, generate, write the outputs; returns the JSON record."""
    import torch

    from sana_wm.inference.overlay import derive_controls, draw_overlay
    from sana_wm.inference.pipeline import SanaWMPipeline, default_device, save_result_arrays
    from sana_wm.inference.video import write_mp4

    device = torch.device(args.device) if args.device else default_device()
    kwargs = dict(
        offload_vae=args.offload_vae, offload_refiner=args.offload_refiner, offload_text_encoder=args.offload_text_encoder,
        prefetch_refiner=args.prefetch_refiner,
    )
    if args.vae_tiling is not None:
        kwargs["vae_tiling"] = args.vae_tiling
    t0 = time.perf_counter()
    pipe = SanaWMPipeline.from_model_root(
        args.model_root, checkpoint=args.checkpoint, model_config=args.model_config, vae_root=args.vae_root,
        text_encoder_root=args.text_encoder_root, refiner_root=args.refiner_root, use_refiner=not args.no_refiner,
        device=device, dtype=_dtype(args.dtype), height=args.height, width=args.width, fp8=args.fp8, **kwargs,
    )
    if args.compile:
        from sana_wm.parallel import apply_compile

        apply_compile(pipe.dit)
    load_s = time.perf_counter() - t0
    moves_before = len(pipe.placement.transfers)
    result = pipe.generate(
        inputs.image, inputs.prompt, inputs.c2w, inputs.intrinsics, num_frames=inputs.num_frames, fps=args.fps,
        num_steps=args.step, cfg_scale=args.cfg_scale, flow_shift=args.flow_shift, sampler=args.sampling_algo,
        seed=args.seed, negative_prompt=args.negative_prompt, refine=not args.no_refiner,
        refiner_block_size=args.refiner_block_size or None, refiner_kv_max_frames=args.refiner_kv_max_frames,
        refiner_seed=args.refiner_seed, decode_stage1=args.save_stage1, camera_guidance=args.camera_cfg_scale,
    )
    for note in result.notices:
        print(f"note: {note}", file=sys.stderr)

    t1 = time.perf_counter()
    video = result.video
    if not args.no_action_overlay:
        scheme = args.action_scheme if args.action is not None else "release"
        # One pose past the clip (when the trajectory has it) so the last frame shows its own step.
        controls = derive_controls(inputs.c2w[: result.num_frames + 1], scheme=scheme)
        controls = controls[result.frame_offset : result.num_frames]
        video = draw_overlay(video, controls)
    stem = inputs.output_dir / inputs.stem
    video_path = write_mp4(stem.with_suffix(".mp4"), video, args.fps)
    arrays = save_result_arrays(result, stem)
    stage1_path = None
    if result.stage1_video is not None:
        stage1_path = write_mp4(stem.with_name(inputs.stem + "_stage1.mp4"), result.stage1_video, args.fps)
    write_s = time.perf_counter() - t1

    generation_s = sum(result.timings.values())
    duration = len(video) / args.fps
    record = {
        "video": str(video_path),
        "stage1_video": str(stage1_path) if stage1_path else None,
        "c2w": str(arrays["c2w"]),
        "intrinsics": str(arrays["intrinsics"]),
        "frames_generated": result.num_frames,
        "frames_in_video": int(len(video)),
        "fps": args.fps,
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "refined": result.refined,
        "device": str(pipe.device),
        "dtype": str(next(pipe.dit.parameters()).dtype).replace("torch.", ""),
        "timings_s": {"load": load_s, **result.timings, "write": write_s, "generation_total": generation_s},
        "realtime_factor": generation_s / duration if duration > 0 else None,
        "peak_memory_bytes": result.peak_memory,
        # module moves during generation: count, bytes host→device / device→host, seconds spent on the copies
        "offload": pipe.placement.totals(since=moves_before),
        "notices": inputs.notices + result.notices,
        # where K came from: a file (e.g. the annotation's <clip>.intrinsics.npy) or the estimator on --image
        "intrinsics_source": ({"kind": "file", "path": str(Path(args.intrinsics).resolve())} if args.intrinsics
                              else {"kind": "estimated", "estimator": inputs.intrinsics_estimate["estimator"]}),
        "intrinsics_estimate": inputs.intrinsics_estimate,
        "args": {k: v for k, v in vars(args).items()},
    }
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status (0 ok, 2 bad input, 1 failure while generating)."""
    from sana_wm.console import quiet_third_party
    from sana_wm.inference.model_root import ModelRootError, resolve_model_paths

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    try:
        args = build_parser().parse_args(argv)
        inputs = check_inputs(args)
        # Weight files are checked (not loaded) before anything heavy happens, so a typo fails in a second.
        resolve_model_paths(
            args.model_root, checkpoint=args.checkpoint, model_config=args.model_config, vae_root=args.vae_root,
            text_encoder_root=args.text_encoder_root, refiner_root=args.refiner_root, need_refiner=not args.no_refiner,
        )
    except (InputError, ModelRootError) as err:
        print(f"infer.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in inputs.notices:
        print(f"note: {note}", file=sys.stderr)
    try:
        record = run(args, inputs)
    except (ModelRootError, ValueError, RuntimeError, OSError) as err:
        print(f"infer.py: error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(record["video"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
