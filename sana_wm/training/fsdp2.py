"""`strategy=fsdp2`: FSDP2 (`fully_shard`) with context parallelism over latent frames, run by Lightning's
`ModelParallelStrategy`.

The world is a (dp × cp) `DeviceMesh` with dims ("data_parallel", "context_parallel"): the ranks of one CP group
(a row of the mesh's cp dim) hold slices of the same clip, the dp dim holds different samples. The module's
`configure_model` calls `sana_wm.parallel.parallelize` with the cp sub-mesh for context parallelism and a flat mesh
of every rank for FSDP2 (parameters sharded over all dp·cp ranks; the gradient reduction then sums the CP slices'
shares and averages over dp). The data loader splits shards by the dp coordinate (Lightning's
`distributed_sampler_kwargs` of a mesh named "data_parallel"), so every rank of a CP group reads the same samples,
and the objective's random draws are seeded by it too.

Before any collective past the rendezvous, every rank gathers a digest of its config; if they differ, every rank
raises. Then the mesh shape is checked against the world size (same config everywhere, so every rank agrees).
Checkpoints are `torch.distributed.checkpoint` folders (per-rank shards, reloadable at another world size).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy

log = logging.getLogger(__name__)

__all__ = ["FSDP2Strategy"]


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy with a (dp × cp) mesh. cp_size: ranks per clip. param_dtype: FSDP2's compute dtype
    (gradients are reduced in float32). config_digest: a digest of the run's config, compared across ranks."""

    def __init__(self, cp_size: int = 1, param_dtype: torch.dtype = torch.bfloat16, config_digest: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        self.cp_size, self.param_dtype, self.config_digest = int(cp_size), param_dtype, config_digest
        self.fsdp_mesh = None

    def setup_environment(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self._setup_distributed()  # the process group (rendezvous only)
        world = self.world_size
        digests: list = [None] * world
        dist.all_gather_object(digests, self.config_digest)
        if len(set(digests)) != 1:
            raise ValueError(f"strategy=fsdp2: the ranks were started with different configs (digest per rank: "
                             f"{[d[:12] for d in digests]}); launch every rank with the same overrides")
        if self.cp_size < 1 or world % self.cp_size:
            raise ValueError(f"strategy.cp_size={self.cp_size} does not divide the world size {world} "
                             f"(trainer.devices × trainer.num_nodes); the mesh is (world / cp_size) × cp_size")
        device = self.root_device.type
        self._device_mesh = init_device_mesh(device, (world // self.cp_size, self.cp_size),
                                             mesh_dim_names=("data_parallel", "context_parallel"))
        self.fsdp_mesh = init_device_mesh(device, (world,), mesh_dim_names=("fsdp",))
        self._data_parallel_size, self._tensor_parallel_size = world // self.cp_size, 1
        self.lightning_module._device_mesh = self._device_mesh
        log.info("fsdp2: mesh dp=%d × cp=%d on %s", world // self.cp_size, self.cp_size, device)

    @property
    def cp_mesh(self):
        return self.device_mesh["context_parallel"]


def config_digest(cfg) -> str:
    """sha256 of a typed config's YAML: equal on every rank launched with the same overrides."""
    import hashlib

    from omegaconf import OmegaConf

    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.structured(cfg)).encode()).hexdigest()
