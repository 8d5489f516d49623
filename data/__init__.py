"""SANA-WM data pipeline: shard format, WebDataset loading, synthetic 3-D world, shard writers.

Modules (see ``data/README.md`` for the shard format):

* :mod:`data.schema` — member names, metadata fields, ``Sample`` / ``LatentSample`` / ``Batch``, ``collate``;
* :mod:`data.webdataset` — ``make_video_dataset`` / ``make_latent_dataset`` (sharding, seeding, skips);
* :mod:`data.transforms` — frame sampling, resize + crop, camera tensors (via ``sana_wm.camera``);
* :mod:`data.errors` — skip reasons, ``SkipStats``, ``DataError``;
* :mod:`data.synthetic` — procedural rooms, renderer, trajectories, clips, ``build_default_dataset`` (a package);
* :mod:`data.write_shards` — ``ShardSink``, ``write_video_sample``, ``write_latent_sample``, CLI;
* :mod:`data.datamodule` — ``SanaWMDataModule`` (Lightning);
* :mod:`data.video` — H.264 encode (PyAV) / decode (decord).

Attributes are imported lazily so that ``import data.synthetic`` in a render worker stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCHEMA_VERSION": "schema",
    "LATENT_SCHEMA_VERSION": "schema",
    "Sample": "schema",
    "LatentSample": "schema",
    "Batch": "schema",
    "collate": "schema",
    "DataError": "errors",
    "SkipStats": "errors",
    "SkipReason": "errors",
    "ShardDataset": "webdataset",
    "make_video_dataset": "webdataset",
    "make_latent_dataset": "webdataset",
    "EpochDataLoader": "webdataset",
    "SkipTracker": "webdataset",
    "ShardSink": "write_shards",
    "write_video_sample": "write_shards",
    "write_latent_sample": "write_shards",
    "build_default_dataset": "synthetic",
    "SanaWMDataModule": "datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
