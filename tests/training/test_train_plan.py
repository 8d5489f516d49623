"""`train.py dry_run=true`: the plan of a distributed run, and the CP exchange volumes of the real preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sana_wm.models import PRESETS
from sana_wm.testing.training import compose_train_config
from sana_wm.training.launch import to_train_config
from sana_wm.training.plan import cp_exchange_volumes, training_plan

REPO = Path(__file__).resolve().parents[2]


def test_cp_exchange_volumes_of_the_real_preset():
    rows = {r["exchange"].split(" (")[0]: r["bytes"] for r in cp_exchange_volumes(PRESETS["sana_wm_1600m_720p"],
                                                                                 (121, 22, 40), 2)}
    # 20 heads × (M, h, k of the numerator: 3·112² + M of the normaliser 112² + its h, k: 2·112) floats of 4 bytes.
    assert rows["GDN composites, main branch"] == 20 * (4 * 112 * 112 + 2 * 112) * 4 == 4_032_000
    # K and V of the other rank's 61 frames (121 padded to 122) × 880 tokens × 2240 channels in bf16.
    assert rows["K/V all-gather, main branch"] == 2 * 61 * 880 * 2240 * 2
    assert rows["key short-conv halos, main + camera"] == 2 * 3 * 880 * 2240 * 2  # one neighbour at CP 2


def test_plan_of_the_stage1_recipe_on_8_gpus():
    cfg = to_train_config(compose_train_config([
        "model=sana_wm_1600m_720p", "strategy=fsdp2", "strategy.cp_size=2", "model.activation_checkpointing=true",
        "data.num_frames=961", "data.batch_size=1", "data.train_shards=x"]))
    plan = training_plan(cfg, 8)
    assert "mesh dp=4 × cp=2" in plan
    assert "per rank 61 latent frames (1 padded in the last slice(s)), 53680 tokens, batch 1" in plan
    assert "master weights (fp32): 1.24 GiB" in plan  # 4 B × 2,661,800,448 / 8
    assert "checkpointed activations (bf16 block inputs): 4.48 GiB" in plan  # 2 B × 2240 × 53680 × 20


def test_dry_run_cli_and_multirun_output_folders(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--multirun", "model=tiny", "strategy=fsdp2", "strategy.cp_size=2",
                        "data.train_shards=x", f"output_dir={tmp_path}", "dry_run=true", "seed=1,2"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"output_dir: {tmp_path}/multirun/0" in r.stdout and f"output_dir: {tmp_path}/multirun/1" in r.stdout
    assert r.stdout.count("plan for 8 GPUs: strategy=fsdp2, mesh dp=4 × cp=2") == 2
    assert "plan for 64 GPUs: strategy=fsdp2, mesh dp=32 × cp=2" in r.stdout
