"""Camera geometry for SANA-WM: the single owner of the camera convention (pure functions).

Convention: OpenCV camera-to-world 4×4 poses, +X right, +Y down, +Z forward; after
``relative_to_first`` the world frame is the first camera; translations in metres where known.
Intrinsics are ``[fx, fy, cx, cy]`` on integer pixel grids (no +0.5).

Shapes (F pixel frames, F = 8k + 1; T_lat = (F − 1) // 8 + 1 latent frames; latent grid h × w,
e.g. 22 × 40 for 704 × 1280; B batch):

=====================================  ====================================================
object                                 shape / dtype
=====================================  ====================================================
c2w trajectory                         (F, 4, 4) numpy or torch
intrinsics input (``as_fxfycxcy``)     (4,), (3, 3), (F, 4) or (F, 3, 3) → (F, 4) float64
``action_to_c2w`` output               (N + 1, 4, 4) float32 numpy for N DSL frames
``camera_conditions``                  (T_lat, 20): row-major c2w of pixel frame 8i, fx, fy, cx, cy
``chunk_plucker``                      (48, T_lat, h, w): channel 6·j + c, frames max(0, 8i−7)+j
``prepare_camera`` output              ((T_lat, 20), (48, T_lat, h, w)) float32 torch
``plucker_map``                        (..., 4, 4), (..., 4) → (..., 6, H, W) [d, t × d]
``ray_matrices``                       (B, T, 20) → (B, T, H, W, 4, 4), dtype of the input
``ray_frames``                         RayFrames(P, P_T, P_inv), each (B, T·H·W, 4, 4)
=====================================  ====================================================

Modules: ``convention`` (SE(3) helpers, rotation angles, validation, yaw/pitch/roll signs and the ground plane),
``intrinsics`` (normalisation, K from a field of view, crop, latent units), ``conditions`` (DiT camera
inputs), ``rays`` (UCPE per-token frames), ``actions`` (DSL and its key maps).
"""

from .actions import ACTION_KEYMAPS, ACTION_KEYS, ACTION_SCHEMES, KeyMap, action_to_c2w, parse_action
from .conditions import (
    camera_conditions,
    camera_tensors,
    chunk_plucker,
    num_latent_frames,
    plucker_map,
    prepare_camera,
    snap_num_frames,
)
from .convention import (
    ground_axes,
    invert_se3,
    look_angles,
    pitch_matrix,
    relative_to_first,
    roll_matrix,
    rotation_angle,
    scale_translation,
    validate_c2w,
    yaw_matrix,
)
from .intrinsics import (
    CropGeometry,
    as_fxfycxcy,
    crop_intrinsics,
    fov_deg,
    intrinsics_matrix,
    pinhole_intrinsics,
    resize_crop_geometry,
    to_latent_units,
)
from .rays import RayFrames, ray_frames, ray_matrices

__all__ = [
    # convention
    "invert_se3",
    "relative_to_first",
    "rotation_angle",
    "validate_c2w",
    "scale_translation",
    "yaw_matrix",
    "pitch_matrix",
    "roll_matrix",
    "look_angles",
    "ground_axes",
    # intrinsics
    "CropGeometry",
    "as_fxfycxcy",
    "intrinsics_matrix",
    "pinhole_intrinsics",
    "fov_deg",
    "resize_crop_geometry",
    "crop_intrinsics",
    "to_latent_units",
    # conditions
    "num_latent_frames",
    "snap_num_frames",
    "camera_conditions",
    "plucker_map",
    "chunk_plucker",
    "prepare_camera",
    "camera_tensors",
    # rays
    "RayFrames",
    "ray_matrices",
    "ray_frames",
    # actions
    "ACTION_KEYS",
    "ACTION_SCHEMES",
    "ACTION_KEYMAPS",
    "KeyMap",
    "parse_action",
    "action_to_c2w",
]
