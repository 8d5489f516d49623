"""Time SANA-WM generation per stage with the full-size architectures and random weights.

    python bench/generate.py                       # H100/H200: stage 1 at 161 and 961 frames (60 steps, CFG 5),
                                                   # Gemma-2, refiner Gemma-3 + connectors, refiner, VAE decode
    python bench/generate.py --frames 161 --timed_steps 10   # time 10 of the 60 steps and project to 60
    python bench/generate.py --stages stage1 --compile       # stage 1 with the compiled DiT blocks (infer.py --compile)
    python bench/generate.py --quick               # CPU smoke run with tiny modules (numbers mean nothing)

Every stage runs through the same code as ``infer.py`` (``SanaWMPipeline.generate`` for stage 1,
``SanaWMPipeline.decode`` for the VAE, ``LTX2Refiner.encode_prompt`` / ``refine`` for stage 2). Modules are built
directly on the device in the compute dtype (bf16 on CUDA) with random weights, one stage at a time, and freed
before the next, so each peak-memory figure is that stage's own (weights resident for that stage + activations):

  stage1        DiT 2.66 B + LTX-2 VAE (resident, as in a run without --offload_vae); prompt embeddings random
  text          Gemma-2-2B (random weights; a tiny BPE tokenizer stands in for Gemma's, so token counts differ)
  refiner_text  Gemma-3-12B text model + LTX-2 connectors, 1024 tokens
  refiner       LTX-2 refiner transformer, video half only (13 B of 18.9 B; the audio half is never run and is
                dropped here), AR blocks of 3, K/V window 11
  vae_decode    LTX-2 VAE (diffusers default config, 1.22 B), frame-wise tiles 96/64
  pipeline      (only when asked: --stages pipeline) every module above in one SanaWMPipeline, run end to end
                (prompt → stage 1 → refiner → decode): all modules resident; then one pipeline with --offload_vae,
                --offload_refiner and the text-encoder offload (host copies pinned when it is built, not timed), run
                once as is and once more with --prefetch_refiner; so the offload flags' memory saving and time cost
                are measured on the real path (peak memory per pipeline stage, where each module sat, and the moves
                of each timed run: count, GB host→device and device→host, seconds the copies held up the GPU)

Real-time factor = stage seconds / video seconds (frames / fps). Output: a table on stdout, optionally JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sana_wm.camera import action_to_c2w  # noqa: E402
from sana_wm.diffusion import inference_sigmas  # noqa: E402
from sana_wm.encoders import GemmaTextEncoder, LatentCodec  # noqa: E402
from sana_wm.inference.pipeline import SanaWMPipeline  # noqa: E402
from sana_wm.inference.placement import move_module  # noqa: E402
from sana_wm.inference.refiner import LTX2Refiner, is_audio_only  # noqa: E402

STAGES = ("stage1", "text", "refiner_text", "refiner", "vae_decode", "pipeline")


@dataclass
class Row:
    stage: str
    frames: int
    steps: str
    seconds: float
    peak_gib: float | None
    rtf: float
    note: str = ""
    moved: dict | None = None  # pipeline rows: ModulePlacement.totals() of the timed run


@dataclass(frozen=True)
class Sizes:
    height: int
    width: int
    dit_preset: str
    dit_overrides: dict
    latent_channels: int
    caption_channels: int
    text_len: int
    quick: bool


FULL = Sizes(704, 1280, "sana_wm_1600m_720p", {}, 128, 2304, 300, False)
QUICK = Sizes(64, 96, "tiny", {"in_channels": 8, "out_channels": 8, "caption_channels": 32, "depth": 2}, 8, 32, 32,
              True)


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype):
    """Construct modules directly on ``device`` in ``dtype`` (no CPU copy, no fp32 master of a 12 B model)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


