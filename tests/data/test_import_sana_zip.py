"""`python -m data.import_sana_zip` on a small archive in NVIDIA's released layout that the test builds: clips that
pass become latent samples our loader reads back (latent as stored, caption chosen and encoded, camera tensors as
NVIDIA's loader builds them: metric scale, relative poses, latent-unit intrinsics; a clip without camera dropped, or
with --identity-camera given identity poses as NVIDIA's loader does); every bad input is skipped and counted by reason; a failed run leaves no shard behind."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data.import_sana_zip import SanaZipImportError, import_sana_zip, main, numeric_score
from data.webdataset import make_latent_dataset
from sana_wm.encoders.text import GemmaTextEncoder
from sana_wm.encoders.tiny import save_tiny_text_encoder, tiny_gemma2, tiny_tokenizer

C, T, H, W = 16, 2, 3, 4  # latent: 2 latent frames = 9 pixel frames of 96 × 128
LONG = "_LongSceneStaticCaption"


def _npz(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, z=arr)
    return buf.getvalue()


def _latent(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((C, T, H, W)).astype(np.float32)


def _poses(n: int, step: float) -> np.ndarray:
    pose = np.tile(np.eye(4), (n, 1, 1))
    pose[:, 0, 3] = step * np.arange(n)  # walk along +x
    return pose


def _build(root: Path) -> tuple[Path, Path]:
    raw, cache = root / "raw", root / "cache"
    raw.mkdir()
    cache.mkdir()
    keys = ["clip_a", "clip_b", "clip_c", "clip_d", "clip_e", "clip_f", "clip_g"]
    with zipfile.ZipFile(raw / "part0.zip", "w") as z:
        for k in keys:
            z.writestr(f"{k}.json", json.dumps({"prompt": f"prompt {k[-1]}", "width": 128, "height": 96}))
    with zipfile.ZipFile(cache / "part0.zip", "w") as z:
        for i, k in enumerate(keys):
            if k == "clip_e":
                continue  # metadata without latent
            z.writestr(f"{k}.npz", _npz(np.zeros((1, 1, 1, 1), np.float32) if k == "clip_d" else _latent(i)))
        z.writestr("orphan.npz", _npz(_latent(9)))  # latent without metadata
    with zipfile.ZipFile(raw / "part1.zip", "w") as z:  # no latent cache of this name
        z.writestr("clip_x.json", json.dumps({"prompt": "x"}))
    with zipfile.ZipFile(raw / "part2.zip", "w") as z:  # a latent cache that is not a zip
        z.writestr("clip_y.json", json.dumps({"prompt": "y"}))
    (cache / "part2.zip").write_bytes(b"truncated download")
    (raw / "part3.zip").write_bytes(b"")  # a raw zip that is not one
    poses = np.concatenate([_poses(9, 0.1), _poses(9, 0.05)]).astype(np.float32)
    intr = np.tile(np.array([100.0, 90.0, 64.0, 48.0], np.float32), (18, 1))
    np.savez(raw / "part0_camera.npz", ids=np.array(["clip_a", "clip_b"]), ranges=np.array([[0, 9], [9, 9]]),
             pose=poses, intrinsics=intr)
    (raw / "part0_metric_scale_stats.json").write_text(json.dumps({"clip_a": {"median": 2.0}}))
    (raw / f"part0{LONG}.json").write_text(json.dumps({"clip_a": {"prompt": "long a"}, "clip_b": "long b"}))
    (raw / "part0_dover.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"key": "clip_a", "dover_score": 0.5}, {"key": "clip_b", "score": [0.8, 1.0]}, {"key": "clip_c", "score": 0.3},
        {"key": "clip_d", "score": 0.5}, {"key": "clip_g", "score": 2.0}]))  # clip_f has no score
    return raw, cache


@pytest.fixture(scope="module")
def text():
    tok = tiny_tokenizer()
    return GemmaTextEncoder(tiny_gemma2(vocab_size=len(tok)), tok, max_sequence_length=16)


def _run(tmp_path, text, **kw):
    raw, cache = _build(tmp_path)
    args = dict(caption_suffixes=[LONG], caption_weights={LONG: 1.0}, filters=[("_dover", 0.25, 1.0)],
                min_latent_bytes=1000, identity_camera=True)
    return import_sana_zip(raw, cache, tmp_path / "out", text, **{**args, **kw})


def test_the_archive_converts_and_bad_input_is_counted(tmp_path, text):
    report = _run(tmp_path, text)  # NVIDIA's loader's way: a clip without camera kept with identity poses
    assert report["written"] == 3
    assert report["skipped"] == {"bad_latent_cache": 1, "bad_raw_zip": 1, "filter_missing:_dover": 1,
                                 "filter_out_of_range:_dover": 1, "latent_too_small": 1, "no_latent": 1,
                                 "no_latent_cache": 1, "no_metadata": 1}
    assert report["examples"]["no_latent_cache"] == ["part1.zip:clip_x"]
    out = tmp_path / "out"
    assert json.loads((out / "import_report.json").read_text())["written"] == 3
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 3
    assert not (tmp_path / "out.partial").exists()

    samples = {s.key: s for s in make_latent_dataset(str(out))}
    assert sorted(samples) == ["part0-clip_a", "part0-clip_b", "part0-clip_c"]
    a, b, c = samples["part0-clip_a"], samples["part0-clip_b"], samples["part0-clip_c"]
    # The latent as stored (bf16 in the shard), the chosen caption and its encoding.
    torch.testing.assert_close(a.latent.float(), torch.from_numpy(_latent(0)), rtol=1 / 128, atol=0)
    assert (a.caption, b.caption, c.caption) == ("long a", "long b", "prompt c")  # c has no long caption
    emb, mask = text.encode(["long a"])
    torch.testing.assert_close(a.text_emb.float(), emb[0].float())
    assert torch.equal(a.text_mask, mask[0])
    # Camera as NVIDIA's loader builds it: translations × metric scale (2 for a, 1 for b), relative to frame 0,
    # condition row i = pixel frame 8i, intrinsics × latent/pixel size (4/128, 3/96).
    assert a.camera_conditions.shape == (T, 20) and a.chunk_plucker.shape == (48, T, H, W)
    assert a.camera_conditions[1, 3].item() == pytest.approx(8 * 0.1 * 2.0)
    assert b.camera_conditions[1, 3].item() == pytest.approx(8 * 0.05)
    torch.testing.assert_close(a.camera_conditions[:, 16:], torch.tensor([[3.125, 2.8125, 2.0, 1.5]] * 2))
    # The optional per-frame arrays: metric relative poses, intrinsics in pixels of the 96 × 128 target frame.
    assert a.c2w.shape == (9, 4, 4) and a.c2w[8, 0, 3].item() == pytest.approx(1.6)
    torch.testing.assert_close(a.intrinsics, torch.tensor([[100.0, 90.0, 64.0, 48.0]] * 9))
    assert c.c2w is None and a.meta["metric_scale"] == 2.0 and a.meta["source_key"] == "clip_a"
    # No camera: identity poses and K = [w, h, w/2, h/2] in latent units.
    torch.testing.assert_close(c.camera_conditions[:, :16], torch.eye(4).flatten().repeat(T, 1))
    torch.testing.assert_close(c.camera_conditions[:, 16:], torch.tensor([[4.0, 3.0, 2.0, 1.5]] * 2))


def test_a_clip_without_camera_is_dropped_by_default(tmp_path, text):
    report = _run(tmp_path, text, identity_camera=False)
    assert report["written"] == 2 and report["skipped"]["no_camera"] == 1
    assert report["examples"]["no_camera"] == ["part0.zip:clip_c"]


def test_caption_weights_choose_per_clip_and_reproducibly(tmp_path, text):
    report = _run(tmp_path, text, caption_weights={"prompt": 1.0, LONG: 1.0}, seed=5)
    assert report["written"] == 3
    captions = {s.key: s.caption for s in make_latent_dataset(str(tmp_path / "out"))}
    assert captions["part0-clip_a"] in ("long a", "prompt a") and captions["part0-clip_c"] == "prompt c"
    again = tmp_path / "again"
    again.mkdir()
    _run(again, text, caption_weights={"prompt": 1.0, LONG: 1.0}, seed=5)
    assert {s.key: s.caption for s in make_latent_dataset(str(again / "out"))} == captions


def test_a_failed_run_leaves_no_shard(tmp_path):
    class Failing:
        def __init__(self):
            self.calls = 0

        def encode(self, captions):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("encoder died")
            return torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)

    with pytest.raises(RuntimeError, match="encoder died"):
        _run(tmp_path, Failing(), max_count=1)  # the first clip's shard was already closed
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_bad_arguments_are_named(tmp_path, text):
    raw, cache = _build(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SanaZipImportError, match=r"--out '.*full' exists and is not empty"):
        import_sana_zip(raw, cache, tmp_path / "full", text)
    with pytest.raises(SanaZipImportError, match=r"--cache '.*nope': no such directory"):
        import_sana_zip(raw, tmp_path / "nope", tmp_path / "o", text)
    enc = save_tiny_text_encoder(tmp_path / "enc")
    base = ["--raw", str(raw), "--cache", str(cache), "--out", str(tmp_path / "o"), "--text-encoder", str(enc)]
    assert main([*base, "--filter", "_dover=high:1"]) == 2
    assert main([*base, "--caption-weights", f"{LONG}=1"]) == 2  # a weight for a suffix not given
    assert main([*base, "--caption-suffix", LONG, "--caption-weights", f"{LONG}=1", "--filter", "_dover=0.25:1",
                 "--min-latent-bytes", "1000"]) == 0
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["num_samples"] == 2  # clip_c: no camera


def test_numeric_score_reads_nvidias_sidecar_forms():
    assert numeric_score(0.5) == 0.5
    assert numeric_score([1, 2, "x"]) == 1.5
    assert numeric_score({"other": 3, "dover_score": 0.7}) == 0.7
    assert numeric_score({"nested": {"median": 4}}) == 4.0
    assert numeric_score({"text": "none"}) is None
