"""LoRA on the tiny DiT: zero-init identity (camera branch included), targets, save/load/merge round trips, base
checks, the merge/export command and a short LoRA fine-tuning run."""

from __future__ import annotations

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.checkpoint import load_checkpoint, save_checkpoint
from sana_wm.training.config import DEFAULT_LORA_TARGETS
from sana_wm.training.lora import (
    LoraError,
    add_lora,
    checkpoint_digest,
    file_sha256,
    load_lora,
    merge_lora,
    read_lora,
    resolve_lora_targets,
    save_lora,
    state_fingerprint,
)


def _base(seed: int = 0) -> SanaWM:
    """Tiny DiT whose zero-initialised parts (camera output projections, Plücker paths, temporal conv) are randomised,
    so every branch contributes to the output. Pure fp32 maths (the reference bf16 casts of the softmax paths would
    turn merge rounding at 1e-7 into bf16 flips)."""
    torch.manual_seed(seed)
    m = _tiny()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(k in name for k in ("out_proj_cam", "plucker", "t_conv", "output_gate.weight")):
                p.normal_(0, 0.02)
    return m.eval()


def _tiny(**kw) -> SanaWM:
    return SanaWM.from_preset("tiny", reference_numerics=False, **kw)


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cam = torch.zeros(1, 3, 20)
    cam[..., :16] = torch.eye(4).flatten()
    cam[:, 1:, 11] = torch.tensor([0.3, 0.6])  # forward motion
    cam[:, :, 3] = torch.tensor([0.0, 0.1, 0.2])  # and sideways
    cam[..., 16:] = torch.tensor([5.6, 5.6, 3.5, 2.0])
    return dict(
        x=torch.randn(1, 16, 3, 4, 7, generator=g), timestep=torch.tensor([600.0]),
        y=torch.randn(1, 32, 32, generator=g), mask=torch.ones(1, 32, dtype=torch.bool),
        camera_conditions=cam, chunk_plucker=torch.randn(1, 48, 3, 4, 7, generator=g),
    )


