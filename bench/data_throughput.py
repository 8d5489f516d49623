"""Data-loader throughput: 720p H.264 decode + crop (161 and 961 frames) and cached-latent shards.

Everything runs in one process, i.e. one loader worker with one decode thread, and is reported per
worker. For the video path the loader (``data.webdataset.make_video_dataset``: tar read, json and pose
validation, decord decode, centre crop 720 → 704 rows, camera tensors) is timed against raw decord
on the same bytes and the same frame indices (``VideoReader(BytesIO) + get_batch``, handed to torch
zero-copy through DLPack as the loader does); the difference is the loader's overhead. The usual
``get_batch(...).asnumpy()`` (one extra copy) is reported as a note. The latent path is timed against a bare tar read + ``np.load`` of the same
members (the loader additionally validates shapes and poses and scans for NaN/inf, which can be
switched off). Two more latent references are printed as notes: the same read with zero-copy ``.npy``
views instead of ``np.load`` (what the loader itself does, so the difference is purely its
validation), and a bare ``tarfile`` random-access read without webdataset. Measurements are interleaved (raw, loader, raw, loader, …) and the best run is kept, so
load from other processes on the machine affects both sides alike.

Inputs are generated on the fly (no downloads): a textured image panning 3 px per frame with ±8
grain, 1280×720, 16 fps, encoded with libx264 (preset veryfast, crf 23, default GOP 250, yuv420p),
about 1.5 Mbit/s.

Usage: ``python bench/data_throughput.py [--clips-161 2] [--clips-961 1] [--repeats 3] [--latent-only] [--out DIR]``
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.schema import LATENT_SCHEMA_VERSION, npy_bytes_to_tensor  # noqa: E402
from data.webdataset import make_latent_dataset, make_video_dataset  # noqa: E402
from data.write_shards import ShardSink, write_latent_sample, write_video_sample  # noqa: E402
from sana_wm.camera import prepare_camera  # noqa: E402

SRC_H, SRC_W, FPS = 720, 1280, 16.0
TARGET_H, TARGET_W = 704, 1280


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-scale value noise with colour, (h, w, 3) uint8: detailed enough that H.264 has work to do."""
    img = np.zeros((h, w, 3), np.float32)
    for cell, amp in ((128, 0.5), (32, 0.3), (8, 0.15), (2, 0.05)):
        g = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        img += amp * np.repeat(np.repeat(g, cell, 0), cell, 1)[:h, :w]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def encode_panning_clip(num_frames: int, seed: int) -> bytes:
    """720p H.264 clip of a grainy texture panning 3 px/frame, encoded frame by frame (never all in memory)."""
    import av

    rng = np.random.default_rng(seed)
    tex = _texture(rng, SRC_H, SRC_W + 3 * num_frames).astype(np.int16)
    # ±8 grain (7 patterns, cycled) gives the encoder real residuals: ~1.5 Mbit/s, like real 720p footage.
    grain = [rng.integers(-8, 9, (SRC_H, SRC_W, 3), dtype=np.int16) for _ in range(7)]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(int(FPS), 1), options={"crf": "23", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = SRC_W, SRC_H, "yuv420p"
        for i in range(num_frames):
            frame = np.clip(tex[:, 3 * i : 3 * i + SRC_W] + grain[i % 7], 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def make_video_shard(out_dir: str, num_frames: int, clips: int) -> tuple[str, list[bytes]]:
    mp4s = [encode_panning_clip(num_frames, seed) for seed in range(clips)]
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 2, num_frames)
    K = np.array([[1000.0, 0, 639.5], [0, 1000.0, 359.5], [0, 0, 1]])
    with ShardSink(out_dir, prefix=f"v{num_frames}", max_count=clips) as sink:
        for i, mp4 in enumerate(mp4s):
            write_video_sample(sink, f"clip{i}", caption="panning texture", meta={"fps": FPS, "metric_scale": 1.0}, mp4=mp4, c2w=c2w, intrinsics=K)
    return sink.paths[0], mp4s


def make_latent_shard(out_dir: str, num_frames: int, samples: int) -> str:
    t_lat = (num_frames - 1) // 8 + 1
    h, w = TARGET_H // 32, TARGET_W // 32
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    c2w[:, 2, 3] = np.linspace(0, 3, num_frames)
    cond, plk = prepare_camera(c2w, np.array([1000.0, 1000.0, 640.0, 352.0]), (TARGET_H, TARGET_W), (h, w))
    g = torch.Generator().manual_seed(0)
    with ShardSink(out_dir, prefix=f"lat{num_frames}", max_count=samples, schema=LATENT_SCHEMA_VERSION) as sink:
        for i in range(samples):
            latent = torch.randn(128, t_lat, h, w, generator=g).to(torch.bfloat16)  # LTX-2: 128 channels
            emb = torch.randn(300, 2304, generator=g).to(torch.bfloat16)  # Gemma-2-2B hidden size, 300 tokens
            mask = torch.arange(300) < 120
            write_latent_sample(sink, f"lat{i}", latent, emb, mask, cond, plk, {"source": "bench"})
    return sink.paths[0]


def time_raw_decord(mp4s: list[bytes], num_frames: int, copy: bool = False) -> float:
    """Bare decord: open from bytes, ``get_batch`` of the same indices, to a tensor zero-copy through
    DLPack (as the loader does) or, with ``copy``, through the common ``asnumpy()``."""
    import decord
    from torch.utils.dlpack import from_dlpack

    t0 = time.perf_counter()
    for data in mp4s:
        vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        batch = vr.get_batch(list(range(num_frames)))
        frames = batch.asnumpy() if copy else from_dlpack(batch.to_dlpack())
        assert tuple(frames.shape) == (num_frames, SRC_H, SRC_W, 3)
        del vr, batch, frames
    return time.perf_counter() - t0


def time_loader(shard: str, num_frames: int, video_format: str = "uint8") -> float:
    ds = make_video_dataset(
        shard, num_frames=num_frames, height=TARGET_H, width=TARGET_W, target_fps=FPS, frame_sampling="start",
        video_format=video_format, decode_threads=1, shuffle_shards=False, strict=True,
    )
    t0 = time.perf_counter()
    n = 0
    for s in ds:
        assert s.camera_conditions.shape[0] == (num_frames - 1) // 8 + 1
        n += 1
        del s
    return time.perf_counter() - t0


LATENT_MEMBERS = ("latent.npy", "text_emb.npy", "text_mask.npy", "camera_conditions.npy", "chunk_plucker.npy")


def time_raw_latent(shard: str, zero_copy: bool = False) -> float:
    """The same tar read as the loader (``data.webdataset.read_shards``), then ``np.load`` of every tensor
    member, or with ``zero_copy`` only the tensors viewed in place (the loader's own parsing, no checks)."""
    from data.webdataset import read_shards

    def fail(url, key, exn):
        raise exn

    t0 = time.perf_counter()
    for raw in read_shards([shard], fail):
        for k in LATENT_MEMBERS:
            npy_bytes_to_tensor(raw[k], zero_copy=zero_copy)
    return time.perf_counter() - t0


def time_bare_tar(shard: str) -> float:
    """Plain ``tarfile`` random access, each member read once into a buffer (no webdataset, no .npy
    parsing): what reading the bytes costs without webdataset's streaming tar reader."""
    import tarfile

    t0 = time.perf_counter()
    with open(shard, "rb", buffering=0) as f:
        for m in tarfile.open(fileobj=f, mode="r:"):
            if m.isfile():
                f.seek(m.offset_data)
                f.readinto(bytearray(m.size))
    return time.perf_counter() - t0


def time_latent_loader(shard: str, check_finite: bool = True) -> float:
    ds = make_latent_dataset(shard, check_finite=check_finite, shuffle_shards=False, strict=True)
    t0 = time.perf_counter()
    for s in ds:
        del s
    return time.perf_counter() - t0


def warm_up(out_dir: str) -> None:
    """Run the loader once on a tiny clip so one-time costs (lazy imports, first torch.linalg calls)
    are not charged to the first timed run."""
    from data.video import encode_mp4
    from sana_wm.testing.data import raw_video_sample, tiny_video_clip, write_raw_shard

    frames, c2w, K = tiny_video_clip(num_frames=9, height=64, width=64)
    os.makedirs(out_dir, exist_ok=True)
    url = write_raw_shard(os.path.join(out_dir, "warmup.tar"), [raw_video_sample("w", frames=frames, c2w=c2w, intrinsics=K, mp4=encode_mp4(frames, FPS))])
    for _ in make_video_dataset(url, num_frames=9, height=64, width=64, target_fps=FPS, strict=True):
        pass


def best_interleaved(fns: list, repeats: int) -> list[float]:
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fn())
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips-161", type=int, default=2)
    p.add_argument("--clips-961", type=int, default=1)
    p.add_argument("--latent-samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latent-only", action="store_true", help="skip the video part (no encoding; ~1 min)")
    p.add_argument("--out", default=None, help="keep the generated shards here (default: a temp dir)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.out is None:  # generated shards are ~0.3 GB: remove them afterwards unless --out keeps them
        with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
            return run(a, tmp)
    return run(a, a.out)


def run(a: argparse.Namespace, out: str) -> int:
    """Generate the inputs under ``out``, time everything, print the table."""
    t_start = time.perf_counter()
    load_start = os.getloadavg()  # other jobs on a shared machine slow both sides; recorded with the results
    warm_up(os.path.join(out, "warmup"))
    rows, notes = [], []
    for num_frames, clips in ((161, a.clips_161), (961, a.clips_961)):
        if clips < 1 or a.latent_only:
            continue
        t0 = time.perf_counter()
        shard, mp4s = make_video_shard(os.path.join(out, f"video{num_frames}"), num_frames, clips)
        mb = sum(len(m) for m in mp4s) / 2**20
        print(f"# encoded {clips} x {num_frames} frames 720p ({mb:.1f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
        raw_t, loader_t, copy_t = best_interleaved(
            [
                lambda m=mp4s, f=num_frames: time_raw_decord(m, f),
                lambda s=shard, f=num_frames: time_loader(s, f),
                lambda m=mp4s, f=num_frames: time_raw_decord(m, f, copy=True),
            ],
            a.repeats,
        )
        rows.append((f"720p H.264 {num_frames} f → 704×1280 uint8", clips, num_frames, raw_t, loader_t, mb))
        notes.append(f"raw decord with .asnumpy() (extra copy), {num_frames} f: {clips / copy_t:.3f} clips/s")
        if num_frames == 161:
            (float_t,) = best_interleaved([lambda s=shard: time_loader(s, 161, "float")], 1)
            rows.append(("  same, float [-1, 1] (3,F,H,W) output", clips, num_frames, raw_t, float_t, mb))
    for num_frames in (161, 961):
        n = a.latent_samples if num_frames == 161 else max(1, a.latent_samples // 2)
        shard = make_latent_shard(os.path.join(out, f"latent{num_frames}"), num_frames, n)
        mb = os.path.getsize(shard) / 2**20
        raw_t, loader_t, nocheck_t, view_t, bare_t = best_interleaved(
            [
                lambda s=shard: time_raw_latent(s),
                lambda s=shard: time_latent_loader(s),
                lambda s=shard: time_latent_loader(s, False),
                lambda s=shard: time_raw_latent(s, zero_copy=True),
                lambda s=shard: time_bare_tar(s),
            ],
            a.repeats + 1,
        )
        rows.append((f"cached latent {num_frames} f (bf16 128×{(num_frames - 1) // 8 + 1}×22×40)", n, num_frames, raw_t, loader_t, mb))
        rows.append(("  same, check_finite=False", n, num_frames, raw_t, nocheck_t, mb))
        notes.append(
            f"latent {num_frames} f, raw read with zero-copy .npy views instead of np.load: {n / view_t:.3f} samples/s; "
            f"loader overhead over that: {100 * (loader_t / view_t - 1):+.1f}% ({100 * (nocheck_t / view_t - 1):+.1f}% with check_finite=False)"
        )
        notes.append(f"latent {num_frames} f, bare tarfile random-access read of the same members (no webdataset): {n / bare_t:.3f} samples/s")

    print()
    print("| workload | clips | raw clips/s | loader clips/s | loader frames/s | loader MB/s | loader overhead |")
    print("|---|---|---|---|---|---|---|")
    for name, n, f, raw_t, load_t, mb in rows:
        print(
            f"| {name} | {n} | {n / raw_t:.3f} | {n / load_t:.3f} | {n * f / load_t:.1f} | {mb / load_t:.1f} | {100 * (load_t / raw_t - 1):+.1f}% |"
        )
    for note in notes:
        print(f"- {note}")
    import av
    import decord
    import webdataset

    print(
        f"\npython {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, decord {decord.__version__}, "
        f"av {av.__version__}, webdataset {webdataset.__version__}; {os.cpu_count()} CPUs; total {time.perf_counter() - t_start:.0f} s; "
        f"load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} (1 min)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
