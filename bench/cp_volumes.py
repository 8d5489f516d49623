"""Per-block context-parallel exchange volumes of the released preset (961 frames at 704×1280: 121 × 22 × 40 latent
grid) at CP 2 and 8: bytes one interior rank receives per exchange in the forward pass (the backward returns the same).

    PYTHONPATH=. python bench/cp_volumes.py [--frames 961 --height 704 --width 1280]
"""

from __future__ import annotations

import argparse

from sana_wm.models import PRESETS
from sana_wm.training.plan import cp_exchange_volumes, latent_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=961)
    ap.add_argument("--height", type=int, default=704)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--cp", type=int, nargs="+", default=[2, 8])
    args = ap.parse_args()
    cfg = PRESETS["sana_wm_1600m_720p"]
    grid = latent_grid(args.frames, args.height, args.width)
    tables = {cp: cp_exchange_volumes(cfg, grid, cp) for cp in args.cp}
    print(f"latent grid {grid}, {grid[0] * grid[1] * grid[2]} tokens; MB = 1e6 bytes received per rank per block")
    print("| block | exchange | " + " | ".join(f"CP {cp}" for cp in args.cp) + " |")
    print("|---|---|" + "---|" * len(args.cp))
    first = tables[args.cp[0]]
    for i, row in enumerate(first):
        cells = " | ".join(f"{tables[cp][i]['bytes'] / 1e6:.1f} MB" for cp in args.cp)
        print(f"| {row['block']} | {row['exchange']} | {cells} |")
    n_gdn = sum(not cfg.is_softmax_block(i) for i in range(cfg.depth))
    for cp, rows in tables.items():
        total = sum(r["bytes"] * (n_gdn if r["block"] == "GDN" else cfg.depth - n_gdn if r["block"] == "softmax"
                                  else cfg.depth) for r in rows)
        print(f"CP {cp}: whole model ({n_gdn} GDN + {cfg.depth - n_gdn} softmax blocks), forward: {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
