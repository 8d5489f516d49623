"""Optimiser parameter groups, the learning-rate schedule, EMA maths and the throughput/MFU monitor."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.models.flops import model_flops
from sana_wm.training.callbacks import ThroughputMonitor
from sana_wm.training.config import OptimConfig
from sana_wm.training.ema import EMA
from sana_wm.training.optim import LRSchedule, build_optimizer, build_scheduler, param_groups


def test_no_weight_decay_on_gates_norms_biases_and_tables():
    m = SanaWM.from_preset("tiny")
    decay, keep = param_groups(m, 0.1, OptimConfig().no_decay)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    kept, decayed = set(keep["names"]), set(decay["names"])
    for name in ("blocks.0.attn.A_log", "blocks.0.attn.dt_bias", "blocks.0.attn.gate_proj.weight",
                 "blocks.0.attn.output_gate.weight", "blocks.0.scale_shift_table", "blocks.0.attn.q_norm.weight",
                 "blocks.0.attn.proj.bias", "final_layer.scale_shift_table", "attention_y_norm.weight"):
        assert name in kept, name
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.attn.q_proj_cam.weight", "blocks.0.cross_attn.kv_linear.weight",
                 "blocks.0.mlp.inverted_conv.conv.weight", "blocks.0.mlp.t_conv.weight", "x_embedder.proj.weight"):
        assert name in decayed, name
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & (kept | decayed)  # checkpoint-only parameters are never optimised
    assert kept | decayed | frozen == {n for n, _ in m.named_parameters()}


def test_adamw_uses_the_recipe_hyper_parameters():
    opt = build_optimizer(SanaWM.from_preset("tiny"), OptimConfig())
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (g["lr"], g["betas"], g["eps"]) == (1e-5, (0.9, 0.999), 1e-10)  # the released recipe


def test_schedule_warmup_constant_and_cosine():
    s = LRSchedule(warmup_steps=4)
    assert [s(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    c = LRSchedule(warmup_steps=2, kind="cosine", decay_steps=12, min_lr_ratio=0.1)
    assert c(1) == 1.0 and c(2) == pytest.approx(1.0)
    assert c(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert c(12) == pytest.approx(0.1) and c(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_steps > warmup_steps"):
        LRSchedule(warmup_steps=5, kind="cosine", decay_steps=None)


def test_scheduler_drives_the_optimizer_lr_and_round_trips():
    model = torch.nn.Linear(3, 3)
    cfg = OptimConfig(lr=1e-3, warmup_steps=2, scheduler="cosine")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, max_steps=10)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])
    other = build_scheduler(build_optimizer(model, cfg), cfg, max_steps=10)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == sched.get_last_lr()


def test_ema_update_swap_and_state_round_trip():
    m = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(decay=0.5)
    ema.update(m)  # first call copies
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)
    assert torch.equal(ema.shadow["weight"], torch.full((2, 2), 2.0))  # 0.5·1 + 0.5·3
    with ema.swapped_in(m):
        assert torch.equal(m.weight, torch.full((2, 2), 2.0))
    assert torch.equal(m.weight, torch.full((2, 2), 3.0))
    other = EMA()
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(1.5)


def test_throughput_monitor_reports_tokens_samples_and_mfu():
    model = SanaWM.from_preset("tiny")
    logged = {}
    module = SimpleNamespace(model=model, device=torch.device("cpu"),
                             last_batch_stats={"batch_size": 2, "grid": (3, 4, 7), "text_tokens": 32},
                             log_dict=lambda d, **kw: logged.update(d))
    trainer = SimpleNamespace(world_size=2)
    mon = ThroughputMonitor(peak_flops=1e12, log_every_n_steps=3)
    mon.on_train_batch_start(trainer, module, None, 0)
    for i in range(3):
        mon.on_train_batch_end(trainer, module, None, None, i)
    dt = 3 * logged["perf/step_time"]
    assert logged["perf/samples_per_s"] == pytest.approx(2 * 6 / dt)
    assert logged["perf/tokens_per_s"] == pytest.approx(2 * 6 * 84 / dt)
    flops = 3 * model_flops(model.config, (3, 4, 7), text_len=32, batch=2, training=True).total
    assert logged["perf/mfu"] == pytest.approx(flops / (dt * 1e12))


def test_fsdp_clips_through_the_root_module_and_other_strategies_through_lightning():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from sana_wm.training.config import ModelConfig
    from sana_wm.training.module import SanaWMLitModule

    m = SanaWMLitModule(ModelConfig(preset="tiny"), optim=OptimConfig(grad_clip=0.5))
    calls = []
    root = SimpleNamespace(clip_grad_norm_=lambda v: calls.append(("root", v)))
    m._trainer = SimpleNamespace(strategy=FSDPStrategy(), model=root, lr_scheduler_configs=[], optimizers=[])
    m.configure_gradient_clipping(None, None, None)
    assert calls == [("root", 0.5)]
    m.clip_gradients = lambda opt, gradient_clip_val, gradient_clip_algorithm: calls.append(
        ("lightning", gradient_clip_val, gradient_clip_algorithm))
    m._trainer = SimpleNamespace(strategy=DDPStrategy(), model=root)
    m.configure_gradient_clipping("opt", 0.5, "norm")
    assert calls[-1] == ("lightning", 0.5, "norm")


def test_the_logged_lr_comes_from_the_scheduler_when_there_is_one():
    from sana_wm.training.config import ModelConfig
    from sana_wm.training.module import SanaWMLitModule

    m = SanaWMLitModule(ModelConfig(preset="tiny"))
    opt = build_optimizer(m.model, OptimConfig(lr=1e-3, warmup_steps=4))
    sched = build_scheduler(opt, OptimConfig(lr=1e-3, warmup_steps=4))
    m._trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=sched)], optimizers=[])
    assert m._current_lr() == pytest.approx(2.5e-4)
    m._trainer = SimpleNamespace(lr_scheduler_configs=[], optimizers=[])  # DeepSpeed-like: nothing to read
    assert m._current_lr() is None
