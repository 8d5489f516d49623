"""`make demo` (`python -m sana_wm.demo`): the whole SANA-WM workflow on a laptop CPU, from nothing, in minutes.

Steps (every artefact lands under ``--out``, default ``demo_out/``):

1. **World** — render the bundled synthetic 3-D world (`data.synthetic.build_default_dataset`: 64 clips × 33 frames
   at 64 × 112 with coarse patterns and exact camera poses; 16 rooms with 4 camera paths each from one shared start
   frame, paths made of the scored motions, captions that describe the room only) into video shards, plus 4 held-out
   rooms for the codec's PSNR.
2. **Codec** — no pretrained LTX-2 VAE is available offline, and one trained from random weights on a CPU stays a
   grey field for many minutes, so the demo *computes* one: a diffusers ``AutoencoderKLLTX2Video`` in the patch
   layout (16× spatial compression in the patchifier, three temporal stages: 8× temporal; 64 latent channels) whose
   weights are set to the principal components of the training clips (`sana_wm.encoders.pca_init`), with its latent
   channels half-whitened (``--latent-whiten``). Its PSNR on the held-out rooms goes into the summary. The text
   encoder is a *tiny random* Gemma-2 with an in-process tokenizer: captions carry (almost) no meaning. Both are
   saved in the release layout (``model/vae``, ``model/text_encoder``, ``model/config.yaml`` with
   ``vae.vae_stride``).
3. **Cache** — `python -m sana_wm.training.cache` logic: clips → latent shards (latents 64 × 5 × 4 × 7).
4. **Train** — ``python train.py experiment=demo_cpu`` (Hydra + Lightning, progress bar) trains the tiny DiT
   (5.8 M parameters) from scratch for ``--dit-steps`` steps, with the generation's text encoder configured so that
   caption dropout trains on its encoding of "" (the unconditional caption of guidance); the trained weights are
   exported in the official layout.
5. **Generate** — ``python infer.py`` from that checkpoint with an action string: an mp4 with the WASD / joystick
   overlay, plus the poses.
6. **Evaluate** — camera following: the same checkpoint generates one video per held-out action string (never a
   training trajectory) and sampling seed (``--eval-seeds``; each seed starts the strings in other rooms), and
   `sana_wm.inference.motion` re-estimates from the pixels (ignoring structure finer than the codec's blocks)
   whether each commanded turn and forward/back move happened; the same is repeated with the camera branch's output
   projections zeroed. A contact sheet (input, frames with and without the camera branch, the
   commanded path seen from above) is written as PNG.

Why this world, this codec, 16× spatial compression and coarse patterns, and what they cost: docs/demo.md.
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

__all__ = ["fit_demo_vae", "write_model_root", "main"]

REPO = Path(__file__).resolve().parents[1]
CAPTION_TOKENS = 32  # = the tiny DiT preset's caption_length
DEMO_FLOW_SHIFT = 3.0  # configs/experiment/demo_cpu.yaml trains with this shift; sample with the same


def _say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def _load_clips(shards: list[str], num_frames: int, height: int, width: int, spatial_stride: int) -> torch.Tensor:
    """All clips of the video shards as one (N, 3, F, H, W) float tensor in [-1, 1] (first F frames)."""
    from data.schema import collate
    from data.webdataset import make_video_dataset

    ds = make_video_dataset(shards, num_frames=num_frames, height=height, width=width, frame_sampling="start",
                            spatial_stride=spatial_stride, shuffle_shards=False, rank=0, world_size=1, strict=True)
    return collate(list(ds)).video


# The demo world's paths draw their segments from the motions the camera-following score checks (forward, back,
# yaw left/right, alone and combined, and pauses), and its captions describe the room only: the camera is the one
# source of the motion (docs/demo.md).
DEMO_SEGMENTS = ("w", "s", "l", "j", "wl", "wj", "none")

# Held-out action strings of the camera-following score: 32 steps each (33 frames), balanced: 20 turn checks (10 right
# "l", 10 left "j") and 20 move checks (10 forward "w", 10 back "s"), so a video that drifts one way scores 50 % on
# each kind. One draw of 40 checks puts a chance score within ±16 points of 50 % (2 s.d.); the demo scores every
# string under several seeds (±9 points with 3). The demo checks that none is the action string of a training clip.
EVAL_ACTIONS = (
    "w-11,l-21",
    "s-11,j-21",
    "l-19,s-13",
    "j-19,w-13",
    "s-12,l-20",
    "s-12,j-20",
    "wl-27,none-5",
    "wj-27,none-5",
    "w-25,s-7",
    "j-9,l-23",
    "l-16,w-16",
    "j-16,s-16",
    "w-8,j-24",
    "s-8,l-24",
    "wj-20,none-12",
    "wl-21,none-11",
    "s-20,l-12",
    "j-12,w-20",
    "l-10,s-22",
    "s-16,j-16",
)


#: Rooms between the start frames that one held-out string gets under consecutive seeds (coprime with the demo's 16
#: rooms: up to 16 seeds give every string a different room each).
START_STEP = 7


def _psnr(mse: float) -> float:
    return float(10 * np.log10(4.0 / mse))  # peak-to-peak 2 in [-1, 1]


@torch.no_grad()
def _reconstruction_psnr(vae, clips: torch.Tensor) -> float:
    """PSNR (dB) of whole-clip reconstructions (encode → latent mode → decode, clamped), pooled over clips."""
    mse = [(vae.decode(vae.encode(clips[i:i + 1]).latent_dist.mode()).sample.clamp(-1, 1) - clips[i:i + 1])
           .square().mean().item() for i in range(len(clips))]
    return _psnr(float(np.mean(mse)))


def fit_demo_vae(clips: torch.Tensor, out_dir: str | os.PathLike, held_out: torch.Tensor | None = None,
                 spatial_compression: int = 8, latent_channels: int = 32, seed: int = 0,
                 latent_whiten: float = 0.5) -> dict:
    """The demo's LTX-2 VAE, set to the principal components of `clips` (N, 3, F, H, W) in [-1, 1], saved to
    `out_dir`.

    The patch layout (`sana_wm.encoders.pca_init.patch_ltx2_vae`: all spatial compression in the patchifier, three
    temporal stages) initialised by `pca_init_ltx2_vae` — no gradient steps, so it takes seconds and is the same on
    every machine (docs/demo.md says why this instead of training). Its per-channel latent normalisation is then set
    from the same clips (`set_latent_statistics`, `latent_whiten`: 1 = every channel unit variance).

    Returns:
        {"path", "init", "spatial_compression", "latent_channels", "patch_variance_kept", "group_variance_kept",
        "latent_std", "latent_whiten", "psnr_train", "psnr_heldout", "heldout_clips"} — the variance shares of
        `pca_init_ltx2_vae`; the raw channels' stds; PSNRs (dB) of whole-clip reconstructions (training: the first 4
        clips); psnr_heldout is None without `held_out`.
    """
    from sana_wm.encoders.pca_init import patch_ltx2_vae, pca_init_ltx2_vae, set_latent_statistics

    vae = patch_ltx2_vae(latent_channels, spatial_compression=spatial_compression, seed=seed)
    init = pca_init_ltx2_vae(vae, clips)
    init.update(set_latent_statistics(vae, clips, whiten=latent_whiten))
    path = Path(out_dir)
    vae.save_pretrained(path)
    return {
        "path": str(path), "init": "pca", "spatial_compression": int(spatial_compression),
        "latent_channels": int(latent_channels), **init,
        "psnr_train": _reconstruction_psnr(vae, clips[:4]),
        "psnr_heldout": None if held_out is None else _reconstruction_psnr(vae, held_out),
        "heldout_clips": 0 if held_out is None else len(held_out),
    }


def write_model_root(root: Path, height: int, width: int, spatial_compression: int, latent_channels: int,
                     seed: int = 0) -> None:
    """Release layout for infer.py: config.yaml (+ vae/ written by fit_demo_vae) + a tiny random Gemma-2."""
    import yaml

    from sana_wm.encoders.tiny import save_tiny_text_encoder

    save_tiny_text_encoder(root / "text_encoder", hidden=32, seed=seed)
    s = int(spatial_compression)
    config = {
        "model": {"model": "tiny", "sample_size": [height, width],
                  "sana_wm_config": {"in_channels": int(latent_channels), "out_channels": int(latent_channels)}},
        "vae": {"vae_stride": [8, s, s], "use_framewise_decoding": False},
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



def evaluate_camera_following(model_root: Path, checkpoint: Path, starts: list, actions: tuple[str, ...],
                              num_steps: int, cfg_scale: float, seed: int, show_action: str,
                              translation_speed: float | None = None, num_seeds: int = 1,
                              camera_guidance: float = 1.0) -> dict:
    """Generate one video per held-out action and sampling seed with the trained DiT, then again with its camera
    branch zeroed, and score each with :func:`sana_wm.inference.motion.camera_following`.

    Paths run at `translation_speed` metres per frame (default the DSL's). Seeds are `seed` … `seed + num_seeds − 1`;
    under seed `seed + r`, string i starts from `starts[(i + START_STEP·r) mod len(starts)]`. One draw of 40 checks
    scatters by about ±8 points; the seeds average that out, and each seed's rate is kept so the spread can be seen.
    Both models sample with the same `camera_guidance` (the pipeline's camera guidance scale); with the camera branch
    zeroed the commanded and the still camera give the same prediction, so it changes nothing there.

    `starts`: [(image uint8 (H, W, 3), intrinsics (4,), prompt)]. Also returns the frames generated for
    `show_action` from starts[0] (both models) for the contact sheet.
    """
    from sana_wm.camera import action_to_c2w
    from sana_wm.inference.motion import camera_following, following_rate
    from sana_wm.inference.pipeline import SanaWMPipeline

    pipe = SanaWMPipeline.from_model_root(model_root, checkpoint=checkpoint, use_refiner=False, device="cpu",
                                          dtype=torch.float32)

    def run(action: str, start, sample_seed: int) -> np.ndarray:
        image, K, prompt = start
        c2w = action_to_c2w(action, translation_speed)
        res = pipe.generate(image, prompt, c2w, K, num_frames=len(c2w), num_steps=num_steps, cfg_scale=cfg_scale,
                            seed=sample_seed, refine=False, progress=False, camera_guidance=camera_guidance)
        return res.video

    # The codec decodes each latent cell to its own block: the motion estimate ignores structure finer than a block.
    block = pipe.codec.spatial_compression
    seeds = [seed + r for r in range(num_seeds)]
    out: dict = {"actions": list(actions), "seeds": seeds, "sampling_steps": num_steps, "cfg_scale": cfg_scale,
                 "camera_cfg_scale": camera_guidance,
                 "motion_block_px": block}
    shown = {}
    for label in ("with_camera", "camera_branch_zeroed"):
        if label == "camera_branch_zeroed":
            out["zeroed_tensors"] = pipe.dit.zero_camera_branch()
        checks, per_seed = [], []
        for s in seeds:
            drawn = []
            for i, action in enumerate(actions):
                # each further seed also moves every string to another room, so that a room's own drift (what the
                # model does there without a camera) is not paired with one command only
                start = starts[(i + START_STEP * (s - seed)) % len(starts)]
                drawn += camera_following(run(action, start, s), action, block_px=block)
            per_seed.append(following_rate(drawn)["rate"])
            checks += drawn
        out[label] = {**following_rate(checks), "rate_per_seed": per_seed}
        shown[label] = run(show_action, starts[0], seed)
        kinds = ", ".join(f"{k} {100 * v:.0f} %" for k, v in out[label]["by_kind"].items())
        spread = "/".join(f"{100 * r:.0f}" for r in per_seed)
        print(f"camera following ({label.replace('_', ' ')}): {out[label]['passed']}/{out[label]['checks']} "
              f"checks = {100 * out[label]['rate']:.0f} % ({kinds}; per seed {spread} %)", flush=True)
    return {"summary": out, "frames": shown}


def _topdown_path(c2w: np.ndarray, size: tuple[int, int]):
    """A top-down plot (PIL image) of camera positions (x right, z = forward of the first frame up) with headings."""
    from PIL import Image, ImageDraw

    W, H = size
    img = Image.new("RGB", (W, H), (250, 250, 250))
    d = ImageDraw.Draw(img)
    pos = c2w[:, :3, 3][:, [0, 2]]
    fwd = c2w[:, :3, 2][:, [0, 2]]
    span = max(float(np.ptp(pos, axis=0).max()), 0.5)
    centre = (pos.max(0) + pos.min(0)) / 2
    scale = 0.6 * min(W, H) / span

    def xy(p):
        return (W / 2 + (p[0] - centre[0]) * scale, H / 2 - (p[1] - centre[1]) * scale)

    d.line([xy(p) for p in pos], fill=(40, 90, 200), width=2)
    arrow = 0.12 * min(W, H) / scale
    for k in range(0, len(pos), max(1, len(pos) // 8)):
        a = xy(pos[k])
        b = xy(pos[k] + arrow * fwd[k] / (np.linalg.norm(fwd[k]) + 1e-9))
        d.line([a, b], fill=(220, 80, 40), width=1)
    s = xy(pos[0])
    d.ellipse([s[0] - 3, s[1] - 3, s[0] + 3, s[1] + 3], fill=(0, 150, 0))
    d.text((4, 2), "commanded path (top view)", fill=(0, 0, 0))
    d.text((4, H - 12), "green: start, red: heading", fill=(90, 90, 90))
    return img


def contact_sheet(path: Path, image: np.ndarray, action: str, rows: dict[str, np.ndarray], num_shown: int = 6,
                  zoom: int = 2) -> Path:
    """PNG: the input frame and the commanded path (top view), then `num_shown` evenly spaced frames per row of
    `rows` ({label: (F, H, W, 3) uint8}), every image scaled by `zoom`."""
    from PIL import Image, ImageDraw

    from sana_wm.camera import action_to_c2w

    H, W = image.shape[:2]
    h, w = H * zoom, W * zoom
    label_h, pad = 14, 4
    cols = num_shown
    sheet_w = cols * (w + pad) + pad
    sheet_h = (1 + len(rows)) * (h + label_h + pad) + pad
    sheet = Image.new("RGB", (sheet_w, sheet_h), (255, 255, 255))
    d = ImageDraw.Draw(sheet)

    def put(arr, col, row, label):
        x, y = pad + col * (w + pad), pad + row * (h + label_h + pad)
        d.text((x, y), label, fill=(0, 0, 0))
        sheet.paste(Image.fromarray(arr).resize((w, h), Image.NEAREST), (x, y + label_h))

    put(image, 0, 0, "input frame")
    c2w = action_to_c2w(action)
    x, y = pad + (w + pad), pad
    d.text((x, y), f"action {action!r}", fill=(0, 0, 0))
    sheet.paste(_topdown_path(c2w, (w, h)), (x, y + label_h))
    for r, (label, frames) in enumerate(rows.items(), start=1):
        idx = np.linspace(0, len(frames) - 1, cols).round().astype(int)
        for c, k in enumerate(idx):
            put(frames[k], c, r, f"{label}: frame {k}" if c == 0 else f"frame {k}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sana_wm.demo", description="SANA-WM end to end on CPU (make demo).")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--num-clips", type=int, default=64, help="training clips of the synthetic world")
    p.add_argument("--clips-per-room", type=int, default=4,
                   help="training clips sharing a room and its start frame, told apart by the camera alone")
    p.add_argument("--heldout-clips", type=int, default=4, help="rooms never trained on, for the codec's PSNR")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=112)
    p.add_argument("--pattern-scale", type=float, default=3.0, help="coarseness of the rooms' patterns (docs/demo.md)")
    p.add_argument("--vae-stride", type=int, default=16, choices=(8, 16, 32), help="the codec's spatial compression")
    p.add_argument("--latent-channels", type=int, default=64, help="the codec's latent channels (= the DiT's in/out)")
    p.add_argument("--latent-whiten", type=float, default=0.5,
                   help="per-channel latent normalisation: 1 = unit variance per channel, 0 = one common scale")
    p.add_argument("--dit-steps", type=int, default=750, help="DiT training steps (batches of 8 clips)")
    p.add_argument("--action", default="w-12,l-20", help="camera action for the generated video (action DSL)")
    p.add_argument("--translation-speed", type=float, default=0.05,
                   help="metres per frame of the world's paths and of every generated path (the DSL's default)")
    p.add_argument("--num-frames", type=int, default=33, help="frames to generate (8k+1)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--cfg-scale", type=float, default=1.0,
                   help="classifier-free guidance (1 = none: the demo's random text encoder gives captions no meaning)")
    p.add_argument("--camera-cfg-scale", type=float, default=2.0,
                   help="camera guidance of the demo video and the scored videos (1 = off; docs/demo.md)")
    p.add_argument("--eval-actions", type=int, default=len(EVAL_ACTIONS),
                   help=f"held-out action strings scored for camera following (at most {len(EVAL_ACTIONS)}; 0 skips)")
    p.add_argument("--eval-steps", type=int, default=10, help="sampling steps of the camera-following videos")
    p.add_argument("--eval-seeds", type=int, default=3,
                   help="sampling seeds per held-out action string (each adds one video per string and model)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from sana_wm.console import quiet_third_party

    quiet_third_party()
    if not (REPO / "train.py").is_file() or not (REPO / "infer.py").is_file():
        print(f"error: the demo runs train.py and infer.py from a source checkout; not found under {REPO}", file=sys.stderr)
        return 2
    if not 0 <= a.eval_actions <= len(EVAL_ACTIONS):
        print(f"error: --eval-actions must be in 0..{len(EVAL_ACTIONS)}; got {a.eval_actions}", file=sys.stderr)
        return 2
    if not 0 <= a.camera_cfg_scale < float("inf"):
        print(f"error: --camera-cfg-scale must be a finite number >= 0 (1 = off); got {a.camera_cfg_scale}",
              file=sys.stderr)
        return 2
    if a.eval_seeds < 1:
        print(f"error: --eval-seeds must be >= 1; got {a.eval_seeds}", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    from data.synthetic import DEFAULT_CONFIG, build_default_dataset, dataset_actions, make_clip, plan_clip
    from data.synthetic.raycast import render

    H, W, F, S, C = a.height, a.width, DEFAULT_CONFIG["num_frames"], a.vae_stride, a.latent_channels
    world = {"num_frames": F, "height": H, "width": W, "pattern_scale": a.pattern_scale}
    heldout_seed = DEFAULT_CONFIG["seed"] + 1000  # other rooms than any training clip's
    if a.num_clips < 1 or a.clips_per_room < 1:
        print(f"error: --num-clips and --clips-per-room must be >= 1; got {a.num_clips}, {a.clips_per_room}",
              file=sys.stderr)
        return 2
    _say(f"1/6 synthetic world: {a.num_clips} clips x {F} frames at {H}x{W}, {a.clips_per_room} camera paths per room "
         f"(+ {a.heldout_clips} held-out rooms)")
    t = time.perf_counter()
    paths = dict(trajectory="dsl", clips_per_room=a.clips_per_room, dsl_segments=DEMO_SEGMENTS, caption_motion=False,
                 translation_speed=a.translation_speed)
    shards = build_default_dataset(out / "data" / "videos", num_clips=a.num_clips, **paths, **world)
    heldout = [make_clip(i, seed=heldout_seed, **world).frames for i in range(a.heldout_clips)]
    times["world"] = time.perf_counter() - t
    print(f"{len(shards)} video shards in {out / 'data' / 'videos'} ({times['world']:.0f} s)")

    _say(f"2/6 codec: an LTX-2 VAE ({S}x spatial / 8x temporal, {C} latent channels) set to the principal "
         "components of the clips")
    t = time.perf_counter()
    model_root = out / "model"
    clips = _load_clips(shards, F, H, W, S)
    held = (torch.from_numpy(np.stack(heldout)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1) if heldout else None
    vae_info = fit_demo_vae(clips, model_root / "vae", held_out=held, spatial_compression=S, latent_channels=C,
                            seed=a.seed, latent_whiten=a.latent_whiten)
    write_model_root(model_root, H, W, S, C, seed=a.seed)
    times["codec"] = time.perf_counter() - t
    held_txt = f", held-out rooms {vae_info['psnr_heldout']:.1f} dB" if vae_info["psnr_heldout"] is not None else ""
    print(f"VAE: principal components keep {100 * vae_info['group_variance_kept']:.1f} % of the 8-frame features' "
          f"variance; reconstruction PSNR: training "
          f"clips {vae_info['psnr_train']:.1f} dB{held_txt}; saved to {vae_info['path']} ({times['codec']:.0f} s)")
    print("NOTE: the text encoder is a tiny *random* Gemma-2 (untrained): captions are encoded by an untrained "
          "encoder and carry almost no meaning in this demo.")

    _say("3/6 caching latents (VAE + text encoder -> latent shards)")
    t = time.perf_counter()
    from sana_wm.training.cache import cache_latents

    cache = cache_latents(shards, out / "data" / "latents", model_root / "vae", model_root / "text_encoder",
                          num_frames=F, height=H, width=W, device="cpu", encoder_dtype="float32",
                          latent_dtype="float32", max_sequence_length=CAPTION_TOKENS, num_workers=0, max_count=8)
    times["cache"] = time.perf_counter() - t
    print(f"{cache['samples']} latent samples in {cache['out_dir']} ({times['cache']:.0f} s)")

    _say(f"4/6 training the tiny DiT for {a.dit_steps} steps: python train.py experiment=demo_cpu")
    t = time.perf_counter()
    train_dir = out / "train"
    _run([sys.executable, "train.py", "experiment=demo_cpu", f"paths.data_root={out / 'data'}",
          f"output_dir={train_dir}", f"trainer.max_steps={a.dit_steps}", f"seed={a.seed}",
          f"model.in_channels={C}", f"model.out_channels={C}",
          # the text encoder generation uses, so that dropped captions train on its encoding of "" (the negative
          # prompt of classifier-free guidance), not on a random table
          "encoders.kind=pretrained", f"encoders.text_encoder={model_root / 'text_encoder'}", "encoders.dtype=float32"],
         "training")
    times["train"] = time.perf_counter() - t
    checkpoint = train_dir / "export" / "dit.safetensors"
    curve = _loss_curve(train_dir)

    _say(f"5/6 generating {a.num_frames} frames with action {a.action!r}: python infer.py")
    t = time.perf_counter()
    from PIL import Image

    starts = []
    rooms = -(-a.num_clips // a.clips_per_room)
    for r in range(max(1, min(rooms, a.eval_actions))):  # the start frames of training rooms (frame 0 only)
        clip = plan_clip(r * a.clips_per_room, seed=DEFAULT_CONFIG["seed"], **paths, **world)
        image = render(clip.scene, clip.c2w[0], clip.K, clip.height, clip.width, DEFAULT_CONFIG["supersample"])
        starts.append((image, np.asarray(clip.K, np.float64), clip.caption))
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(starts[0][0]).save(inputs / "first_frame.png")
    np.save(inputs / "intrinsics.npy", starts[0][1])
    (inputs / "prompt.txt").write_text(starts[0][2] + "\n", encoding="utf-8")
    _run([sys.executable, "infer.py", "--model_root", str(model_root), "--checkpoint", str(checkpoint),
          "--no_refiner", "--image", str(inputs / "first_frame.png"), "--prompt", str(inputs / "prompt.txt"),
          "--intrinsics", str(inputs / "intrinsics.npy"), "--action", a.action,
          "--translation_speed", str(a.translation_speed), "--num_frames", str(a.num_frames),
          "--step", str(a.steps), "--cfg_scale", str(a.cfg_scale), "--camera_cfg_scale", str(a.camera_cfg_scale),
          "--device", "cpu", "--dtype", "fp32",
          "--output_dir", str(out / "videos"), "--output_name", "demo"], "inference")
    times["generate"] = time.perf_counter() - t

    _say(f"6/6 camera following on {a.eval_actions} held-out action strings x {a.eval_seeds} seeds, with and without "
         "the camera branch")
    t = time.perf_counter()
    actions = EVAL_ACTIONS[: a.eval_actions]
    trained = dataset_actions(out / "data" / "videos")
    seen = sorted(set(actions) & trained)
    if seen:
        raise RuntimeError(f"held-out action strings {seen} are training trajectories of this world; pick others")
    evaluation = evaluate_camera_following(model_root, checkpoint, starts, actions, a.eval_steps,
                                           a.cfg_scale, a.seed, a.action, a.translation_speed, a.eval_seeds,
                                           a.camera_cfg_scale)
    following = evaluation["summary"] if actions else None
    sheet = contact_sheet(out / "contact_sheet.png", starts[0][0], a.action,
                          {"generated": evaluation["frames"]["with_camera"],
                           "camera branch zeroed": evaluation["frames"]["camera_branch_zeroed"]})
    times["evaluate"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all

    summary = {
        "wall_seconds": {k: round(v, 1) for k, v in times.items()},
        "world": {**world, "num_clips": a.num_clips, "clips_per_room": a.clips_per_room,
                  "translation_speed": a.translation_speed, "heldout_clips": a.heldout_clips,
                  "heldout_seed": heldout_seed},
        "vae": vae_info,
        "dit_loss_curve": curve,
        "camera_following": following,
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
            "contact_sheet": str(sheet),
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
