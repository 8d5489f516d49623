"""`python -m data.import_sana_zip`: NVIDIA's SANA-WM example training data → our cached-latent shards.

NVIDIA's released layout (read by its `SanaWMZipLatentDataset`, diffusion/data/datasets/video/
sana_wm_zip_latent_data.py of NVlabs/Sana; docs/design/nvidia-fidelity.md §4)::

    RAW/<stem>.zip                        one <key>.json per clip: {"prompt": …, "width": …, "height": …, …}
    CACHE/<stem>.zip                      same name, one <key>.npz per clip with "z" = (C, T, h, w) LTX-2 latents
    RAW/<stem>_camera.npz                 optional: "ids" (N,), "ranges" (N, 2) = (start, count) into "pose"
                                          (M, 4, 4) OpenCV c2w and "intrinsics" (M, 4) fx, fy, cx, cy in pixels of
                                          the json's width × height
    RAW/<stem>_metric_scale_stats.json    optional: key → the factor multiplying that clip's translations
    RAW/<stem><suffix>.json(l)            external captions (key → text, or {"prompt": text, …}) and filter scores
                                          (key → number, list, or a dict holding one)

Each clip passing the filters becomes one latent sample (data/write_shards.py `write_latent_sample`): the latent as
stored, its caption encoded by Gemma-2 with the chi prefix (as the trainer's cache does), and the camera tensors
built as NVIDIA's loader builds them — translations × the metric scale, poses relative to the first frame,
intrinsics to latent units, conditions at pixel frames 8i, chunk Plücker maps (`sana_wm.camera.prepare_camera`). A
clip without camera is dropped (``no_camera``), as our video loader drops one: made-up poses for footage whose camera
may move would teach the model that moving footage means a static camera. ``--identity-camera`` keeps it the way
NVIDIA's loader does, with identity poses and K = [w, h, w/2, h/2] in latent units.

Caption choice: ``--caption-weights prompt=0,_LongScene…=100`` (NVIDIA's ``caption_proportion``) picks, per clip, one
of the captions it has, in proportion to the weights, with a generator seeded by ``--seed`` and the clip key (NVIDIA
draws anew at every read; a converter must fix one). A clip with none of them falls back to its json ``prompt``.
Filters: ``--filter _dover=0.25:1.0`` (NVIDIA's ``external_data_filter``) keeps a clip only if its score in
``<stem>_dover.json(l)`` lies in [min, max]; a missing score drops it too.

Dropped, counted by reason and listed in ``<out>/import_report.json``: a raw zip without its latent cache
(``no_latent_cache``) or with an unreadable one (``bad_latent_cache``), an unreadable raw zip (``bad_raw_zip``), a
latent entry smaller than ``--min-latent-bytes`` (10 MiB, NVIDIA's default;
``latent_too_small``), a latent without metadata (``no_metadata``) or metadata without a latent (``no_latent``), a
filter score missing or out of range (``filter_missing:<suffix>``, ``filter_out_of_range:<suffix>``), an unreadable
latent (``bad_latent``), a clip without camera (``no_camera``, unless ``--identity-camera``), camera data that does
not fit (``bad_camera``). Shards are written into
``<out>.partial/`` and moved to ``<out>`` only when the whole run succeeded, so no partial shard is ever left under
the output name with a manifest.

Example::

    python -m data.import_sana_zip --raw data/sekai_game_train_961frames_16fps_ovl640 \\
        --cache data/vae_cache/LTX2VAE_diffusers_704x1280/sekai_game_train_961frames_16fps_ovl640 \\
        --out data_cache/sekai_latents --text-encoder models/gemma-2-2b-it \\
        --caption-suffix _LongSceneStaticCaption-Qwen3-VL-30B-A3B-Instruct \\
        --caption-weights _LongSceneStaticCaption-Qwen3-VL-30B-A3B-Instruct=100 \\
        --filter _vmafmotion=0.5:50 --filter _unimatch=3:80 --filter _dover=0.25:1 \\
        --filter _vlm_entity_filter=0:10 --filter _vlm_quality_filter=0.5:1.5
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import re
import shutil
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .schema import LATENT_SCHEMA_VERSION
from .write_shards import ShardSink, write_latent_sample

__all__ = ["SanaZipImportError", "import_sana_zip", "numeric_score", "main"]

log = logging.getLogger(__name__)

MIN_LATENT_BYTES = 10 * 1024 * 1024  # NVIDIA's min_latent_file_size: smaller cache entries are not clips
REPORT_NAME = "import_report.json"
# Where a score sits when a sidecar entry is a dict (NVIDIA's lookup order), then any numeric value.
_SCORE_KEYS = ("score", "vmafmotion_score", "dover_score", "quality_pass", "entity_count", "unimatch_flow_score",
               "median")


class SanaZipImportError(ValueError):
    """The converter's inputs are unusable as a whole (a missing folder, a bad option); names the value."""


