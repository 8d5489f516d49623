"""Sharded (DCP) training checkpoints reloaded at other world sizes on CPU (gloo): 4 → 2 → 1 ranks.

`RESHARD` builds the training module as `train.py` does (`launch.build_module`, FSDP2 over every rank through
`parallelize`, the module's own optimizer) and either writes a checkpoint the way Lightning's ModelParallelStrategy
does (`save`: one optimizer step on random gradients, then the module's and the optimizer's sharded state dicts through DCP, plus meta.pt)
or loads one through the function that strategy resumes with (`load`: Lightning's `_load_checkpoint`, which DCP
reshards to this run's mesh). After loading, the parameters and every optimizer state, gathered whole, must be the
folder's own tensors bit for bit, and the weights exported to the official single file from the loaded state the
export of the folder itself.
"""

from __future__ import annotations

import pytest

from sana_wm.testing.training import run_in_process_group, write_tiny_latent_shards

RESHARD = r"""
import sys, tempfile
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from lightning.fabric.strategies.model_parallel import _distributed_checkpoint_save, _load_checkpoint
from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint, save_checkpoint
from sana_wm.parallel import parallelize
from sana_wm.testing.training import TINY_CPU_OVERRIDES, compose_train_config
from sana_wm.training import launch
from sana_wm.training.export import export_training_checkpoint

mode, path, shards = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = launch.to_train_config(compose_train_config([*TINY_CPU_OVERRIDES, f"data.train_shards={shards}",
                                                   "output_dir=unused", "optim.lr=0.2", "optim.eps=1.0"]))
torch.manual_seed(0)
module = launch.build_module(cfg)
parallelize(module.model, fsdp_mesh=init_device_mesh("cpu", (world,)), param_dtype=torch.float32)
opt = module.configure_optimizers()["optimizer"]
sharded = StateDictOptions(cpu_offload=True)
if mode == "save":
    for p in module.parameters():  # a gradient for every parameter (each shard its own draw), so every one has state
        p.grad = torch.randn_like(p)
    opt.step()
    _distributed_checkpoint_save({"state_dict": get_model_state_dict(module, options=sharded),
                                  "optimizer_0": get_optimizer_state_dict(module, opt, options=sharded)}, path)
    if rank == 0:
        torch.save({"hyper_parameters": dict(module.hparams)}, path / "meta.pt")  # what export reads of meta.pt
    print("SAVED", world)
else:
    _load_checkpoint(path, {"state_dict": module, "optimizer_0": opt}, strict=True, optimizer_states_from_list=True)
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    params, optim = get_model_state_dict(module, options=whole), get_optimizer_state_dict(module, opt, options=whole)
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "whole.pt")
            saved = torch.load(Path(tmp) / "whole.pt", weights_only=False)
            model_keys = [k for k in params if k.startswith("model.")]
            assert params.keys() == saved["state_dict"].keys() and len(model_keys) > 100, len(model_keys)
            assert all(torch.equal(params[k], saved["state_dict"][k]) for k in params)
            state, saved_state = optim["state"], saved["optimizer_0"]["state"]
            trained = {n for n, p in module.named_parameters() if p.requires_grad}
            assert state.keys() == saved_state.keys() == trained, len(state)
            steps = int(torch.load(path / "meta.pt", weights_only=False).get("global_step", 1))
            for fqn, s in state.items():
                assert s.keys() == saved_state[fqn].keys() == {"step", "exp_avg", "exp_avg_sq"}, fqn
                assert all(torch.equal(v, saved_state[fqn][k]) for k, v in s.items()), fqn
                assert s["step"].item() == steps, (fqn, s["step"], steps)
            # States the saved steps really wrote, not fresh zeros (a few stay zero in training: the paths behind the
            # released initialisation's zeroed projections get no gradient yet).
            assert sum(s["exp_avg"].abs().sum().item() > 0 for s in state.values()) > 0.8 * len(state)
            assert optim["param_groups"] == saved["optimizer_0"]["param_groups"]
            # The official single file from the resharded state is the export of the folder itself.
            model = SanaWM(module.model.config)
            model.load_state_dict({k[len("model."):]: v for k, v in params.items() if k.startswith("model.")})
            mine = save_checkpoint(model, Path(tmp) / "mine.safetensors")
            theirs = export_training_checkpoint(path, Path(tmp) / "theirs.safetensors")
            a, b = SanaWM.from_preset("tiny"), SanaWM.from_preset("tiny")
            load_checkpoint(a, mine)
            load_checkpoint(b, theirs)
            assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    print("RESHARD-OK", world)
dist.destroy_process_group()
"""


def _reshard(mode: str, path, shards, nproc: int) -> str:
    r = run_in_process_group(["-c", RESHARD, mode, str(path), str(shards)], nproc=nproc, timeout=400)
    log = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, log
    tag = "SAVED" if mode == "save" else "RESHARD-OK"
    assert r.stdout.count(f"{tag} {nproc}") == nproc, log
    return r.stdout


def test_dcp_checkpoint_of_two_ranks_reloads_bit_exact_on_one(tmp_path):
    write_tiny_latent_shards(tmp_path / "shards", num_samples=1, samples_per_shard=1)
    _reshard("save", tmp_path / "ckpt", tmp_path / "shards", 2)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _reshard("load", tmp_path / "ckpt", tmp_path / "shards", 1)


@pytest.mark.slow
def test_train_py_dcp_checkpoint_resumes_four_to_two_to_one_ranks(tmp_path):
    """train.py on 4 ranks (dp=2 × cp=2) writes a DCP checkpoint; 2 ranks (dp=1 × cp=2) load it bit for bit and go on
    training from it; one rank loads theirs bit for bit and trains on. The other-strategy refusal of such a folder is
    tests/training/test_train_configs.py's."""
    from tests.training.test_train_fsdp2 import COMMON

    write_tiny_latent_shards(tmp_path / "shards", num_samples=2, samples_per_shard=1)  # one shard per dp rank
    fsdp2 = ["strategy=fsdp2", "strategy.param_dtype=float32", "strategy.process_group_backend=gloo",
             f"data.train_shards={tmp_path / 'shards'}"]
    runs = [(4, 2, ["strategy.cp_size=2", "trainer.devices=4"], None),
            (2, 3, ["strategy.cp_size=2", "trainer.devices=2"], "run4"),
            (1, 4, [], "run2")]
    for nproc, steps, extra, resume in runs:
        if resume is not None:  # the previous run's checkpoint, loaded at this world size before training on
            _reshard("load", tmp_path / resume / "checkpoints" / "last.ckpt", tmp_path / "shards", nproc)
            extra = [*extra, f"checkpoint.resume={tmp_path / resume / 'checkpoints' / 'last.ckpt'}"]
        r = run_in_process_group(["train.py", *COMMON, f"trainer.max_steps={steps}", *fsdp2, *extra,
                                  f"output_dir={tmp_path / f'run{nproc}'}"], nproc=nproc, timeout=500)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        ckpt = tmp_path / f"run{nproc}" / "checkpoints" / "last.ckpt"
        assert len(list(ckpt.glob("*.distcp"))) == nproc
        import torch

        assert torch.load(ckpt / "meta.pt", weights_only=False)["global_step"] == steps