def _perturb_adapters(model, seed=3, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_zero_initialised_lora_leaves_the_output_and_the_camera_branch_unchanged():
    base = _base()
    inp = _inputs()
    with torch.no_grad():
        ref = base(**inp)
        ref_no_cam = base(**{**inp, "camera_conditions": None, "chunk_plucker": None})
    spec = add_lora(base, rank=4, alpha=8)
    with torch.no_grad():
        out = base(**inp)
        out_no_cam = base(**{**inp, "camera_conditions": None, "chunk_plucker": None})
    assert torch.equal(out, ref)
    assert torch.equal(out_no_cam, ref_no_cam)
    assert (out - out_no_cam).abs().max() > 1e-3  # the (frozen) camera branch still steers the output
    # Targets: attention, cross-attention, FFN 1×1 convs and every camera projection, in all 4 blocks.
    kinds = {t.split(".", 2)[2] for t in spec.targets}
    assert kinds >= {"attn.qkv", "attn.proj", "cross_attn.kv_linear", "mlp.inverted_conv.conv", "mlp.point_conv.conv",
                     "attn.q_proj_cam", "attn.k_proj_cam", "attn.v_proj_cam", "attn.out_proj_cam", "plucker_proj"}
    assert {t.split(".")[1] for t in spec.targets} == {"0", "1", "2", "3"}


def test_only_adapters_train_and_gradients_reach_camera_and_ffn_adapters():
    m = _base()
    add_lora(m, rank=4, alpha=4)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    _perturb_adapters(m)
    m.train()
    m(**_inputs()).square().mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    for key in ("blocks.1.attn.k_proj_cam.lora_B.default.weight", "blocks.1.plucker_proj.lora_A.default.weight",
                "blocks.2.mlp.point_conv.conv.lora_A.default.weight", "blocks.3.attn.out_proj_cam.lora_B.default.weight"):
        assert grads[key] is not None and grads[key].abs().sum() > 0, key
    assert all(p.grad is None for n, p in m.named_parameters() if not p.requires_grad)


def test_adapter_save_load_merge_round_trip(tmp_path):
    base = _base()
    base_file = save_checkpoint(base, tmp_path / "base.safetensors")
    digest = file_sha256(base_file)
    lora = _base()
    add_lora(lora, rank=4, alpha=8, target_modules=DEFAULT_LORA_TARGETS)
    _perturb_adapters(lora)
    inp = _inputs()
    with torch.no_grad():
        ref = lora(**inp)
        base_out = base(**inp)
    assert (ref - base_out).abs().max() > 1e-4  # the adapters do something
    path = save_lora(lora, tmp_path / "adapter.safetensors", digest)
    tensors, meta = read_lora(path)
    assert meta["base_sha256"] == digest and all(".default." not in k for k in tensors)
    assert all(".lora_" in k for k in tensors)  # adapters only, no base weights

    fresh = _tiny()
    load_checkpoint(fresh, base_file)
    load_lora(fresh, path, base_sha256=digest)
    with torch.no_grad():
        assert torch.equal(fresh(**inp), ref)

    merged = merge_lora(fresh)
    assert sorted(merged.state_dict()) == sorted(_tiny().state_dict())  # official keys again
    with torch.no_grad():
        torch.testing.assert_close(merged(**inp), ref, rtol=1e-4, atol=1e-5)
    out = save_checkpoint(merged, tmp_path / "merged.safetensors")
    again = _tiny()
    load_checkpoint(again, out)
    with torch.no_grad():
        torch.testing.assert_close(again(**inp), ref, rtol=1e-4, atol=1e-5)


def test_an_adapter_for_a_different_base_is_refused(tmp_path):
    a, b = _base(0), _base(1)
    fa, fb = save_checkpoint(a, tmp_path / "a.safetensors"), save_checkpoint(b, tmp_path / "b.safetensors")
    add_lora(a, rank=2)
    path = save_lora(a, tmp_path / "adapter.safetensors", file_sha256(fa))
    with pytest.raises(LoraError, match="was trained on base"):
        load_lora(b, path, base_sha256=file_sha256(fb))
    wider = _tiny(caption_channels=64)
    with pytest.raises(LoraError, match="caption_channels"):
        load_lora(wider, path, base_sha256=None)
    assert state_fingerprint(_base(0)) != state_fingerprint(_base(1))
    assert state_fingerprint(_base(0)) == state_fingerprint(_base(0))


def test_bad_targets_are_named():
    m = _tiny()
    with pytest.raises(LoraError, match="t_conv.*read by weight"):
        resolve_lora_targets(m, [r"blocks\.0\.mlp\.t_conv"])
    with pytest.raises(LoraError, match=r"blocks\\\.0\\\.atn\\\.qkv match no module"):
        resolve_lora_targets(m, [r"blocks\.0\.atn\.qkv"])
    with pytest.raises(LoraError, match="is a GLUMBConvTemp"):
        resolve_lora_targets(m, [r"blocks\.0\.mlp"])
    with pytest.raises(LoraError, match="checkpoint-only"):
        resolve_lora_targets(m, [r"blocks\.3\.attn\.beta_proj"])  # block 3 is softmax: its GDN gates are unused
    with pytest.raises(LoraError, match="not a valid regular expression"):
        resolve_lora_targets(m, ["blocks.(0"])


def test_merge_command_writes_a_loadable_full_checkpoint(tmp_path, capsys):
    from sana_wm.training.export import main

    base = _base()
    bfile = save_checkpoint(base, tmp_path / "base.safetensors")
    add_lora(base, rank=4)
    _perturb_adapters(base)
    inp = _inputs()
    with torch.no_grad():
        ref = base(**inp)
    adapter = save_lora(base, tmp_path / "adapter.safetensors", file_sha256(bfile))
    assert main(["merge", "--base", str(bfile), "--adapter", str(adapter), "--out", str(tmp_path / "m.safetensors")]) == 0
    merged = _tiny()
    load_checkpoint(merged, tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(merged(**inp), ref, rtol=1e-4, atol=1e-5)
    other = save_checkpoint(_base(5), tmp_path / "other.safetensors")
    assert main(["merge", "--base", str(other), "--adapter", str(adapter), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "was trained on base" in capsys.readouterr().err


def test_lora_fine_tuning_run_saves_adapters_with_the_base_hash_and_exports(tmp_path):
    from sana_wm.testing.training import TINY_CPU_OVERRIDES, compose_train_config, write_tiny_latent_shards
    from sana_wm.training.export import export_training_checkpoint
    from sana_wm.training.launch import train

    base = _base()
    bfile = save_checkpoint(base, tmp_path / "base.safetensors")
    write_tiny_latent_shards(tmp_path / "shards", num_samples=2)
    cfg = compose_train_config(
        ["experiment=lora_custom_footage", *TINY_CPU_OVERRIDES, f"model.init_checkpoint={bfile}",
         f"data.train_shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2",
         "checkpoint.every_n_steps=2", "lora.rank=4", "lora.alpha=4", "optim.lr=1e-2", "optim.warmup_steps=0",
         "model.reference_numerics=false"]
    )
    train(cfg)
    adapter = tmp_path / "run" / "adapters" / "last.safetensors"
    tensors, meta = read_lora(adapter)
    assert meta["base_sha256"] == checkpoint_digest(bfile)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    model_keys = [k for k in ckpt["state_dict"] if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys)  # the resume checkpoint holds adapters only
    # Exporting the training checkpoint merges the adapters into the base; it equals base + saved adapter.
    out = export_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "exp.safetensors")
    merged = _tiny()
    load_checkpoint(merged, out)
    via_adapter = _tiny()
    load_checkpoint(via_adapter, bfile)
    load_lora(via_adapter, adapter, base_sha256=checkpoint_digest(bfile))
    inp = _inputs()
    with torch.no_grad():
        a, b, c = merged(**inp), via_adapter(**inp), base(**inp)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (a - c).abs().max() > 1e-5  # training moved the adapters away from zero
