"""In-training validation: ValidationVideos measures camera accuracy through sana_wm.eval with a stub estimator."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from data.schema import collate
from data.webdataset import make_latent_dataset
from sana_wm.camera import action_to_c2w
from sana_wm.eval.camera_metrics import camera_metrics
from sana_wm.testing.eval import ForwardTrackEstimator
from sana_wm.testing.training import write_tiny_latent_shards
from sana_wm.training.callbacks import ValidationVideos
from sana_wm.training.config import EncoderConfig, ModelConfig
from sana_wm.training.module import SanaWMLitModule


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    write_tiny_latent_shards(out, num_samples=1, samples_per_shard=1)
    return collate(list(make_latent_dataset(str(out), shuffle_shards=False, rank=0, world_size=1)))


class _Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))


class _FailsOnYaw(ForwardTrackEstimator):
    """The stub forward track, but gives up on the second video (a failing estimate is counted, not fatal)."""

    def estimate(self, frames, fps, known_intrinsics=None):
        if len(self.calls) == 1:
            self.calls.append(None)
            raise RuntimeError("no poses")
        return super().estimate(frames, fps, known_intrinsics)


def test_validation_logs_camera_accuracy_means_and_counts_failures(batch, tmp_path):
    m = SanaWMLitModule(ModelConfig(preset="tiny"), encoders=EncoderConfig(kind="tiny_random", dtype="float32"))
    est = _FailsOnYaw(step=0.05)
    cb = ValidationVideos(tmp_path, every_n_steps=5, prompts=["a room", "a hall", "a yard"],
                          actions=["w-16", "l-16", "w-8,l-8"], num_frames=17, num_steps=1, guidance_scale=1.0,
                          camera_estimator=est, camera_interval=4)
    logger = _Logger()
    trainer = SimpleNamespace(global_step=5, is_global_zero=True, loggers=[logger])
    cb.on_train_batch_end(trainer, m, None, batch, 0)
    assert len(cb.paths) == 3
    # Frames 0, 4, 8, 12, 16 of each 17-frame video at 16/4 fps, with the output-pixel intrinsics.
    assert [c[:2] for c in est.calls if c is not None] == [(5, 4.0), (5, 4.0)]
    assert est.calls[0][2].shape == (5, 4)
    expected = [camera_metrics(action_to_c2w(a)[:17][::4], ForwardTrackEstimator(0.05).estimate(
        np.zeros((5, 1, 1, 3), np.uint8), 4.0).c2w) for a in ("w-16", "w-8,l-8")]
    got = cb.camera_metrics[5]
    assert got["val/camera/failed"] == 1.0
    for name in expected[0]:
        assert got[f"val/camera/{name}"] == pytest.approx((expected[0][name] + expected[1][name]) / 2, rel=1e-6)
    assert got["val/camera/rot_err_deg_mean[sana_wm]"] > 0.1  # the yawing video does not match a straight track
    assert logger.logged == [(5, got)]


def test_train_config_wires_the_estimator_into_the_validation_callback(tmp_path):
    from sana_wm.testing.training import TINY_CPU_OVERRIDES, compose_train_config
    from sana_wm.training import launch

    cfg = launch.to_train_config(compose_train_config([
        *TINY_CPU_OVERRIDES, f"output_dir={tmp_path}", "validation.every_n_steps=3",
        "validation.estimator=sana_wm.testing.eval:ForwardTrackEstimator", "+validation.estimator_kwargs.step=0.5",
        "validation.estimator_interval=2",
    ]))
    (cb,) = [c for c in launch.build_callbacks(cfg) if isinstance(c, ValidationVideos)]
    assert isinstance(cb.camera_estimator, ForwardTrackEstimator) and cb.camera_estimator.step == 0.5
    assert cb.camera_interval == 2
