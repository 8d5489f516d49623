"""`python -m sana_wm.training.cache`: video shards → cached-latent shards, so pre-training skips the encoders.

Each video sample is decoded and cropped by the data pipeline (`data.webdataset.make_video_dataset`, deterministic
frame window), encoded by the frozen LTX-2 VAE (posterior mode, normalised latents) and its caption by Gemma-2 (with
the chi prefix, as training and inference expect), then written with `data.write_shards.write_latent_sample`
together with the camera tensors the loader computed. Output: ``<out>/latents-NNNNNN.tar`` + ``manifest.json`` +
``cache.json`` (the arguments, for provenance).

Several processes can split the work: ``--rank r --world-size n`` (defaults from RANK / WORLD_SIZE, so it runs under
torchrun) takes every n-th shard and writes ``<out>/rank<r>/``; train on the glob ``<out>/rank*/*.tar``.

Example::

    python -m sana_wm.training.cache --shards data/videos --out data/latents \\
        --vae models/SANA-WM_bidirectional/vae --text-encoder models/gemma-2-2b-it \\
        --num-frames 161 --height 704 --width 1280 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

__all__ = ["cache_latents", "main"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_latents(
    shards,
    out_dir: str | os.PathLike,
    vae: str | os.PathLike,
    text_encoder: str | os.PathLike,
    *,
    num_frames: int = 161,
    height: int = 704,
    width: int = 1280,
    target_fps: float | None = 16.0,
    frame_sampling: str = "start",
    batch_size: int = 1,
    num_workers: int = 2,
    device: str | None = None,
    encoder_dtype: str = "bfloat16",
    latent_dtype: str = "bfloat16",
    max_sequence_length: int = 300,
    max_count: int = 64,
    rank: int | None = None,
    world_size: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> dict:
    """Encode every sample of `shards` and write latent shards under `out_dir`.

    Args:
        shards: video shard spec (list, brace pattern, glob, directory or manifest.json).
        out_dir: output folder (``rank<r>/`` inside it when world_size > 1).
        vae, text_encoder: local diffusers-layout folders (see `LatentCodec.from_pretrained`,
            `GemmaTextEncoder.from_pretrained`).
        num_frames, height, width, target_fps, frame_sampling: clip sampling (8k+1 frames, multiples of the VAE's
            spatial compression: 32 for LTX-2).
        batch_size, num_workers: encoding batch and decoding workers.
        device: ``cuda`` / ``cpu`` (default: cuda if available).
        encoder_dtype: parameter dtype of both encoders.
        latent_dtype / text embeddings: stored dtype (bfloat16 halves the cache; float32 is lossless).
        max_sequence_length: caption tokens L (300 for the released model; must equal the DiT's caption_length).
        max_count: samples per output shard.
        rank, world_size: work split (default from the environment, else 0 / 1).
        strict: stop on the first bad sample instead of skipping it.

    Returns:
        Summary dict: samples, shards, skipped (reason → count), seconds, out_dir.
    """
    from data.schema import LATENT_SCHEMA_VERSION, collate
    from data.webdataset import make_video_dataset
    from data.write_shards import ShardSink, write_latent_sample
    from sana_wm.encoders.text import GemmaTextEncoder
    from sana_wm.encoders.vae import LatentCodec
    from sana_wm.training.data import check_shards

    if encoder_dtype not in _DTYPES or latent_dtype not in _DTYPES:
        raise ValueError(f"dtypes must be one of {sorted(_DTYPES)}; got encoder {encoder_dtype!r}, latent {latent_dtype!r}")
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    urls = check_shards(shards, "--shards")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec = LatentCodec.from_pretrained(vae, dtype=_DTYPES[encoder_dtype], device=device)
    text = GemmaTextEncoder.from_pretrained(
        text_encoder, dtype=_DTYPES[encoder_dtype], device=device, max_sequence_length=max_sequence_length
    )
    dataset = make_video_dataset(
        urls, num_frames=num_frames, height=height, width=width, target_fps=target_fps,
        frame_sampling=frame_sampling, video_format="float", spatial_stride=codec.spatial_compression,
        shuffle_shards=False, shuffle_buffer=0,
        rank=rank, world_size=world_size, strict=strict,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    out = Path(out_dir) / (f"rank{rank:03d}" if world_size > 1 else "")
    out.mkdir(parents=True, exist_ok=True)
    store = _DTYPES[latent_dtype]
    t0 = time.perf_counter()
    n, skipped = 0, {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"caching latents (rank {rank})", unit="clip")
    with ShardSink(out, prefix="latents", max_count=max_count, schema=LATENT_SCHEMA_VERSION) as sink:
        for batch in loader:
            latent = codec.encode(batch.video.to(device))  # (B, C, T, h, w) float32, normalised
            emb, mask = text.encode(list(batch.captions))  # (B, L, D), (B, L)
            for i, key in enumerate(batch.keys):
                meta = {k: batch.meta[i][k] for k in ("source", "licence", "fps", "metric_scale") if k in batch.meta[i]}
                meta.update(source_key=key, source_shard=batch.meta[i].get("__url__"), fps=float(batch.fps[i]),
                            vae=str(vae), text_encoder=str(text_encoder))
                write_latent_sample(
                    sink, key, latent[i].to(store).cpu(), emb[i].to(store).cpu(), mask[i].cpu(),
                    batch.camera_conditions[i], batch.chunk_plucker[i], meta,
                    caption=batch.captions[i], c2w=batch.c2w[i], intrinsics=batch.intrinsics[i],
                )
                n += 1
            skipped = dict(batch.skip_counts)
            if bar is not None:
                bar.update(len(batch.keys))
        paths = sink.close()
    if bar is not None:
        bar.close()
    summary = {
        "samples": n, "shards": paths, "skipped": skipped, "seconds": time.perf_counter() - t0, "out_dir": str(out),
        "args": {"shards": [str(u) for u in urls], "vae": str(vae), "text_encoder": str(text_encoder),
                 "num_frames": num_frames, "height": height, "width": width, "target_fps": target_fps,
                 "frame_sampling": frame_sampling, "latent_dtype": latent_dtype,
                 "max_sequence_length": max_sequence_length, "rank": rank, "world_size": world_size},
    }
    with open(out / "cache.json", "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "seconds"}, f, indent=2)
    if n == 0:
        raise RuntimeError(f"no sample could be cached from {len(urls)} shard(s) (skipped: {skipped}); check --shards")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sana_wm.training.cache",
        description="Encode video shards into cached-latent shards (LTX-2 VAE latents + Gemma-2 caption embeddings).",
    )
    p.add_argument("--shards", required=True, help="video shards: directory, glob, brace pattern or manifest.json")
    p.add_argument("--out", required=True, help="output folder for latent shards")
    p.add_argument("--vae", required=True, help="local LTX-2 VAE folder (diffusers layout)")
    p.add_argument("--text-encoder", required=True, help="local Gemma-2 folder (model + tokenizer)")
    p.add_argument("--num-frames", type=int, default=161, help="8k+1 frames per clip (161)")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--target-fps", type=float, default=16.0, help="resample clips to this rate (<=0: keep all frames)")
    p.add_argument("--frame-sampling", choices=("start", "center", "random"), default="start")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--encoder-dtype", choices=sorted(_DTYPES), default="bfloat16")
    p.add_argument("--latent-dtype", choices=sorted(_DTYPES), default="bfloat16", help="stored dtype of the tensors")
    p.add_argument("--max-sequence-length", type=int, default=300, help="caption tokens (= the DiT's caption_length)")
    p.add_argument("--max-count", type=int, default=64, help="samples per output shard")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--strict", action="store_true", help="stop on the first bad sample")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        s = cache_latents(
            a.shards, a.out, a.vae, a.text_encoder, num_frames=a.num_frames, height=a.height, width=a.width,
            target_fps=a.target_fps if a.target_fps > 0 else None, frame_sampling=a.frame_sampling,
            batch_size=a.batch_size, num_workers=a.num_workers, device=a.device, encoder_dtype=a.encoder_dtype,
            latent_dtype=a.latent_dtype, max_sequence_length=a.max_sequence_length, max_count=a.max_count,
            rank=a.rank, world_size=a.world_size, strict=a.strict, progress=not a.no_progress,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"cached {s['samples']} clips into {len(s['shards'])} shard(s) in {s['out_dir']} ({s['seconds']:.1f} s); "
          f"skipped: {s['skipped'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
