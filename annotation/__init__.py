"""Offline pose annotation: camera-to-world poses, intrinsics and scale for any footage.

* :mod:`annotation.models.pi3` — Pi3 / Pi3X implemented here (official weights load strictly; CC BY-NC 4.0).
* :mod:`annotation.estimators` — ``estimate(frames, fps, known_intrinsics=None) -> PoseResult`` for Pi3 / Pi3X
  and a weight-free COLMAP backend (pycolmap).
* :mod:`annotation.pipeline` — ``python -m annotation INPUT OUT``: videos → shots → clips → poses (in
  overlapping windows stitched by Sim(3), :mod:`annotation.windows`) → quality filters → clip files → shards
  (``data.write_shards``).

Runs without the trainer and the generator. Optional dependencies: ``pip install 'sana-wm[annotation]'``.
"""