def numeric_score(value: Any) -> float | None:
    """A sidecar entry's score: a number; the mean of a list's numbers; in a dict the first of the known score keys,
    else its first numeric value; None when there is none."""
    if isinstance(value, (int, float)):  # bool included (an int)
        return float(value)
    if isinstance(value, list):
        nums = [float(v) for v in value if isinstance(v, (int, float))]
        return sum(nums) / len(nums) if nums else None
    if isinstance(value, dict):
        for k in _SCORE_KEYS:
            if k in value and (s := numeric_score(value[k])) is not None:
                return s
        for v in value.values():
            if (s := numeric_score(v)) is not None:
                return s
    return None


def _read_sidecar(base: Path) -> dict[str, Any]:
    """``<base>.json`` (a dict keyed by clip, or a list of {"key": …}) or else ``<base>.jsonl``; {} if neither."""
    path = base.with_name(base.name + ".json")
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise SanaZipImportError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, list):
            return {str(d["key"]): d for d in data if isinstance(d, dict) and "key" in d}
        return data if isinstance(data, dict) else {}
    path = base.with_name(base.name + ".jsonl")
    out = {}
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    item = json.loads(line)
                except ValueError as err:
                    raise SanaZipImportError(f"{path}:{n}: not valid JSON ({err})") from err
                if isinstance(item, dict) and "key" in item:
                    out[str(item["key"])] = item
    return out


