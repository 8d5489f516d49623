"""Benchmark sets: folders of cases (first image, prompt, camera, optional ground-truth video), loaded with checks.

Two layouts are read as they are:

- **one folder per case** (SANA-WM-Bench style and what the builders here write)::

      <set>/<case>/image.png|jpg|jpeg|webp   first frame (also first_frame.*)
      <set>/<case>/prompt.txt                prompt
      <set>/<case>/c2w.npy                   (F, 4, 4) OpenCV camera-to-world (also pose.npy)
      <set>/<case>/intrinsics.npy            (4,), (3, 3), (F, 4) or (F, 3, 3), pixels of the image
      <set>/<case>/action.txt                action DSL instead of c2w.npy, or beside it as the command the
                                             c2w.npy rolls out (then both must have the same frame count)
      <set>/<case>/gt.npy | gt.mp4           ground-truth video (F, H, W, 3) uint8 (optional)
      <set>/<case>/meta.json                 {"fps": 16, "trajectory_type": "..."} (optional)

- **flat stems** (NVIDIA's demo assets): ``demo_N.png``, ``demo_N.txt``, ``demo_N_pose.npy`` (F, 4, 4),
  ``demo_N_intrinsics.npy`` ((3, 3), (F, 3, 3) or (4,)), optionally ``demo_N_action.txt``, ``demo_N_gt.npy`` /
  ``demo_N_gt.mp4`` and ``demo_N_meta.json``.

A case that fails a check (missing image or trajectory, unreadable file, a trajectory shorter than the requested
frame count, intrinsics or ground truth of another length) becomes a :class:`CaseError` in
``BenchSet.errors``; loading never stops on one bad case.

Builders: :func:`write_synthetic_bench` (the bundled synthetic world, exact poses and ground-truth video) and
:func:`write_shard_bench` (any video shard read through ``data.webdataset``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sana_wm.camera import action_to_c2w, as_fxfycxcy, validate_c2w

__all__ = [
    "BenchCase",
    "BenchSet",
    "CaseError",
    "load_bench_set",
    "write_case",
    "write_shard_bench",
    "write_synthetic_bench",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class BenchCase:
    """One validated case.

    Attributes:
        name: case id (folder name or stem).
        image_path: the first frame.
        prompt: prompt text.
        c2w: ``(F, 4, 4)`` float64 trajectory (rolled out from ``action`` when the case gives one).
        intrinsics: ``(F, 4)`` float64 [fx, fy, cx, cy] in pixels of the image.
        action: the action string (the commanded motion, scored by the motion-based following check), or None.
        gt_video: ``(F_gt, H, W, 3)`` uint8 ground truth, or None.
        fps: frame rate (meta.json, else the set's default).
        trajectory_type: label used for per-type bars (meta.json, else ``"action"`` / ``"c2w"``).
    """

    name: str
    image_path: Path
    prompt: str
    c2w: np.ndarray
    intrinsics: np.ndarray
    action: str | None = None
    gt_video: np.ndarray | None = None
    fps: float = 16.0
    trajectory_type: str = "c2w"


@dataclass(frozen=True)
class CaseError:
    """A case that could not be loaded: its name, the file or key at fault and why."""

    name: str
    reason: str


@dataclass
class BenchSet:
    root: Path
    cases: list[BenchCase] = field(default_factory=list)
    errors: list[CaseError] = field(default_factory=list)


class _CaseProblem(ValueError):
    pass


def _first(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def _case_files(folder: Path, stem: str | None) -> dict[str, Path | None]:
    """File roles of one case: in a case folder (stem None) or as ``<stem>…`` siblings of the flat layout."""
    if stem is None:
        pick = lambda *names: _first(folder, list(names))
        return {
            "image": pick(*(f"{b}{s}" for b in ("image", "first_frame") for s in IMAGE_SUFFIXES)),
            "prompt": pick("prompt.txt"),
            "c2w": pick("c2w.npy", "pose.npy"),
            "intrinsics": pick("intrinsics.npy"),
            "action": pick("action.txt"),
            "gt": pick("gt.npy", "gt.mp4"),
            "meta": pick("meta.json"),
        }
    pick = lambda *suffixes: _first(folder, [stem + s for s in suffixes])
    return {
        "image": pick(*IMAGE_SUFFIXES),
        "prompt": pick(".txt"),
        "c2w": pick("_pose.npy", "_c2w.npy"),
        "intrinsics": pick("_intrinsics.npy"),
        "action": pick("_action.txt"),
        "gt": pick("_gt.npy", "_gt.mp4"),
        "meta": pick("_meta.json"),
    }


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise _CaseProblem(f"{path.name}: not a readable .npy array ({err})") from None


def _load_case(name: str, files: dict[str, Path | None], num_frames: int | None, fps: float) -> BenchCase:
    from PIL import Image, UnidentifiedImageError

    if files["image"] is None:
        raise _CaseProblem(f"no first image (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        with Image.open(files["image"]) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise _CaseProblem(f"{files['image'].name}: not a readable image ({err})") from None
    if files["prompt"] is None:
        raise _CaseProblem("no prompt file (prompt.txt or <stem>.txt)")
    prompt = files["prompt"].read_text(encoding="utf-8").strip()

    meta: dict[str, Any] = {}
    if files["meta"] is not None:
        try:
            meta = json.loads(files["meta"].read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise _CaseProblem(f"{files['meta'].name}: invalid JSON ({err})") from None
    case_fps = float(meta.get("fps", fps))

    action = action_c2w = None
    if files["action"] is not None:
        action = files["action"].read_text(encoding="utf-8").strip()
        try:
            action_c2w = action_to_c2w(action).astype(np.float64)
        except ValueError as err:
            raise _CaseProblem(f"{files['action'].name}: {err}") from None
    if files["c2w"] is not None:
        c2w = _load_npy(files["c2w"]).astype(np.float64)
        try:
            validate_c2w(c2w, files["c2w"].name)
        except ValueError as err:
            raise _CaseProblem(str(err)) from None
        if action_c2w is not None and len(action_c2w) != len(c2w):
            raise _CaseProblem(f"{files['action'].name} commands {len(action_c2w)} frames; {files['c2w'].name} has "
                               f"{len(c2w)} (the action must be the command the trajectory rolls out)")
        kind = "c2w"
    elif action_c2w is not None:
        c2w, kind = action_c2w, "action"
    else:
        raise _CaseProblem("no trajectory (c2w.npy / <stem>_pose.npy or action.txt / <stem>_action.txt)")
    if num_frames is not None and len(c2w) < num_frames:
        raise _CaseProblem(f"trajectory has {len(c2w)} frames; the set asks for {num_frames}")
    frames = num_frames or len(c2w)
    c2w = c2w[:frames]

    if files["intrinsics"] is None:
        raise _CaseProblem("no intrinsics (intrinsics.npy / <stem>_intrinsics.npy)")
    raw = _load_npy(files["intrinsics"])
    try:
        intrinsics = as_fxfycxcy(raw, frames, files["intrinsics"].name)
    except (TypeError, ValueError) as err:
        raise _CaseProblem(str(err)) from None

    gt = None
    if files["gt"] is not None:
        if files["gt"].suffix == ".npy":
            gt = _load_npy(files["gt"])
        else:
            from sana_wm.inference.video import read_mp4

            gt, _ = read_mp4(files["gt"])
        if gt.dtype != np.uint8 or gt.ndim != 4 or gt.shape[-1] != 3:
            raise _CaseProblem(f"{files['gt'].name}: expected (F, H, W, 3) uint8; got {gt.dtype} {gt.shape}")
        if len(gt) < frames:
            raise _CaseProblem(f"{files['gt'].name} has {len(gt)} frames; the trajectory has {frames}")
        gt = gt[:frames]
    return BenchCase(name, files["image"], prompt, c2w, intrinsics, action, gt, case_fps,
                     str(meta.get("trajectory_type", kind)))


def load_bench_set(root: str | os.PathLike, num_frames: int | None = None, fps: float = 16.0) -> BenchSet:
    """Load every case under ``root`` (both layouts may be mixed), sorted by name.

    Args:
        root: the set folder.
        num_frames: frames each case must provide (trajectories are cut to it); None keeps each case's length.
        fps: frame rate of cases whose meta.json does not give one (SANA-WM-Bench: 16).

    Returns:
        :class:`BenchSet` with the valid cases and one :class:`CaseError` per bad case.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark set folder {root} does not exist")
    out = BenchSet(root)
    candidates: list[tuple[str, dict[str, Path | None]]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        candidates.append((sub.name, _case_files(sub, None)))
    # Flat stems: anything with a prompt .txt, an image or a pose file, minus the role suffixes.
    stems: set[str] = set()
    for p in root.iterdir():
        if not p.is_file() or p.suffix.lower() not in (*IMAGE_SUFFIXES, ".txt", ".npy", ".json", ".mp4"):
            continue
        stem = p.stem
        for suffix in ("_pose", "_c2w", "_intrinsics", "_action", "_gt", "_meta"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        stems.add(stem)
    candidates += [(s, _case_files(root, s)) for s in sorted(stems)]
    for name, files in sorted(candidates, key=lambda c: c[0]):
        try:
            out.cases.append(_load_case(name, files, num_frames, fps))
        except _CaseProblem as err:
            out.errors.append(CaseError(name, str(err)))
    return out


def write_case(
    folder: str | os.PathLike,
    image: np.ndarray,
    prompt: str,
    c2w: np.ndarray,
    intrinsics: np.ndarray,
    gt_video: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    action: str | None = None,
) -> Path:
    """Write one case in the folder-per-case layout (image (H, W, 3) uint8, intrinsics in its pixels; ``action``:
    the DSL command ``c2w`` rolls out, kept for the motion-based following check)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / "image.png")
    (folder / "prompt.txt").write_text(prompt + "\n", encoding="utf-8")
    np.save(folder / "c2w.npy", np.asarray(c2w, dtype=np.float64))
    np.save(folder / "intrinsics.npy", np.asarray(intrinsics, dtype=np.float64))
    if gt_video is not None:
        np.save(folder / "gt.npy", np.asarray(gt_video, dtype=np.uint8))
    if action is not None:
        (folder / "action.txt").write_text(action + "\n", encoding="utf-8")
    if meta:
        (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder


def write_synthetic_bench(
    out: str | os.PathLike,
    num_cases: int = 8,
    *,
    seed: int = 1000,
    first_index: int = 0,
    num_frames: int = 33,
    height: int = 128,
    width: int = 224,
    fps: float = 16.0,
    trajectory: str = "mixed",
    supersample: int = 2,
    pattern_scale: float = 1.0,
    exclude_actions: set[str] | frozenset[str] = frozenset(),
) -> Path:
    """A set of ``num_cases`` clips of the bundled synthetic world, with exact poses and ground-truth video.

    Use a ``seed`` the training set does not use to hold the cases out (the default data set uses seed 0: other
    rooms, other random trajectories). Action-DSL clips also get their ``action.txt`` (the command their poses roll
    out), which the sweep's motion-based following check scores. Match the size and ``pattern_scale`` of the world
    the model was trained on (the CPU demo: 64 × 112, ``pattern_scale`` 3). ``exclude_actions``: commands the
    model was trained on (:func:`data.synthetic.dataset_actions`); clips with one of them are passed over and the
    next indices taken, so every command is held out too.
    """
    from data.synthetic import plan_clip, render_clip

    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1; got {num_cases}")
    out = Path(out)
    written = 0
    for index in range(first_index, first_index + 20 * num_cases):
        clip = plan_clip(index, seed, num_frames, height, width, fps, trajectory, pattern_scale)
        traj = clip.meta["trajectory"]
        if traj.get("action") in exclude_actions:
            continue
        render_clip(clip, supersample)
        written += 1
        write_case(out / clip.key, clip.frames[0], clip.caption, clip.c2w, clip.K, clip.frames,
                   {"fps": fps, "trajectory_type": traj["kind"], "source": "synthetic", "seed": seed,
                    "index": index, "pattern_scale": pattern_scale}, action=traj.get("action"))
        if written == num_cases:
            return out
    raise ValueError(f"only {written} of {num_cases} clips from index {first_index} on have an action outside the "
                     f"{len(exclude_actions)} excluded ones")


def write_shard_bench(
    urls: str | list[str],
    out: str | os.PathLike,
    num_cases: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    fps: float | None = 16.0,
) -> Path:
    """A set from the first ``num_cases`` clips of any video shards (their first ``num_frames`` frames at ``fps``)."""
    from data.webdataset import make_video_dataset

    dataset = make_video_dataset(urls, num_frames, height, width, target_fps=fps, frame_sampling="start",
                                 video_format="uint8", shuffle_shards=False, strict=False)
    out = Path(out)
    written = 0
    for sample in dataset:
        video = sample.video.numpy()
        write_case(out / sample.key, video[0], sample.caption, sample.c2w.numpy(), sample.intrinsics.numpy(),
                   video, {"fps": float(sample.fps), "trajectory_type": "shard",
                           "source": str(sample.meta.get("__url__", ""))})
        written += 1
        if written == num_cases:
            break
    if written < num_cases:
        raise ValueError(f"the shards {urls!r} gave {written} usable clips; {num_cases} were asked for")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sana_wm.eval.bench_set {synthetic,shards,check} …``: build a set, or list a set's cases and errors."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sana_wm.eval.bench_set", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="held-out clips of the bundled synthetic world, with ground truth")
    syn.add_argument("--out", required=True)
    syn.add_argument("--num-cases", type=int, default=8)
    syn.add_argument("--seed", type=int, default=1000, help="dataset seed (the default training set uses 0)")
    syn.add_argument("--num-frames", type=int, default=33)
    syn.add_argument("--height", type=int, default=128)
    syn.add_argument("--width", type=int, default=224)
    syn.add_argument("--fps", type=float, default=16.0)
    syn.add_argument("--trajectory", choices=("mixed", "dsl", "smooth"), default="mixed",
                     help="camera paths: action-DSL rollouts (scored for motion following too), smooth, or both")
    syn.add_argument("--pattern-scale", type=float, default=1.0,
                     help="coarseness of the rooms' patterns; the CPU demo's world uses 3")
    syn.add_argument("--held-out-from", default=None, metavar="VIDEO_SHARDS",
                     help="training video shards: skip clips whose action string one of their clips follows")
    shards = sub.add_parser("shards", help="the first clips of video shards")
    shards.add_argument("--urls", required=True, help="shard list / pattern / directory / manifest")
    shards.add_argument("--out", required=True)
    shards.add_argument("--num-cases", type=int, required=True)
    shards.add_argument("--num-frames", type=int, required=True)
    shards.add_argument("--height", type=int, required=True)
    shards.add_argument("--width", type=int, required=True)
    shards.add_argument("--fps", type=float, default=16.0)
    check = sub.add_parser("check", help="load a set and list its cases and bad cases")
    check.add_argument("root")
    check.add_argument("--num-frames", type=int, default=None)
    args = parser.parse_args(argv)

    if args.command == "synthetic":
        from data.synthetic import dataset_actions

        exclude = dataset_actions(args.held_out_from) if args.held_out_from else frozenset()
        if args.held_out_from and not exclude:
            parser.error(f"--held-out-from {args.held_out_from}: no video shard with action strings there")
        root = write_synthetic_bench(args.out, args.num_cases, seed=args.seed, num_frames=args.num_frames,
                                     height=args.height, width=args.width, fps=args.fps, trajectory=args.trajectory,
                                     pattern_scale=args.pattern_scale, exclude_actions=exclude)
    elif args.command == "shards":
        root = write_shard_bench(args.urls, args.out, args.num_cases, num_frames=args.num_frames,
                                 height=args.height, width=args.width, fps=args.fps)
    else:
        root = Path(args.root)
    bench = load_bench_set(root, num_frames=getattr(args, "num_frames", None))
    for case in bench.cases:
        gt = "ground truth" if case.gt_video is not None else "no ground truth"
        print(f"ok   {case.name}: {len(case.c2w)} frames at {case.fps:g} fps, {case.trajectory_type}, {gt}")
    for err in bench.errors:
        print(f"bad  {err.name}: {err.reason}")
    print(f"{len(bench.cases)} cases, {len(bench.errors)} bad, in {root}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
