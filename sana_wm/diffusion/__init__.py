"""Flow-matching diffusion process: pure maths (`flow`), σ schedules (`timesteps`) and samplers.

Nothing here knows about the network: samplers loop over a ``denoise(x, timestep) -> velocity``
callable, so a sampler runs the DiT, a guidance wrapper or a test function alike.
"""

from .flow import broadcast_sigma, flow_loss, interpolate, shift_sigma, velocity_target
from .samplers import CFGDenoiser, dpm_solver_pp, flow_euler, guidance_combine
from .timesteps import (
    NUM_TRAIN_TIMESTEPS,
    apply_image_condition,
    inference_sigmas,
    sample_training_sigmas,
    sigma_to_timestep,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "CFGDenoiser",
    "apply_image_condition",
    "broadcast_sigma",
    "dpm_solver_pp",
    "flow_euler",
    "flow_loss",
    "guidance_combine",
    "inference_sigmas",
    "interpolate",
    "sample_training_sigmas",
    "shift_sigma",
    "sigma_to_timestep",
    "velocity_target",
]
