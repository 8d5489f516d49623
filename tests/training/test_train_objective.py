"""The rectified-flow objective of `SanaWMLitModule` on the tiny model, CPU, without a Trainer."""

from __future__ import annotations

import pytest
import torch

from data.schema import collate
from data.webdataset import make_latent_dataset
from sana_wm.testing.training import write_tiny_latent_shards
from sana_wm.training.config import EncoderConfig, ModelConfig, ObjectiveConfig, OptimConfig
from sana_wm.training.module import _TAG_TRAIN, SanaWMLitModule
from sana_wm.training.optim import build_optimizer


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    write_tiny_latent_shards(out, num_samples=2, samples_per_shard=2)
    samples = list(make_latent_dataset(str(out), shuffle_shards=False, rank=0, world_size=1))
    return collate(samples)  # latent [2, 16, 3, 4, 7], text [2, 32, 32]


def _module(**objective) -> SanaWMLitModule:
    return SanaWMLitModule(ModelConfig(preset="tiny"), ObjectiveConfig(**objective), OptimConfig(lr=1e-3))


class _Capture:
    """Forward hook recording the DiT's inputs and output."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        x, t, y, mask = args
        self.calls.append({"x": x.detach(), "t": t.detach(), "y": y.detach(), "mask": mask.detach(), "out": output.detach(),
                           **{k: v.detach() for k, v in kwargs.items()}})


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(batch):
    torch.manual_seed(0)
    m = _module()
    inputs = m.prepare_batch(batch)
    opt = build_optimizer(m.model, OptimConfig(lr=1e-3, grad_clip=None))

    def loss_now():
        return m.flow_step(inputs, m._generator(_TAG_TRAIN, 0))[0]  # the same draws every time

    with torch.no_grad():
        before = loss_now().item()
    for _ in range(8):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    with torch.no_grad():
        after = loss_now().item()
    assert after < 0.6 * before, (before, after)


def test_image_condition_keeps_frame_0_clean_and_out_of_the_loss(batch):
    m = _module(image_condition_prob=1.0, caption_dropout=0.0)
    cap = _Capture(m.model)
    inputs = m.prepare_batch(batch)
    with torch.no_grad():
        loss, _ = m.flow_step(inputs, m._generator(_TAG_TRAIN, 3))
    c = cap.calls[0]
    x0 = inputs["latent"]
    assert torch.equal(c["t"][:, 0], torch.zeros(2))
    assert (c["t"][:, 1:] > 0).all()
    assert torch.equal(c["x"][:, :, 0], x0[:, :, 0])  # the clean first latent frame
    # Recover ε from x_σ = (1 − σ)x₀ + σε on frames ≥ 1 and recompute the loss by hand over those frames only.
    s = (c["t"][:, 1:] / 1000).view(2, 1, -1, 1, 1)
    noise = (c["x"][:, :, 1:] - (1 - s) * x0[:, :, 1:]) / s
    expected = (c["out"][:, :, 1:] - (noise - x0[:, :, 1:])).square().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_without_image_condition_every_frame_is_noised(batch):
    m = _module(image_condition_prob=0.0, caption_dropout=0.0)
    cap = _Capture(m.model)
    with torch.no_grad():
        m.flow_step(m.prepare_batch(batch), m._generator(_TAG_TRAIN, 0))
    t = cap.calls[0]["t"]
    assert (t > 0).all()
    assert torch.equal(t, t[:, :1].expand_as(t))  # one σ per sample by default


def test_per_frame_timesteps_give_each_frame_its_own_noise_level(batch):
    m = _module(image_condition_prob=0.0, caption_dropout=0.0, per_frame_timesteps=True, flow_shift=1.0)
    cap = _Capture(m.model)
    with torch.no_grad():
        m.flow_step(m.prepare_batch(batch), m._generator(_TAG_TRAIN, 0))
    t = cap.calls[0]["t"]
    assert all(len(set(row.tolist())) == t.shape[1] for row in t)


def test_caption_dropout_swaps_in_the_null_table_in_training_only(batch):
    m = _module(caption_dropout=1.0)
    cap = _Capture(m.model)
    inputs = m.prepare_batch(batch)
    with torch.no_grad():
        m.flow_step(inputs, m._generator(_TAG_TRAIN, 0), train=True)
        m.flow_step(inputs, m._generator(_TAG_TRAIN, 0), train=False)
    table = m.model.y_embedder.y_embedding
    assert torch.equal(cap.calls[0]["y"], table.expand(2, -1, -1))
    assert torch.equal(cap.calls[0]["mask"], m.null_mask.expand(2, -1))
    assert torch.equal(cap.calls[1]["y"], inputs["text"])  # validation never drops captions
    assert torch.equal(cap.calls[1]["mask"], inputs["mask"])
    # The camera inputs reach the model untouched.
    assert torch.equal(cap.calls[0]["camera_conditions"], inputs["camera_conditions"])
    assert torch.equal(cap.calls[0]["chunk_plucker"], inputs["chunk_plucker"])


def test_caption_dropout_with_a_caption_length_that_does_not_fit_the_table_is_named(batch):
    m = SanaWMLitModule(ModelConfig(preset="tiny", caption_length=16), ObjectiveConfig(caption_dropout=0.5))
    with pytest.raises(ValueError, match="caption_length"):
        m.flow_step(m.prepare_batch(batch), m._generator(_TAG_TRAIN, 0))


def test_draws_are_a_function_of_seed_rank_and_batch_counter(batch):
    m = _module()
    inputs = m.prepare_batch(batch)
    with torch.no_grad():
        a = m.flow_step(inputs, m._generator(_TAG_TRAIN, 7))[0]
        torch.manual_seed(123)  # global RNG state is irrelevant
        b = m.flow_step(inputs, m._generator(_TAG_TRAIN, 7))[0]
        c = m.flow_step(inputs, m._generator(_TAG_TRAIN, 8))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_tiny_encoders_set_the_null_caption_and_encode_video_batches():
    from data.schema import Batch

    m = SanaWMLitModule(ModelConfig(preset="tiny"), encoders=EncoderConfig(kind="tiny_random", dtype="float32"))
    emb, mask = m.encoders.text.null_embedding()
    assert torch.equal(m.model.y_embedder.y_embedding, emb[0].float())
    assert torch.equal(m.null_mask, mask[0].bool())
    assert m.null_mask.tolist()[:2] == [True, False]  # "" is BOS only
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 17, 128, 224, generator=g) * 2 - 1
    cam = torch.zeros(1, 3, 20)
    cam[..., :16] = torch.eye(4).flatten()
    cam[..., 16:] = torch.tensor([5.6, 5.6, 3.5, 2.0])
    vb = Batch(keys=["v"], captions=["a room"], meta=[{}], camera_conditions=cam,
               chunk_plucker=torch.zeros(1, 48, 3, 4, 7), video=video, video_format="float")
    inputs = m.prepare_batch(vb)
    assert inputs["latent"].shape == (1, 16, 3, 4, 7)
    assert inputs["text"].shape == (1, 32, 32) and inputs["mask"].dtype == torch.bool
    torch.testing.assert_close(inputs["latent"], m.encoders.vae.encode(video))
    loss, _ = m.flow_step(inputs, m._generator(_TAG_TRAIN, 0))
    assert torch.isfinite(loss)


def test_a_text_encoder_alone_sets_the_null_caption_that_generation_passes_as_negative_prompt(tmp_path, caplog):
    """Training on cached latents with only the generation's text encoder configured (the CPU demo's setting): the
    null table is its encoding of "", which the pipeline passes as the unconditional branch of CFG. Without any
    text encoder the table stays random and caption dropout says so."""
    from sana_wm.encoders.text import GemmaTextEncoder
    from sana_wm.encoders.tiny import save_tiny_text_encoder

    root = save_tiny_text_encoder(tmp_path / "text_encoder", hidden=32, seed=3)
    m = SanaWMLitModule(ModelConfig(preset="tiny"), ObjectiveConfig(caption_dropout=0.1),
                        encoders=EncoderConfig(kind="pretrained", text_encoder=str(root), dtype="float32"))
    assert m.encoders.vae is None
    generation = GemmaTextEncoder.from_pretrained(str(root), dtype=torch.float32, max_sequence_length=32)
    emb, mask = generation.encode([""], use_chi_prompt=False)  # SanaWMPipeline.encode_prompt's negative prompt
    assert torch.equal(m.model.y_embedder.y_embedding, emb[0])
    assert torch.equal(m.null_mask, mask[0].bool())
    with caplog.at_level("WARNING", logger="sana_wm.training.module"):
        SanaWMLitModule(ModelConfig(preset="tiny"), ObjectiveConfig(caption_dropout=0.1))
    assert "null-caption table, which stays at its random start" in caplog.text
    assert "encoders.kind=none" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sana_wm.training.module"):
        SanaWMLitModule(ModelConfig(preset="tiny"), ObjectiveConfig(caption_dropout=0.0))
    assert "null-caption" not in caplog.text


def test_video_batch_without_encoders_is_a_clear_error():
    from data.schema import Batch

    m = _module()
    vb = Batch(keys=["v"], captions=["x"], meta=[{}], camera_conditions=torch.zeros(1, 3, 20),
               chunk_plucker=torch.zeros(1, 48, 3, 4, 7), video=torch.zeros(1, 3, 17, 128, 224), video_format="float")
    with pytest.raises(RuntimeError, match="no encoders are configured"):
        m.prepare_batch(vb)


def test_validation_videos_go_through_the_pipeline_and_leave_the_model_as_it_was(batch, tmp_path):
    from types import SimpleNamespace

    from sana_wm.inference.video import read_mp4
    from sana_wm.training.callbacks import ValidationVideos

    m = SanaWMLitModule(ModelConfig(preset="tiny"), encoders=EncoderConfig(kind="tiny_random", dtype="float32"))
    m.model.train()
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    cb = ValidationVideos(tmp_path, every_n_steps=5, prompts=["a room"], actions=["w-8,l-8"], num_frames=17,
                          num_steps=2, guidance_scale=2.0)
    trainer = SimpleNamespace(global_step=5, is_global_zero=True, loggers=[])
    cb.on_train_batch_end(trainer, m, None, batch, 0)
    assert [p.name for p in cb.paths] == ["step0000005_0.mp4"]
    frames, fps = read_mp4(cb.paths[0])
    assert frames.shape == (17, 128, 224, 3) and fps == 16
    assert m.model.training  # back in training mode
    assert all(torch.equal(v, m.model.state_dict()[k]) for k, v in before.items())
    cb.on_train_batch_end(trainer, m, None, batch, 0)  # same step: not sampled twice
    assert len(cb.paths) == 1


def test_configure_model_checkpoints_the_configured_blocks_and_the_step_still_trains(batch):
    """`model.ac_blocks=2` with selective checkpointing: the Lightning module wraps blocks 0–1 only, and a training
    step through the half-checkpointed model gives finite gradients for every trainable parameter."""
    from sana_wm.parallel import BlockCheckpointWrapper

    torch.manual_seed(0)
    m = SanaWMLitModule(ModelConfig(preset="tiny", activation_checkpointing=True, ac_policy="selective", ac_blocks=2))
    m.configure_model()
    assert [isinstance(b, BlockCheckpointWrapper) for b in m.model.blocks] == [True, True, False, False]
    loss = m.flow_step(m.prepare_batch(batch), m._generator(_TAG_TRAIN, 0))[0]
    loss.backward()
    grads = [p.grad for p in m.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
