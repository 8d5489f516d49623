"""A complete release layout (`resolve_model_paths`) with tiny random components, for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def write_random_model_root(
    directory: str | os.PathLike,
    *,
    preset: str = "tiny",
    sana_wm_config: dict[str, Any] | None = None,
    sample_size: tuple[int, int] = (64, 96),
    latent_channels: int = 8,
    text_max_length: int = 64,
    refiner: bool = True,
    checkpoint_metadata: bool = False,
    seed: int = 0,
) -> Path:
    """Write the release layout of :func:`resolve_model_paths` with tiny random components.

    ``dit/sana_wm_random.safetensors`` (official key layout; ``checkpoint_metadata`` adds our config metadata),
    ``vae/`` (tiny LTX-2 VAE), ``text_encoder/{text_encoder,tokenizer}/`` (tiny Gemma-2), ``refiner/`` (tiny LTX-2
    refiner, if ``refiner``) and a ``config.yaml`` whose ``model`` section names ``preset`` with ``sana_wm_config``
    overrides (latent and caption channels are set to match the tiny encoders).

    Returns:
        the root folder.
    """
    import torch
    import yaml
    from safetensors.torch import save_file

    from sana_wm.checkpoint import save_checkpoint
    from sana_wm.encoders.tiny import save_tiny_text_encoder, save_tiny_vae
    from sana_wm.models import SanaWM

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    overrides = {"in_channels": latent_channels, "out_channels": latent_channels, "caption_channels": 32}
    overrides.update(sana_wm_config or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = SanaWM.from_preset(preset, **overrides)
        # NVIDIA's init zeroes the camera/Plücker outputs; give them small random values so cameras matter.
        with torch.no_grad():
            for name, p in dit.named_parameters():
                if any(k in name for k in ("out_proj_cam", "plucker_proj", "plucker_embedder", "t_conv")):
                    p.normal_(0.0, 0.02)
    dit_file = root / "dit" / "sana_wm_random.safetensors"
    if checkpoint_metadata:
        save_checkpoint(dit, dit_file)
    else:
        dit_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(dit_file))
    save_tiny_vae(root, latent_channels=latent_channels, seed=seed)
    save_tiny_text_encoder(root / "text_encoder", hidden=32, seed=seed)
    if refiner:
        from sana_wm.testing.refiner import save_tiny_refiner

        save_tiny_refiner(root / "refiner", latent_channels=latent_channels, seed=seed)
    config = {
        "model": {"model": preset, "sana_wm_config": overrides, "sample_size": list(sample_size)},
        "vae": {"vae_stride": [8, 32, 32], "use_framewise_decoding": True,
                "tile_sample_min_num_frames": 96, "tile_sample_stride_num_frames": 64},
        "text_encoder": {"model_max_length": text_max_length},
        "scheduler": {"inference_flow_shift": 9.8},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root
