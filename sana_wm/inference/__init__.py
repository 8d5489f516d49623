"""Inference: the single generation path (stage 1 + LTX-2 refiner) used by `infer.py`, validation and evaluation.

Modules:
    pipeline    `SanaWMPipeline`: (prompt, first frame, trajectory, K) → video; validates its inputs once
    refiner     `LTX2Refiner`: stage 2, NVIDIA's LTX-2 refiner over the stage-1 latents
    placement   `ModulePlacement`: module moves between the GPU and (pinned) host copies, prefetch, the move record
    model_root  the release folder layout: resolve paths and read `config.yaml` (no weights loaded here)
    video       image and mp4 I/O, centre crop with its geometry, tensor ↔ uint8
    overlay     the WASD / look-arrow overlay drawn from a trajectory
"""
