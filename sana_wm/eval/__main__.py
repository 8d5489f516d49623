"""``python -m sana_wm.eval bench=DIR model_root=DIR [-m ckpt=a,b cfg_scale=3,5 step=30,60 seed=0,1 …]``.

Hydra composes ``configs/eval/eval.yaml``; each job evaluates one cell (:func:`sana_wm.eval.sweep.run_cell`) and
rewrites the sweep's results.csv / report.md. Finished cells are skipped, so a rerun resumes.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../../configs/eval", config_name="eval")
def main(cfg: DictConfig) -> None:
    from sana_wm.eval.sweep import run_cell

    try:
        cell = run_cell(cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"cell: {cell}")


if __name__ == "__main__":
    main()