def _caption_from(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        if isinstance(entry.get("prompt"), str):
            return entry["prompt"]
        return next((v for v in entry.values() if isinstance(v, str)), None)
    return None


def _parse_filter(spec: str) -> tuple[str, float, float]:
    m = re.fullmatch(r"([^=]+)=([^:]*):([^:]*)", spec)
    try:
        if not m:
            raise ValueError
        lo = float(m.group(2)) if m.group(2) else -math.inf
        hi = float(m.group(3)) if m.group(3) else math.inf
    except ValueError:
        raise SanaZipImportError(f"--filter {spec!r}: expected SUFFIX=MIN:MAX (either bound may be empty), "
                           "e.g. _dover=0.25:1.0") from None
    if lo > hi:
        raise SanaZipImportError(f"--filter {spec!r}: min {lo} is above max {hi}")
    return m.group(1), lo, hi


def _parse_weights(spec: str) -> dict[str, float]:
    out = {}
    for part in filter(None, spec.split(",")):
        name, sep, w = part.partition("=")
        try:
            if not sep or float(w) < 0:
                raise ValueError
            out[name] = float(w)
        except ValueError:
            raise SanaZipImportError(f"--caption-weights {spec!r}: expected NAME=WEIGHT[,NAME=WEIGHT…] with weights "
                               f">= 0, e.g. prompt=0,_LongSceneStaticCaption=100; bad part {part!r}") from None
    return out


def _sample_key(stem: str, key: str) -> str:
    """A shard key ([A-Za-z0-9_-]+) from the zip stem and the clip key."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{stem}-{key}")


def _load_latent(data: bytes) -> torch.Tensor:
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if isinstance(arr, np.lib.npyio.NpzFile):
        if "z" not in arr.files:
            raise ValueError(f"npz has no 'z' array (arrays: {arr.files})")
        arr = arr["z"]
    arr = np.asarray(arr)
    if arr.ndim != 4 or not np.isfinite(arr).all():
        raise ValueError(f"'z' must be a finite (C, T, h, w) array; got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32, copy=False))


def _camera_index(cam: dict | None) -> dict[str, int]:
    """A camera file's clip key → its row of ``ranges`` (the first row where a key repeats)."""
    index: dict[str, int] = {}
    for row, key in enumerate([] if cam is None else cam["ids"].tolist()):
        index.setdefault(str(key), row)
    return index


def _camera(cam: dict | None, index: dict[str, int], key: str, info: dict, latent: torch.Tensor, scale: float):
    """(camera_conditions, chunk_plucker, relative metric c2w or None, intrinsics in pixels of the latent's
    32·h × 32·w frame or None), as NVIDIA's loader builds them. ``index``: :func:`_camera_index` of ``cam``."""
    from sana_wm.camera import prepare_camera

    _, T, h, w = latent.shape
    width, height = float(info.get("width") or 32 * w), float(info.get("height") or 32 * h)
    frames = 8 * (T - 1) + 1
    if key not in index:
        cond, plk = prepare_camera(np.tile(np.eye(4), (frames, 1, 1)), [width, height, width / 2, height / 2],
                                   (int(height), int(width)), (h, w), frames)
        return cond, plk, None, None
    start, count = (int(v) for v in cam["ranges"][index[key]])
    pose = np.asarray(cam["pose"][start : start + count], dtype=np.float64).copy()
    intr = np.asarray(cam["intrinsics"][start : start + count], dtype=np.float64)
    if pose.shape[0] < frames:
        raise ValueError(f"{pose.shape[0]} poses for a latent of {T} frames (needs {frames})")
    pose[:, :3, 3] *= scale
    cond, plk = prepare_camera(pose, intr[:frames], (int(height), int(width)), (h, w), frames)
    rel = np.linalg.inv(pose[0])[None] @ pose[:frames]
    to_target = np.array([32 * w / width, 32 * h / height, 32 * w / width, 32 * h / height])
    return cond, plk, torch.from_numpy(rel).float(), torch.from_numpy(intr[:frames] * to_target).float()


def import_sana_zip(
    raw_dir: str | Path,
    cache_dir: str | Path,
    out_dir: str | Path,
    text_encoder,
    *,
    caption_suffixes: list[str] | tuple[str, ...] = (),
    caption_weights: dict[str, float] | None = None,
    filters: list[tuple[str, float, float]] | tuple = (),
    min_latent_bytes: int = MIN_LATENT_BYTES,
    max_count: int = 64,
    seed: int = 0,
    latent_dtype: torch.dtype = torch.bfloat16,
    identity_camera: bool = False,
) -> dict:
    """Convert one raw folder + latent-cache folder into latent shards under `out_dir`; returns the report.

    `text_encoder` is a `sana_wm.encoders.text.GemmaTextEncoder` (or anything with ``encode([caption]) → (emb
    (1, L, D), mask (1, L))``). `identity_camera`: keep clips without camera with identity poses (NVIDIA's loader)
    instead of dropping them. Raises SanaZipImportError for unusable inputs (missing folders, an existing non-empty
    `out_dir`); per-clip problems are skipped and counted in the report.
    """
    raw_dir, cache_dir, out_dir = Path(raw_dir), Path(cache_dir), Path(out_dir)
    for name, d in (("raw", raw_dir), ("cache", cache_dir)):
        if not d.is_dir():
            raise SanaZipImportError(f"--{name} {str(d)!r}: no such directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SanaZipImportError(f"--out {str(out_dir)!r} exists and is not empty; give a new directory")
    zips = sorted(p for p in raw_dir.glob("*.zip"))
    if not zips:
        raise SanaZipImportError(f"--raw {str(raw_dir)!r}: no *.zip files (expected NVIDIA's raw zips with <key>.json)")
    weights = dict(caption_weights or {"prompt": 1.0})
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    written = 0

    def skip(reason: str, what: str) -> None:
        skipped[reason] += 1
        examples.setdefault(reason, [])
        if len(examples[reason]) < 5:
            examples[reason].append(what)

    sink = ShardSink(tmp, prefix="latents", max_count=max_count, schema=LATENT_SCHEMA_VERSION)
    try:
        for raw_zip in zips:
            stem = raw_zip.stem
            cache_zip = cache_dir / raw_zip.name
            if not zipfile.is_zipfile(raw_zip):
                skip("bad_raw_zip", raw_zip.name)
                continue
            with zipfile.ZipFile(raw_zip) as raw:
                metas = {Path(n).stem: n for n in raw.namelist() if n.endswith(".json")}
                if not cache_zip.is_file() or not zipfile.is_zipfile(cache_zip):
                    reason = "no_latent_cache" if not cache_zip.is_file() else "bad_latent_cache"
                    for key in sorted(metas):
                        skip(reason, f"{raw_zip.name}:{key}")
                    continue
                with zipfile.ZipFile(cache_zip) as cache:
                    latents = {Path(i.filename).stem: i for i in cache.infolist() if i.filename.endswith(".npz")}
                    for key in sorted(set(latents) - set(metas)):
                        skip("no_metadata", f"{cache_zip.name}:{key}")
                    for key in sorted(set(metas) - set(latents)):
                        skip("no_latent", f"{raw_zip.name}:{key}")
                    sidecar = lambda suffix, s=stem: _read_sidecar(raw_dir / f"{s}{suffix}")  # noqa: E731
                    scores = {suffix: sidecar(suffix) for suffix, _, _ in filters}
                    captions = {suffix: sidecar(suffix) for suffix in caption_suffixes}
                    scales = sidecar("_metric_scale_stats")
                    cam_path = raw_dir / f"{stem}_camera.npz"
                    cam = None
                    if cam_path.is_file():  # read once: each access to a lazy NpzFile member unzips it again
                        with np.load(cam_path, allow_pickle=False) as npz:
                            cam = dict(npz)
                    cam_index = _camera_index(cam)
                    for key in sorted(set(metas) & set(latents)):
                        where = f"{raw_zip.name}:{key}"
                        if latents[key].file_size < min_latent_bytes:
                            skip("latent_too_small", where)
                            continue
                        reason = None
                        for suffix, lo, hi in filters:
                            score = numeric_score(scores[suffix].get(key))
                            if score is None:
                                reason = f"filter_missing:{suffix}"
                            elif not lo <= score <= hi:
                                reason = f"filter_out_of_range:{suffix}"
                            if reason:
                                break
                        if reason:
                            skip(reason, where)
                            continue
                        try:
                            info = json.loads(raw.read(metas[key]).decode("utf-8"))
                            if not isinstance(info, dict):
                                raise ValueError("not a JSON object")
                        except ValueError as err:
                            skip("bad_metadata", f"{where} ({err})")
                            continue
                        try:
                            latent = _load_latent(cache.read(latents[key].filename))
                        except (ValueError, OSError, zipfile.BadZipFile) as err:
                            skip("bad_latent", f"{where} ({err})")
                            continue
                        if key not in cam_index and not identity_camera:
                            skip("no_camera", where)
                            continue
                        scale = numeric_score(scales.get(key))
                        scale = scale if scale is not None and math.isfinite(scale) else 1.0
                        try:
                            cond, plk, c2w, intr = _camera(cam, cam_index, key, info, latent, scale)
                        except (ValueError, KeyError, IndexError) as err:
                            skip("bad_camera", f"{where} ({err})")
                            continue
                        available = {"prompt": info.get("prompt")}
                        available.update({s.replace(".", "_"): _caption_from(captions[s].get(key))
                                          for s in caption_suffixes})
                        choices = [(n, w) for n, w in weights.items() if isinstance(available.get(n), str)]
                        rng = random.Random(f"{seed}:{stem}:{key}")
                        if choices and sum(w for _, w in choices) > 0:
                            caption_type = rng.choices([n for n, _ in choices], [w for _, w in choices])[0]
                        else:
                            caption_type = "prompt"
                        caption = str(available.get(caption_type) or "")
                        emb, mask = text_encoder.encode([caption])
                        meta = {"source": "sana-wm-zip", "source_zip": raw_zip.name, "source_key": key,
                                "caption_type": caption_type, "metric_scale": scale, "camera": c2w is not None,
                                "source_width": info.get("width"), "source_height": info.get("height")}
                        write_latent_sample(sink, _sample_key(stem, key), latent.to(latent_dtype), emb[0].float().cpu(),
                                            mask[0].cpu(), cond, plk, meta, caption=caption, c2w=c2w, intrinsics=intr)
                        written += 1
        sink.close()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no shard of a failed run survives, complete-looking or not
        raise
    report = {"written": written, "skipped": dict(sorted(skipped.items())), "examples": examples,
              "args": {"raw": str(raw_dir), "cache": str(cache_dir), "caption_suffixes": list(caption_suffixes),
                       "identity_camera": identity_camera,
                       "caption_weights": weights, "filters": [list(f) for f in filters],
                       "min_latent_bytes": min_latent_bytes, "seed": seed}}
    (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2))
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked above)
    tmp.rename(out_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.import_sana_zip", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="folder of NVIDIA's raw *.zip files (+ sidecars)")
    p.add_argument("--cache", required=True, help="folder of the latent-cache zips of the same names")
    p.add_argument("--out", required=True, help="new output folder for the latent shards")
    p.add_argument("--text-encoder", required=True, help="local Gemma-2 folder (model + tokenizer)")
    p.add_argument("--caption-suffix", action="append", default=[], help="external caption sidecar suffix")
    p.add_argument("--caption-weights", default="prompt=1", help="NAME=WEIGHT,… over prompt and the suffixes")
    p.add_argument("--filter", action="append", default=[], help="SUFFIX=MIN:MAX score filter (repeatable)")
    p.add_argument("--min-latent-bytes", type=int, default=MIN_LATENT_BYTES)
    p.add_argument("--max-count", type=int, default=64, help="samples per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-clip caption choice")
    p.add_argument("--identity-camera", action="store_true",
                   help="keep clips without camera with identity poses, as NVIDIA's loader (default: drop them)")
    p.add_argument("--device", default=None)
    p.add_argument("--encoder-dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--max-sequence-length", type=int, default=300)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        filters = [_parse_filter(s) for s in a.filter]
        weights = _parse_weights(a.caption_weights)
        unknown = sorted(set(weights) - {"prompt"} - {s.replace(".", "_") for s in a.caption_suffix})
        if unknown:
            raise SanaZipImportError(f"--caption-weights names {unknown}, which are neither 'prompt' nor a --caption-suffix")
        from sana_wm.encoders.text import GemmaTextEncoder

        dtype = torch.float32 if a.encoder_dtype == "float32" else torch.bfloat16
        text = GemmaTextEncoder.from_pretrained(a.text_encoder, dtype=dtype, device=a.device,
                                                max_sequence_length=a.max_sequence_length)
        report = import_sana_zip(a.raw, a.cache, a.out, text, caption_suffixes=a.caption_suffix,
                                 caption_weights=weights, filters=filters, min_latent_bytes=a.min_latent_bytes,
                                 max_count=a.max_count, seed=a.seed, identity_camera=a.identity_camera)
    except (SanaZipImportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report['written']} clip(s) to {a.out}; skipped {sum(report['skipped'].values())}: "
          + (", ".join(f"{k} {v}" for k, v in report["skipped"].items()) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