class Clock:
    """Synchronised wall time and peak CUDA memory of a block."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.peak: float | None = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**30
        self.seconds = time.perf_counter() - self.t0
        return False


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_vae(sizes: Sizes, device, dtype) -> LatentCodec:
    from diffusers import AutoencoderKLLTX2Video

    if sizes.quick:
        from sana_wm.encoders.tiny import tiny_ltx2_vae

        return LatentCodec(tiny_ltx2_vae(sizes.latent_channels).to(device, dtype))
    with building(device, dtype):
        vae = AutoencoderKLLTX2Video(spatial_compression_ratio=32, temporal_compression_ratio=8)
    vae.latents_std.fill_(1.0)
    return LatentCodec(vae)


def build_dit(sizes: Sizes, device, dtype):
    from sana_wm.models import SanaWM

    with building(device, dtype):
        dit = SanaWM.from_preset(sizes.dit_preset, **sizes.dit_overrides)
    with torch.no_grad():  # NVIDIA's init zeroes the camera outputs; compute is the same, values less degenerate
        for name, p in dit.named_parameters():
            # output gates too: a trained checkpoint's are not zero, and --fp8 keeps all-zero-row layers in bf16
            if "out_proj_cam" in name or "plucker_proj" in name or name.endswith("attn.output_gate.weight"):
                p.normal_(0.0, 0.02)
    return dit.eval().requires_grad_(False)


def bench_stage1(sizes, codec, frames, steps, timed, cfg, fps, device, dtype, warmup, compile=False,
                 fp8: str | None = None) -> list[Row]:
    dit = build_dit(sizes, device, dtype)
    if fp8 is not None:  # as `infer.py --fp8`: weights quantized once, before compile
        from sana_wm.fp8 import quantize_for_inference

        quantize_for_inference(dit, fp8, device=device)
    if compile:  # as `infer.py --compile`: per-block torch.compile; the warm-up step of each clip length compiles
        from sana_wm.parallel import apply_compile

        apply_compile(dit)
    pipe = SanaWMPipeline(dit, codec, None, None, height=sizes.height, width=sizes.width, device=device)
    h, w = sizes.height // 32, sizes.width // 32
    gen = torch.Generator().manual_seed(0)
    emb = (torch.randn(1, sizes.text_len, sizes.caption_channels, generator=gen).to(device, dtype),
           torch.ones(1, sizes.text_len, dtype=torch.bool, device=device))
    neg = (torch.randn(1, sizes.text_len, sizes.caption_channels, generator=gen).to(device, dtype), emb[1])
    z0 = torch.randn(1, sizes.latent_channels, 1, h, w, generator=gen).to(device)
    K = [sizes.width * 0.6, sizes.width * 0.6, sizes.width / 2, sizes.height / 2]
    rows = []
    for F in frames:
        c2w = action_to_c2w(f"w-{F}")
        n_run = steps if not timed else min(timed, steps)
        grid = inference_sigmas(steps, 9.8)[: n_run + 1]

        def once(sigmas, F=F, c2w=c2w, pipe=pipe):
            return pipe.generate(None, None, c2w, K, num_frames=F, cfg_scale=cfg, prompt_embeds=emb,
                                 negative_prompt_embeds=neg, image_latent=z0, sigmas=sigmas, decode=False,
                                 progress=False)

        if warmup:
            once(grid[:2])  # kernels, allocator and autotuning warm for this shape
        res = once(grid)
        sec = res.timings["stage1"]
        projected = sec * steps / n_run
        peak = res.peak_memory.get("stage1")
        note = ("cfg batch 2" if cfg != 1 else "no cfg") + (", compiled" if compile else "") + (
            f", fp8 {fp8}" if fp8 else "")
        label = f"{n_run}/{steps}" if n_run < steps else str(steps)
        if n_run < steps:
            note += f"; {sec:.1f} s measured for {n_run} steps, projected to {steps}"
        rows.append(Row("stage1", F, label, projected, None if peak is None else peak / 2**30, projected / (F / fps),
                        note))
        free()
    del pipe, dit
    free()
    return rows


def bench_text(sizes, device, dtype) -> Row:
    from transformers import Gemma2Config
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Model

    from sana_wm.encoders.tiny import tiny_gemma2, tiny_tokenizer

    tok = tiny_tokenizer()
    if sizes.quick:
        model = tiny_gemma2(32, vocab_size=len(tok)).to(device, dtype)
    else:
        with building(device, dtype):
            model = Gemma2Model(Gemma2Config(attn_implementation="eager"))
    enc = GemmaTextEncoder(model, tok, max_sequence_length=sizes.text_len)
    enc.encode(["warm up"])
    with Clock(device) as c:
        enc.encode(["A first-person walk through a quiet forest path with tall pine trees."], use_chi_prompt=True)
        enc.encode([""], use_chi_prompt=False)
    del enc, model
    free()
    return Row("text", 0, "-", c.seconds, c.peak, 0.0, "Gemma-2: prompt (chi prefix) + negative")


def _refiner_text_modules(sizes, device, dtype):
    if sizes.quick:
        from sana_wm.testing.refiner import tiny_refiner_components

        _, conn, te, tok = tiny_refiner_components(sizes.latent_channels)
        return conn.to(device, dtype), te.to(device, dtype), tok, 64
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    from sana_wm.encoders.tiny import tiny_tokenizer

    with building(device, dtype):
        te = Gemma3TextModel(Gemma3TextConfig(
            hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
            num_key_value_heads=8, head_dim=256, vocab_size=262208, sliding_window=1024, query_pre_attn_scalar=256,
        ))
        conn = LTX2TextConnectors()
    return conn, te, tiny_tokenizer(), 1024


def _refiner_transformer(sizes, device, dtype):
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel

    if sizes.quick:
        from sana_wm.testing.refiner import tiny_refiner_components

        return tiny_refiner_components(sizes.latent_channels)[0].to(device, dtype)
    with building(device, dtype):
        tr = SanaWMLTX2RefinerTransformer3DModel()
    move_module(tr, "meta", skip=lambda n: not is_audio_only(n))  # the audio half is never run: free it
    return tr


def bench_refiner_text(sizes, device, dtype) -> Row:
    conn, te, tok, length = _refiner_text_modules(sizes, device, dtype)
    ref = LTX2Refiner(_Stub(sizes.latent_channels), conn, te, tok, text_max_sequence_length=length, device=device)
    ref.encode_prompt("warm up")
    with Clock(device) as c:
        ref.encode_prompt("A first-person walk through a quiet forest path with tall pine trees.")
    del ref, conn, te
    free()
    return Row("refiner_text", 0, "-", c.seconds, c.peak, 0.0, f"Gemma-3 + connectors, {length} tokens")


class _Stub(torch.nn.Module):
    """Stands in for the refiner transformer while only the text path is timed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(1, 1)
        self.config = argparse.Namespace(patch_size=1, patch_size_t=1, in_channels=channels)


