"""Weight-free poses with COLMAP (pycolmap): SIFT → sequential matching → global or incremental SfM.

One camera is shared by all frames of a clip. Known intrinsics fix it (a PINHOLE camera that bundle
adjustment does not refine); otherwise a SIMPLE_PINHOLE camera (one focal length, principal point at
the centre) is estimated. Poses come out up to an unknown similarity: the result's scale is 'relative'
(1.0) unless a metres-per-unit value is configured ('user').

Unit: COLMAP's own unit is whatever a reconstruction settles on and differs from clip to clip, so the
translations are divided by the clip's median scene depth (the median z, in its camera, of every
reconstructed point each registered frame observes). One unit is then the typical distance to what the
camera sees, in every clip: relative scales agree across clips, and ``metres_per_unit`` means "the median
scene depth is this many metres" (e.g. 3 indoors), a value a user can know.

Mapper: ``'global'`` runs COLMAP's global SfM (GLOMAP: rotation averaging, then global positioning,
then bundle adjustment), available in pycolmap ≥ 3.12 as ``pycolmap.global_mapping``. For video it
registers every frame in one solve and is much faster than incremental SfM on long clips; it is also
what CamI2V's evaluation uses. ``'incremental'`` (classic COLMAP) adds one frame at a time and
recovers better when matches are weak. ``'auto'`` (default) uses global mapping where the installed
pycolmap has it and falls back to incremental mapping when it registers fewer than ``min_registered``
of the frames.

COLMAP runs in a fresh Python process (``python -m annotation.estimators.colmap JOB_DIR``), never in the
caller's, because a library loaded earlier with global symbol visibility changes what COLMAP computes.
decord loads its shared library with ``RTLD_GLOBAL``; that library carries its own copies of C++
standard-library functions (hash-table bucket policy, string and vector members, thread helpers) and
an old zlib, and the dynamic linker binds pycolmap's references to ~130 of those symbols instead of
pycolmap's own. With decord imported first, the same clip, seed and single thread gave the same
features and matches but a different global-positioning start and a 6× worse trajectory
(bench/RESULTS.md), and COLMAP's PNG reader failed outright. The worker imports only numpy, pycolmap
and this package's numpy helpers, so the result does not depend on what the caller imported. Frames
travel as BMP files in a temporary folder.

COLMAP puts pixel centres at +½ (the top-left pixel's centre is (0.5, 0.5)); this module converts to
and from the project's integer-index convention (cx_colmap = cx + ½).

Confidence: 1 for frames the reconstruction registered, 0 for frames whose pose was interpolated
(slerp / linear) from registered neighbours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from annotation.estimators.base import EstimationError, PoseResult, check_frames, known_K
from annotation.geometry import interpolate_poses

__all__ = ["ColmapEstimator"]


def _pycolmap():
    try:
        import pycolmap
    except ImportError as err:  # an optional dependency
        raise ImportError("the COLMAP backend needs pycolmap: pip install 'sana-wm[annotation]'") from err
    return pycolmap


def _median_scene_depth(rec) -> float:
    """Median z, in the observing camera, of every (frame, reconstructed point) observation of ``rec``."""
    depths = []
    for image in rec.images.values():
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        if ids:
            xyz = np.array([rec.points3D[i].xyz for i in ids])
            T = image.cam_from_world().matrix()
            depths.append(xyz @ T[2, :3] + T[2, 3])
    return float(np.median(np.concatenate(depths))) if depths else 0.0


class ColmapEstimator:
    """COLMAP structure-from-motion as a pose estimator (CPU, in a worker process).

    Args:
        mapper: 'auto', 'global' or 'incremental' (module docstring).
        overlap: sequential matching pairs each frame with this many following frames.
        min_registered: fraction of frames that must register, else :class:`EstimationError` ('sfm_failed').
        num_threads: CPU threads (−1 = all).
        max_num_features: SIFT features per frame.
        metres_per_unit: a user-given scale: metres per unit of the returned poses, whose unit is the clip's
            median scene depth (module docstring); None leaves the scale relative.
        seed: COLMAP's random seed (RANSAC, global positioning), for repeatable runs.
        guided_matching: after a pair's geometric verification, match its features again restricted to the
            verified epipolar geometry (the ratio test then only compares candidates near the epipolar line).
            On a brick wall, where the plain ratio test drops most true matches as ambiguous, it doubles the
            3-D points and stops frames from being misplaced; on other repetitive patterns it reinforces a
            wrong two-view geometry and makes the trajectory worse. Off by default; see bench/RESULTS.md.
    """

    licence = "none: weight-free (COLMAP is BSD-3-Clause)"

    def __init__(self, mapper: str = "auto", overlap: int = 10, min_registered: float = 0.5, num_threads: int = -1,
                 max_num_features: int = 8192, metres_per_unit: float | None = None, seed: int = 0,
                 guided_matching: bool = False):
        if mapper not in ("auto", "global", "incremental"):
            raise ValueError(f"`mapper` must be 'auto', 'global' or 'incremental'; got {mapper!r}.")
        if not 0 < min_registered <= 1:
            raise ValueError(f"`min_registered` must be in (0, 1]; got {min_registered}.")
        if metres_per_unit is not None and not metres_per_unit > 0:
            raise ValueError(f"`metres_per_unit` must be positive; got {metres_per_unit}.")
        pycolmap = _pycolmap()
        if mapper == "global" and not hasattr(pycolmap, "global_mapping"):
            raise ValueError(f"mapper 'global' needs pycolmap ≥ 3.12 (global_mapping); installed: {pycolmap.__version__}.")
        self.mapper, self.overlap, self.min_registered = mapper, int(overlap), float(min_registered)
        self.num_threads, self.max_num_features, self.seed = int(num_threads), int(max_num_features), int(seed)
        self.metres_per_unit, self.guided_matching = metres_per_unit, bool(guided_matching)
        self.name = "colmap"
        self.version = f"pycolmap {pycolmap.__version__}"

    def _run_worker(self, job: Path) -> dict[str, Any]:
        # the worker must run this very package (a checkout on sys.path may shadow an installed copy)
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
        with open(job / "colmap.log", "wb") as log:
            rc = subprocess.run([sys.executable, "-m", "annotation.estimators.colmap", str(job)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            tail = (job / "colmap.log").read_bytes()[-3000:].decode(errors="replace")
            if rc < 0:  # killed by a signal inside COLMAP: this clip, not the pipeline
                raise EstimationError("sfm_crashed", f"the COLMAP worker died with signal {-rc}; log tail:\n{tail}")
            raise RuntimeError(f"the COLMAP worker ({sys.executable} -m annotation.estimators.colmap) exited with "
                               f"status {rc}; log tail:\n{tail}")
        return json.loads((job / "result.json").read_text())

    # -- the interface -----------------------------------------------------------------------------

    def estimate(self, frames: np.ndarray, fps: float, known_intrinsics: Any = None,
                 work_dir: str | os.PathLike | None = None) -> PoseResult:
        """Poses (and, without ``known_intrinsics``, one shared K) for ``frames`` (N, H, W, 3) uint8."""
        from PIL import Image

        frames = check_frames(frames)
        N = len(frames)
        if N < 2:
            raise EstimationError("too_short", f"structure from motion needs ≥ 2 frames; got {N}.")
        K_known = known_K(known_intrinsics, N)
        if K_known is not None and not np.allclose(K_known, K_known[0]):
            raise ValueError("the COLMAP backend shares one camera per clip; `known_intrinsics` varies over frames.")
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            job = Path(tmp)
            (job / "images").mkdir()
            # BMP: no codec library involved (PNG went through zlib, see the module docstring)
            names = [f"{i:06d}.bmp" for i in range(N)]
            for name, f in zip(names, frames, strict=True):
                Image.fromarray(f).save(job / "images" / name)
            options = {k: getattr(self, k) for k in ("mapper", "overlap", "min_registered", "num_threads",
                                                     "max_num_features", "seed", "guided_matching")}
            K0 = None if K_known is None else [float(v) for v in (K_known[0, 0, 0], K_known[0, 1, 1],
                                                                   K_known[0, 0, 2], K_known[0, 1, 2])]
            (job / "job.json").write_text(json.dumps({"options": options, "fxfycxcy": K0, "num_frames": N}))
            out = self._run_worker(job)
            if out["registered"]:
                with np.load(job / "result.npz") as z:
                    known, poses, K = z["frames"], z["c2w"], z["K"]
        registered, kinds = int(out["registered"]), out["tried"]
        if registered < max(2, self.min_registered * N):
            raise EstimationError("sfm_failed", f"COLMAP ({', '.join(kinds)} mapping) registered {registered} of {N} "
                                  f"frames; at least {self.min_registered:.0%} are required.")
        depth = float(out["median_depth"])
        if not depth > 0:
            raise EstimationError("sfm_failed", f"COLMAP reconstructed no point in front of the cameras (median "
                                  f"depth {depth}); the clip has no usable structure.")
        poses[:, :3, 3] /= depth
        c2w = interpolate_poses(poses, known, N)
        confidence = np.zeros(N)
        confidence[known] = 1.0
        scale, kind = (1.0, "relative") if self.metres_per_unit is None else (float(self.metres_per_unit), "user")
        return PoseResult(
            c2w=c2w, K=np.broadcast_to(K, (N, 3, 3)).copy(), confidence=confidence, scale=scale, scale_kind=kind,
            estimator=self.name, version=self.version, licence=self.licence,
            info={"mapper": out["mapper"], "registered": registered, "num_points3D": out["num_points3D"],
                  "mean_reprojection_error": out["mean_reprojection_error"],
                  "unit": "median scene depth", "median_depth_colmap_units": depth,
                  "intrinsics": "fixed" if K_known is not None else "estimated"},
        )


# -- the worker: COLMAP stages, run by ``python -m annotation.estimators.colmap JOB_DIR`` ----------------


def _extract_and_match(options: dict[str, Any], db: Path, images: Path, fxfycxcy: list[float] | None) -> None:
    pycolmap = _pycolmap()
    reader = pycolmap.ImageReaderOptions()
    if fxfycxcy is not None:
        fx, fy, cx, cy = fxfycxcy
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(repr(v) for v in (fx, fy, cx + 0.5, cy + 0.5))
    else:
        reader.camera_model = "SIMPLE_PINHOLE"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.use_gpu = False
    extraction.num_threads = options["num_threads"]
    extraction.sift.max_num_features = options["max_num_features"]
    pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    matching = pycolmap.FeatureMatchingOptions()
    matching.use_gpu = False
    matching.num_threads = options["num_threads"]
    matching.guided_matching = options["guided_matching"]
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = options["overlap"]
    pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)


def _map(options: dict[str, Any], kind: str, db: Path, images: Path, out: Path, fixed_K: bool):
    pycolmap = _pycolmap()
    out.mkdir(parents=True, exist_ok=True)
    if kind == "global":
        opts = pycolmap.GlobalPipelineOptions()
        opts.num_threads = options["num_threads"]
        opts.random_seed = options["seed"]
        ba = opts.mapper.bundle_adjustment
        ba.refine_focal_length = not fixed_K
        ba.refine_extra_params = not fixed_K
        ba.refine_principal_point = False
        ba.ceres.use_gpu = False
        recs = pycolmap.global_mapping(db, images, out, opts)
    else:
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = options["num_threads"]
        opts.random_seed = options["seed"]
        opts.ba_refine_focal_length = not fixed_K
        opts.ba_refine_extra_params = not fixed_K
        opts.ba_refine_principal_point = False
        opts.ba_use_gpu = False
        recs = pycolmap.incremental_mapping(db, images, out, opts)
    return max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None


def _worker(job: Path) -> None:
    """Reconstruct ``job/images`` as ``job/job.json`` says; write ``result.json`` (+ ``result.npz``)."""
    spec = json.loads((job / "job.json").read_text())
    options, fxfycxcy, N = spec["options"], spec["fxfycxcy"], int(spec["num_frames"])
    images = job / "images"
    _extract_and_match(options, job / "db.db", images, fxfycxcy)
    mapper = options["mapper"]
    has_global = hasattr(_pycolmap(), "global_mapping")
    kinds = ["incremental"] if mapper == "incremental" or (mapper == "auto" and not has_global) else ["global"]
    if mapper == "auto" and kinds == ["global"]:
        kinds.append("incremental")
    best, used, tried = None, None, []
    for kind in kinds:
        tried.append(kind)
        rec = _map(options, kind, job / "db.db", images, job / kind, fxfycxcy is not None)
        if rec is not None and (best is None or rec.num_reg_images() > best.num_reg_images()):
            best, used = rec, kind
        if best is not None and best.num_reg_images() >= options["min_registered"] * N:
            break
    result = {"registered": 0 if best is None else int(best.num_reg_images()), "mapper": used, "tried": tried}
    if best is not None and best.num_reg_images():
        frames, poses = [], []
        for image in sorted(best.images.values(), key=lambda im: im.name):
            w2c = np.eye(4)
            w2c[:3] = image.cam_from_world().matrix()
            frames.append(int(Path(image.name).stem))
            poses.append(np.linalg.inv(w2c))
        K = next(iter(best.cameras.values())).calibration_matrix().astype(np.float64)
        K[:2, 2] -= 0.5
        np.savez(job / "result.npz", frames=np.array(frames), c2w=np.stack(poses), K=K)
        result.update(num_points3D=int(best.num_points3D()),
                      mean_reprojection_error=float(best.compute_mean_reprojection_error()),
                      median_depth=_median_scene_depth(best))
    (job / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
