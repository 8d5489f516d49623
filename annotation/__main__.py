"""``python -m annotation INPUT OUT [key=value ...]``: annotate footage with poses and write shards.

INPUT is a folder of videos, a glob or a manifest; OUT the output folder. Everything else is a Hydra
override of :class:`annotation.pipeline.AnnotateConfig`, e.g.::

    python -m annotation my_videos/ annotated/                       # weight-free COLMAP backend
    python -m annotation my_videos/ annotated/ weights=ckpt/Pi3X     # Pi3X (weights CC BY-NC 4.0)
    python -m annotation my_videos/ annotated/ known_intrinsics=[910,910,639.5,359.5] quality.fov_max_deg=100
"""

from __future__ import annotations

import sys

from annotation.pipeline import AnnotateConfig, format_summary, run


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    positional = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if len(positional) != 2:
        print(f"error: expected INPUT and OUT before the overrides; got {positional}.\n{__doc__}", file=sys.stderr)
        return 2
    # estimator_options is an open dict: its keys are new to the schema, so Hydra wants them with '+'
    overrides = [f"+{o}" if o.startswith("estimator_options.") else o for o in overrides]
    overrides = [f"input={positional[0]}", f"out={positional[1]}", *overrides]
    ConfigStore.instance().store(name="annotate", node=AnnotateConfig)
    with initialize(version_base="1.3", config_path=None):
        cfg = compose(config_name="annotate", overrides=overrides)
    config = OmegaConf.to_object(cfg)
    try:
        summary = run(config)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
