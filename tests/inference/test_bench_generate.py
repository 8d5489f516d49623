"""bench/generate.py --quick: the benchmark script runs end to end on CPU with tiny modules (no timing checks)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_quick_run_prints_every_stage(tmp_path, capsys, bench_module):
    mod = bench_module("generate.py")
    assert mod.main(["--quick", "--json", str(tmp_path / "rows.json")]) == 0
    table = capsys.readouterr().out
    for stage in ("stage1", "vae_decode", "text", "refiner_text", "refiner", "total"):
        assert f"\n{stage} " in table, stage
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["frames"] for r in rows if r["stage"] == "stage1"] == [17, 33]
    assert all(r["seconds"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        mod.main(["--quick", "--frames", "20"])  # not 8k+1


def test_full_size_builders_construct_on_meta(bench_module):
    """The GPU configuration can't run here, but its modules must build with the real sizes (on `meta`, no memory)."""
    import torch

    mod = bench_module("generate.py")
    meta, bf16 = torch.device("meta"), torch.bfloat16
    dit = mod.build_dit(mod.FULL, meta, bf16)
    assert dit.num_parameters() == 2_661_800_448 and next(dit.parameters()).dtype == bf16
    tr = mod._refiner_transformer(mod.FULL, meta, bf16)
    video = sum(p.numel() for n, p in tr.named_parameters() if not mod.is_audio_only(n))
    assert len(tr.transformer_blocks) == 48 and 12e9 < video < 14e9
    conn, te, _, length = mod._refiner_text_modules(mod.FULL, meta, bf16)
    assert length == 1024 and 11e9 < sum(p.numel() for p in te.parameters()) < 12.5e9
    assert conn.config.caption_channels * conn.config.text_proj_in_factor == 3840 * 49


def test_quick_pipeline_stage_runs_with_and_without_offload(tmp_path, capsys, bench_module):
    mod = bench_module("generate.py")
    assert mod.main(["--quick", "--stages", "pipeline", "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    totals = [r for r in rows if r["stage"] == "pipe:total"]
    assert [r["note"].split(";")[0] for r in totals] == ["all resident", "offload on", "offload + prefetch"]
    for tag in ("all resident", "offload on", "offload + prefetch"):
        stages = [r["stage"] for r in rows if r["note"].split(";")[0] == tag]
        assert {"pipe:stage1", "pipe:stage2", "pipe:vae_decode"} <= set(stages), stages
        # with the prefetch the refiner prompt is encoded before stage 1, so the upload never sits beside Gemma-3
        assert ("pipe:refiner_text" in stages) == (tag == "offload + prefetch"), stages
        if tag == "offload + prefetch":
            assert stages.index("pipe:refiner_text") < stages.index("pipe:stage1"), stages
    for r in totals:  # on the CPU the offload device is the execution device: nothing moves
        assert "0 moves, H→D 0.0 GB, D→H 0.0 GB" in r["note"]
        assert set(r["moved"]) == {"moves", "h2d_bytes", "d2h_bytes", "pinned_bytes", "reused_bytes", "copy_seconds"}


def test_quick_compiled_stage1_runs_through_compiled_blocks(tmp_path, bench_module, monkeypatch):
    """--compile hands the DiT to `apply_compile` before the warm-up step (Dynamo's "eager" backend here, to keep the
    test short: the traced graphs are the same, Inductor's code generation is skipped); --no_warmup is refused."""
    import torch

    import sana_wm.parallel

    mod = bench_module("generate.py")
    compiled = []
    real = sana_wm.parallel.apply_compile
    monkeypatch.setattr(sana_wm.parallel, "apply_compile", lambda m: compiled.append(m) or real(m, backend="eager"))
    out = tmp_path / "rows.json"
    torch._dynamo.reset()
    try:
        assert mod.main(["--quick", "--stages", "stage1", "--frames", "17", "--compile", "--json", str(out)]) == 0
    finally:
        # Dynamo keeps per-function state across compiles in one process (which dims it saw change and made dynamic);
        # left behind, it changed what later tests' compiled blocks save (the "full" checkpointing test failed) and
        # made the whole-graph compile tests 5× slower.
        torch._dynamo.reset()
    (dit,) = compiled
    assert all("forward" in vars(block) for block in dit.blocks)  # the compiled forward shadows the method
    (row,) = json.loads(out.read_text())["rows"]
    assert row["stage"] == "stage1" and row["frames"] == 17 and row["seconds"] > 0 and "compiled" in row["note"]
    with pytest.raises(SystemExit):
        mod.main(["--quick", "--stages", "stage1", "--compile", "--no_warmup"])
