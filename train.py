"""Train or fine-tune SANA-WM: `python train.py [experiment=<name>] [key=value ...]`.

Thin entry point: Hydra composes `configs/train.yaml` (typed by `sana_wm/config.py`), and
`sana_wm.training.launch.train` does the rest — the same file runs on one CPU, under torchrun, or under SLURM
(see docs/training.md for launch recipes).

Examples:
    python train.py experiment=demo_cpu paths.data_root=demo_out/data
    torchrun --nproc_per_node 8 train.py experiment=pretrain_720p_stage1 paths.data_root=/data/sana_wm
    python train.py experiment=lora_custom_footage paths.model_root=models/SANA-WM_bidirectional
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sana_wm.training.config import ConfigError, register_configs

register_configs()  # the schema must be in the ConfigStore before Hydra composes


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    import lightning  # noqa: F401  (before quiet_third_party, which removes the console handler it adds)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sana_wm.console import quiet_third_party

    quiet_third_party()  # before the imports below pull in transformers, diffusers and DeepSpeed

    from sana_wm.checkpoint import CheckpointError
    from sana_wm.training.data import DataConfigError
    from sana_wm.training.launch import train
    from sana_wm.training.lora import LoraError

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # Every job of a sweep writes (and resumes) in its own folder, <output_dir>/multirun/<job number>; one shared
        # output_dir would make the second job resume the first one's last.ckpt.
        cfg.output_dir = hc.runtime.output_dir
    if cfg.get("dry_run"):
        print(f"output_dir: {cfg.output_dir}")
        print(dry_run_plan(cfg))
        return None
    try:
        metrics = train(cfg)
    except (ConfigError, DataConfigError, CheckpointError, LoraError, FileNotFoundError) as err:
        # Bad input: one clear line, no traceback, before any compute.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for key in ("export", "checkpoint_dir", "output_dir"):
        if key in metrics:
            print(f"{key}: {metrics[key]}")
    loss = metrics.get("train/loss")
    return float(loss) if loss is not None else None  # Hydra sweepers optimise the returned value


def dry_run_plan(cfg: DictConfig) -> str:
    """The plan of this config on the world size it names (trainer.devices × trainer.num_nodes, when numbers) and on
    8 and 64 GPUs, without building the model's weights or touching the data."""
    from sana_wm.training.launch import to_train_config
    from sana_wm.training.plan import training_plan

    typed = to_train_config(cfg)
    worlds = [8, 64]
    if isinstance(typed.trainer.devices, int):
        worlds.insert(0, typed.trainer.devices * typed.trainer.num_nodes)
    plans = []
    for world in dict.fromkeys(worlds):
        try:
            plans.append(training_plan(typed, world))
        except ValueError as err:
            plans.append(f"plan for {world} GPUs: {err}")
    return "\n".join(plans)


if __name__ == "__main__":
    main()
