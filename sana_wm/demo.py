"""`make demo` (`python -m sana_wm.demo`): the whole SANA-WM workflow on a laptop CPU, from nothing, in minutes.

Steps (every artefact lands under ``--out``, default ``demo_out/``):

1. **World** — render the bundled synthetic 3-D world (`data.synthetic.build_default_dataset`: 16 clips × 33 frames
   at 128 × 224, exact camera poses) into video shards.
2. **Codec** — no pretrained LTX-2 VAE is available offline, so train a tiny one: diffusers
   ``AutoencoderKLLTX2Video`` with the real layout (32× spatial / 8× temporal compression, causal first frame), 16
   latent channels, ~2 M parameters, for ``--vae-seconds`` (150) on random 9-frame windows of the clips with an MSE
   reconstruction loss. Its per-channel latent mean/std over the clips are written into the VAE's
   ``latents_mean/std`` so cached latents are normalised. The text encoder is a *tiny random* Gemma-2 with an
   in-process tokenizer: captions are encoded by an untrained encoder, so the prompt carries (almost) no meaning.
   Both are saved in the release layout (``model/vae``, ``model/text_encoder``, ``model/config.yaml``).
3. **Cache** — `python -m sana_wm.training.cache` logic: clips → latent shards (latents 16 × 5 × 4 × 7).
4. **Train** — ``python train.py experiment=demo_cpu`` (Hydra + Lightning, progress bar) trains the tiny DiT
   (5.8 M parameters) from scratch for ``--dit-steps`` steps; the trained weights are exported in the official layout.
5. **Generate** — ``python infer.py`` from that checkpoint with an action string: an mp4 with the WASD / joystick
   overlay, plus the poses.

At 4 × 7 latent tokens per frame the videos are blurry by construction (32× spatial compression of a 128 × 224
frame), and a VAE trained from scratch for minutes on a CPU does not get past (nearly) flat colour fields, so the
generated video is close to a uniform colour under the action overlay. The demo shows the machinery — data, codec,
caching, training, resumable checkpoints, inference — working end to end, not image quality; for real outputs use
the released VAE (`--model_root`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["train_tiny_vae", "write_model_root", "main"]

REPO = Path(__file__).resolve().parents[1]
LATENT_CHANNELS = 16  # = the tiny DiT preset's in_channels
CAPTION_TOKENS = 32  # = the tiny DiT preset's caption_length
DEMO_FLOW_SHIFT = 3.0  # configs/experiment/demo_cpu.yaml trains with this shift; sample with the same


def _say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def _load_clips(shards: list[str], num_frames: int, height: int, width: int) -> torch.Tensor:
    """All clips of the video shards as one (N, 3, F, H, W) float tensor in [-1, 1] (first F frames)."""
    from data.schema import collate
    from data.webdataset import make_video_dataset

    ds = make_video_dataset(shards, num_frames=num_frames, height=height, width=width, frame_sampling="start",
                            shuffle_shards=False, rank=0, world_size=1, strict=True)
    return collate(list(ds)).video


def train_tiny_vae(clips: torch.Tensor, out_dir: str | os.PathLike, seconds: float = 150.0, seed: int = 0,
                   batch_size: int = 2, window: int = 9, lr: float = 2e-4) -> dict:
    """Train a tiny LTX-2 VAE on `clips` (N, 3, F, H, W) for `seconds`, set its latent statistics, save it.

    Recipe (the best of short CPU sweeps, see docs/training.md): full frames, random `window`-frame windows (8k+1),
    batch 2, Adam at 2e-4, MSE. A CPU budget of minutes is far too little for a 32×-compressing VAE trained from
    scratch: reconstructions stay near the flat mean colour (15.4 dB PSNR on these clips; a 32× area-average +
    bilinear upsample, the ceiling of a 4 × 7 latent grid without detail synthesis, reaches 22.7 dB).

    Returns:
        {"path", "steps", "loss_first", "loss_last", "psnr"} — PSNR (dB) of full-clip reconstructions.
    """
    from tqdm import tqdm

    from sana_wm.encoders.tiny import tiny_ltx2_vae

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae = tiny_ltx2_vae(LATENT_CHANNELS, seed=seed, random_stats=False).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    N, _, F, H, W = clips.shape
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(desc="tiny VAE", unit="step", total=None, mininterval=2.0)
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(N, (batch_size,), generator=g)
        start = torch.randint(F - window + 1, (batch_size,), generator=g)
        batch = torch.stack([clips[i, :, a:a + window] for i, a in zip(idx, start, strict=True)])
        rec = vae.decode(vae.encode(batch).latent_dist.mode()).sample
        loss = (rec - batch).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    bar.close()
    vae.eval()
    with torch.no_grad():
        zs, mse = [], []
        for i in range(N):
            z = vae.encode(clips[i:i + 1]).latent_dist.mode()
            zs.append(z)
            mse.append((vae.decode(z).sample.clamp(-1, 1) - clips[i:i + 1]).square().mean().item())
        z = torch.cat(zs)  # (N, C, T, h, w)
        vae.latents_mean.copy_(z.mean(dim=(0, 2, 3, 4)))
        vae.latents_std.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3))
    path = Path(out_dir)
    vae.save_pretrained(path)
    psnr = float(10 * np.log10(4.0 / np.mean(mse)))  # peak-to-peak 2 in [-1, 1]
    return {"path": str(path), "steps": len(losses), "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
            "psnr": psnr}


def write_model_root(root: Path, height: int, width: int, seed: int = 0) -> None:
    """Release layout for infer.py: config.yaml (+ vae/ written by train_tiny_vae) + a tiny random Gemma-2."""
    import yaml

    from sana_wm.encoders.tiny import save_tiny_text_encoder

    save_tiny_text_encoder(root / "text_encoder", hidden=32, seed=seed)
    config = {
        "model": {"model": "tiny", "sample_size": [height, width]},
        "vae": {"vae_stride": [8, 32, 32], "use_framewise_decoding": False},
        "text_encoder": {"model_max_length": CAPTION_TOKENS},
        "scheduler": {"inference_flow_shift": DEMO_FLOW_SHIFT},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _run(cmd: list[str], what: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=REPO, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed with exit status {r.returncode} (command above)")


def _loss_curve(train_dir: Path) -> list[tuple[int, float]]:
    import csv

    rows = []
    for path in sorted(train_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    rows.append((int(row["step"]), float(row["train/loss"])))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sana_wm.demo", description="SANA-WM end to end on CPU (make demo).")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--vae-seconds", type=float, default=150.0, help="wall-clock budget for training the tiny VAE")
    p.add_argument("--dit-steps", type=int, default=300, help="DiT training steps")
    p.add_argument("--action", default="w-16,l-16", help="camera action for the generated video (action DSL)")
    p.add_argument("--num-frames", type=int, default=33, help="frames to generate (8k+1)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not (REPO / "train.py").is_file() or not (REPO / "infer.py").is_file():
        print(f"error: the demo runs train.py and infer.py from a source checkout; not found under {REPO}", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    from data.synthetic import DEFAULT_CONFIG, build_default_dataset, make_clip

    H, W, F = DEFAULT_CONFIG["height"], DEFAULT_CONFIG["width"], DEFAULT_CONFIG["num_frames"]
    _say(f"1/5 synthetic world: {DEFAULT_CONFIG['num_clips']} clips x {F} frames at {H}x{W}")
    t = time.perf_counter()
    shards = build_default_dataset(out / "data" / "videos")
    times["world"] = time.perf_counter() - t
    print(f"{len(shards)} video shards in {out / 'data' / 'videos'} ({times['world']:.0f} s)")

    _say(f"2/5 codec: training a tiny LTX-2 VAE (32x/8x, {LATENT_CHANNELS} channels) for {a.vae_seconds:.0f} s")
    t = time.perf_counter()
    model_root = out / "model"
    clips = _load_clips(shards, F, H, W)
    vae_info = train_tiny_vae(clips, model_root / "vae", seconds=a.vae_seconds, seed=a.seed)
    write_model_root(model_root, H, W, seed=a.seed)
    times["codec"] = time.perf_counter() - t
    print(f"VAE: {vae_info['steps']} steps, loss {vae_info['loss_first']:.3f} -> {vae_info['loss_last']:.3f}, "
          f"reconstruction PSNR {vae_info['psnr']:.1f} dB; saved to {vae_info['path']}")
    print("NOTE: the text encoder is a tiny *random* Gemma-2 (untrained): captions are encoded by an untrained "
          "encoder and carry almost no meaning in this demo.")

    _say("3/5 caching latents (VAE + text encoder -> latent shards)")
    t = time.perf_counter()
    from sana_wm.training.cache import cache_latents

    cache = cache_latents(shards, out / "data" / "latents", model_root / "vae", model_root / "text_encoder",
                          num_frames=F, height=H, width=W, device="cpu", encoder_dtype="float32",
                          latent_dtype="float32", max_sequence_length=CAPTION_TOKENS, num_workers=0, max_count=8)
    times["cache"] = time.perf_counter() - t
    print(f"{cache['samples']} latent samples in {cache['out_dir']} ({times['cache']:.0f} s)")

    _say(f"4/5 training the tiny DiT for {a.dit_steps} steps: python train.py experiment=demo_cpu")
    t = time.perf_counter()
    train_dir = out / "train"
    _run([sys.executable, "train.py", "experiment=demo_cpu", f"paths.data_root={out / 'data'}",
          f"output_dir={train_dir}", f"trainer.max_steps={a.dit_steps}", f"seed={a.seed}"], "training")
    times["train"] = time.perf_counter() - t
    checkpoint = train_dir / "export" / "dit.safetensors"
    curve = _loss_curve(train_dir)

    _say(f"5/5 generating {a.num_frames} frames with action {a.action!r}: python infer.py")
    t = time.perf_counter()
    from PIL import Image

    clip = make_clip(0, seed=DEFAULT_CONFIG["seed"], num_frames=F, height=H, width=W)  # clip 0 of the world
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(clip.frames[0]).save(inputs / "first_frame.png")
    np.save(inputs / "intrinsics.npy", clip.K)
    (inputs / "prompt.txt").write_text(clip.caption + "\n", encoding="utf-8")
    _run([sys.executable, "infer.py", "--model_root", str(model_root), "--checkpoint", str(checkpoint),
          "--no_refiner", "--image", str(inputs / "first_frame.png"), "--prompt", str(inputs / "prompt.txt"),
          "--intrinsics", str(inputs / "intrinsics.npy"), "--action", a.action, "--num_frames", str(a.num_frames),
          "--step", str(a.steps), "--cfg_scale", str(a.cfg_scale), "--device", "cpu", "--dtype", "fp32",
          "--output_dir", str(out / "videos"), "--output_name", "demo"], "inference")
    times["generate"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all

    summary = {
        "wall_seconds": {k: round(v, 1) for k, v in times.items()},
        "vae": vae_info,
        "dit_loss_curve": curve,
        "outputs": {
            "video_shards": str(out / "data" / "videos"),
            "latent_shards": cache["out_dir"],
            "model_root": str(model_root),
            "dit_checkpoint": str(checkpoint),
            "lightning_checkpoints": str(train_dir / "checkpoints"),
            "metrics": [str(p) for p in sorted(train_dir.glob("csv/version_*/metrics.csv"))],
            "video": str(out / "videos" / "demo.mp4"),
            "poses": str(out / "videos" / "demo_c2w.npy"),
            "record": str(out / "videos" / "demo.json"),
        },
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    _say("done")
    if curve:
        print("DiT loss: " + ", ".join(f"step {s}: {v:.3f}" for s, v in curve[:: max(1, len(curve) // 8)]))
    for name, path in summary["outputs"].items():
        print(f"{name:>22}: {path}")
    print(f"{'summary':>22}: {out / 'demo_summary.json'}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