def bench_refiner(sizes, frames, fps, device, dtype, block_size, text_dim) -> Row:
    tr = _refiner_transformer(sizes, device, dtype)
    ref = LTX2Refiner(tr, torch.nn.Identity(), torch.nn.Identity(), None, device=device)
    T = (frames - 1) // 8 + 1
    h, w = sizes.height // 32, sizes.width // 32
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, sizes.latent_channels, T, h, w, generator=gen)
    length = 64 if sizes.quick else 1024
    text = (torch.randn(1, length, text_dim, generator=gen).to(device, dtype),
            torch.ones(1, length, dtype=torch.long, device=device))
    ref.refine(z[:, :, :2], prompt_embeds=text, fps=fps, block_size=block_size)  # warm-up
    with Clock(device) as c:
        ref.refine(z, prompt_embeds=text, fps=fps, block_size=block_size)
    del ref, tr
    free()
    mode = f"AR blocks of {block_size}, window 11" if block_size else "single shot"
    return Row("refiner", frames, "3", c.seconds, c.peak, c.seconds / ((frames - 1) / fps), mode)


def bench_vae(sizes, codec, frames, fps, device) -> Row:
    pipe = SanaWMPipeline(build_dit_stub(sizes), codec, None, None, height=sizes.height, width=sizes.width,
                          device=device)
    T = (frames - 1) // 8 + 1
    z = torch.randn(1, sizes.latent_channels, T, sizes.height // 32, sizes.width // 32,
                    generator=torch.Generator().manual_seed(0))
    pipe.decode(z[:, :, :2])  # warm-up
    with Clock(device) as c:
        video = pipe.decode(z)
    assert video.shape[2] == frames
    note = f"{pipe.vae_tiling} tiles {pipe.vae_tile_frames}/{pipe.vae_tile_stride} frames"
    del pipe, video
    free()
    return Row("vae_decode", frames, "-", c.seconds, c.peak, c.seconds / (frames / fps), note)


def bench_pipeline(sizes, frames, steps, timed, fps, device, dtype, offload: bool) -> list[Row]:
    """End-to-end `SanaWMPipeline.generate` with every full-size module: offload flags all off (one run), or all on
    (one run, then one more with ``prefetch_refiner``)."""
    from sana_wm.encoders.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    codec = build_vae(sizes, device, dtype)
    dit = build_dit(sizes, device, dtype)
    if sizes.quick:
        from sana_wm.encoders.tiny import tiny_gemma2

        gemma2 = tiny_gemma2(sizes.caption_channels, vocab_size=len(tok)).to(device, dtype)
    else:
        from transformers import Gemma2Config
        from transformers.models.gemma2.modeling_gemma2 import Gemma2Model

        with building(device, dtype):
            gemma2 = Gemma2Model(Gemma2Config(attn_implementation="eager"))
    text = GemmaTextEncoder(gemma2, tok, max_sequence_length=sizes.text_len)
    conn, te, rtok, length = _refiner_text_modules(sizes, device, dtype)
    refiner = LTX2Refiner(_refiner_transformer(sizes, device, dtype), conn, te, rtok, text_max_sequence_length=length,
                          device=device)
    pipe = SanaWMPipeline(dit, codec, text, refiner, height=sizes.height, width=sizes.width, device=device,
                          offload_vae=offload, offload_refiner=offload, offload_text_encoder=offload)
    free()
    image = torch.rand(3, sizes.height, sizes.width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    K = [sizes.width * 0.6, sizes.width * 0.6, sizes.width / 2, sizes.height / 2]
    n_run = min(timed, steps) if timed else steps
    grid = inference_sigmas(steps, 9.8)[: n_run + 1]
    rows = []
    for prefetch in (False, True) if offload else (False,):
        pipe.prefetch_refiner = prefetch
        tag = ("offload + prefetch" if prefetch else "offload on") if offload else "all resident"
        since = len(pipe.placement.transfers)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = pipe.generate(image, "A first-person walk through a quiet forest path.", action_to_c2w(f"w-{frames}"),
                            K, num_frames=frames, fps=fps, sigmas=grid, progress=False)
        wall = time.perf_counter() - t0
        moved = pipe.placement.totals(since=since)
        where = ", ".join(f"{k}:{v}" for k, v in sorted(pipe.placement.where.items()))
        for stage, sec in res.timings.items():
            peak = res.peak_memory.get(stage)
            rows.append(Row(f"pipe:{stage}", frames, f"{n_run}/{steps}" if stage == "stage1" else "-", sec,
                            None if peak is None else peak / 2**30, 0.0, tag))
        overall = res.peak_memory.get("overall")
        rows.append(Row(
            "pipe:total", frames, f"{n_run}/{steps}", wall, None if overall is None else overall / 2**30, 0.0,
            f"{tag}; {moved['moves']} moves, H→D {moved['h2d_bytes'] / 1e9:.1f} GB, D→H {moved['d2h_bytes'] / 1e9:.1f} "
            f"GB, copies {moved['copy_seconds']:.2f} s; end placement {where}", moved,
        ))
        del res
    del pipe, refiner, text, dit, codec, conn, te, gemma2
    free()
    return rows


def build_dit_stub(sizes):
    """The pipeline constructor wants a DiT for its channel check; a one-block tiny one is enough for decoding."""
    from sana_wm.models import SanaWM

    return SanaWM.from_preset("tiny", in_channels=sizes.latent_channels, out_channels=sizes.latent_channels, depth=1)


def format_table(rows: list[Row], device_name: str) -> str:
    head = f"{'stage':<17}{'frames':>7}{'steps':>8}{'seconds':>10}{'peak GiB':>10}{'RTF':>8}  note"
    lines = [f"# device: {device_name}", head, "-" * len(head)]
    for r in rows:
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        rtf = f"{r.rtf:.2f}" if r.rtf else "-"
        lines.append(f"{r.stage:<17}{r.frames or '-':>7}{r.steps:>8}{r.seconds:>10.2f}{peak:>10}{rtf:>8}  {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny modules on CPU (smoke test; timings meaningless)")
    p.add_argument("--frames", type=int, nargs="+", default=None, help="stage-1 frame counts (161 961)")
    p.add_argument("--steps", type=int, default=None, help="stage-1 steps (60)")
    p.add_argument("--timed_steps", type=int, default=0, help="time only this many steps and project (0: all)")
    p.add_argument("--cfg_scale", type=float, default=5.0)
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--other_frames", type=int, default=None, help="frames for refiner / VAE decode (161)")
    p.add_argument("--refiner_block_size", type=int, default=3, help="0 = single shot")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=[s for s in STAGES if s != "pipeline"])
    p.add_argument("--device", default=None)
    p.add_argument("--no_warmup", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT's blocks for stage 1, as `infer.py --compile` (needs the warm-up)")
    p.add_argument("--fp8", nargs="?", const="rowwise", choices=["rowwise", "tensorwise"], default=None,
                   help="stage 1 also with the DiT's GEMMs in float8 (as `infer.py --fp8`), after the bf16 rows")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    device = torch.device(args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames = args.frames or ([17, 33] if args.quick else [161, 961])
    steps = args.steps or (2 if args.quick else 60)
    other = args.other_frames or (17 if args.quick else 161)
    for F in frames + [other]:
        if F < 9 or (F - 1) % 8:
            p.error(f"frame counts must be 8k+1 and >= 9; got {F}")
    if args.compile and args.no_warmup:
        p.error("--compile needs the warm-up step (it compiles); drop --no_warmup")
    torch.manual_seed(0)
    rows: list[Row] = []
    codec = build_vae(sizes, device, dtype) if {"stage1", "vae_decode"} & set(args.stages) else None
    if "stage1" in args.stages:
        rows += bench_stage1(sizes, codec, frames, steps, args.timed_steps, args.cfg_scale, args.fps, device, dtype,
                             not args.no_warmup, compile=args.compile)
        if args.fp8:
            rows += bench_stage1(sizes, codec, frames, steps, args.timed_steps, args.cfg_scale, args.fps, device,
                                 dtype, not args.no_warmup, compile=args.compile, fp8=args.fp8)
    if "vae_decode" in args.stages:
        rows.append(bench_vae(sizes, codec, other, args.fps, device))
    del codec
    free()
    if "text" in args.stages:
        rows.append(bench_text(sizes, device, dtype))
    if "refiner_text" in args.stages:
        rows.append(bench_refiner_text(sizes, device, dtype))
    if "refiner" in args.stages:
        rows.append(bench_refiner(sizes, other, args.fps, device, dtype, args.refiner_block_size or None,
                                  32 if sizes.quick else 3840))
    if "pipeline" in args.stages:
        for offload in (False, True):
            rows += bench_pipeline(sizes, other, steps, args.timed_steps or (2 if sizes.quick else 4), args.fps,
                                   device, dtype, offload)
    by = {(r.stage, r.frames) for r in rows}
    if {("stage1", other), ("vae_decode", other), ("refiner", other)} <= by:
        total = sum(r.seconds for r in rows if r.frames in (other, 0))
        rows.append(Row("total", other, "-", total, max((r.peak_gib or 0) for r in rows) or None,
                        total / ((other - 1) / args.fps), "sum of the stages above (refined video: F-1 frames)"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(format_table(rows, name))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "dtype": str(dtype), "rows": [asdict(r) for r in rows]},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
