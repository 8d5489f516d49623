"""Bad-data handling: skip reasons, the per-worker skip counter, and the errors raised in strict mode.

A defective sample never stops a run: the loader catches the :class:`SampleError` raised while
decoding it, counts it in a :class:`SkipStats` under its reason, and moves on. With ``strict=True``
the same defect raises :class:`DataError` instead, naming the shard, the sample key and the bad
member/field, so a data problem can be pinned down before a long run.

Counters are per process: each DataLoader worker counts the samples *it* skipped. Every sample the
loader yields carries a snapshot of its worker's counts (``Sample.skip_counts``, summed by
:class:`data.webdataset.SkipTracker`), and each worker also writes its counts into a shared-memory
table (:meth:`data.webdataset.ShardDataset.skip_totals`), which alone sees the skips after a
worker's last sample and those of a worker that delivers nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

__all__ = ["SkipReason", "SKIP_REASONS", "SampleError", "DataError", "SkipStats"]

log = logging.getLogger(__name__)


class SkipReason:
    """Names of the skip reasons (the keys of :class:`SkipStats` counts)."""

    SHARD_READ_ERROR = "shard_read_error"  # tar missing, unreadable or truncated
    MISSING_KEY = "missing_key"  # a required tar member or json field is absent
    BAD_META = "bad_meta"  # json undecodable, wrong schema version or a bad field value
    BAD_ARRAY = "bad_array"  # an .npy member is undecodable or has the wrong shape/dtype
    DECODE_ERROR = "decode_error"  # corrupt / truncated video
    TOO_FEW_FRAMES = "too_few_frames"  # the clip is too short for num_frames at target_fps
    FPS_TOO_LOW = "fps_too_low"  # source fps below the target fps (frames would repeat)
    FRAME_COUNT_MISMATCH = "frame_count_mismatch"  # poses / intrinsics / video disagree on F
    SIZE_MISMATCH = "size_mismatch"  # decoded frame size differs from json width/height
    NONFINITE_POSE = "nonfinite_pose"  # NaN / inf in c2w
    NON_RIGID_POSE = "non_rigid_pose"  # rotation not orthonormal, det != +1, bad last row
    BAD_INTRINSICS = "bad_intrinsics"  # fx or fy <= 0, non-finite values, not a pinhole K
    NONFINITE_TENSOR = "nonfinite_tensor"  # NaN / inf in a cached latent, text embedding or camera tensor
    SHAPE_MISMATCH = "shape_mismatch"  # cached tensors disagree on T, h, w or L
    NO_CAMERA = "no_camera"  # a clip marked "camera": false (no poses to train the camera control with)
    UNEXPECTED_ERROR = "unexpected_error"  # any other exception while decoding (logged with traceback)


SKIP_REASONS: tuple[str, ...] = tuple(v for k, v in vars(SkipReason).items() if k.isupper())


class SampleError(Exception):
    """A defect in one sample (internal: caught by the loader, counted or re-raised as DataError).

    Args:
        reason: one of :data:`SKIP_REASONS`.
        field: the tar member or json field at fault (e.g. ``'c2w.npy'``, ``'json:fps'``).
        detail: what is wrong, with the offending value and the expected form.
    """

    def __init__(self, reason: str, field: str, detail: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}.")
        super().__init__(f"[{reason}] {field}: {detail}")
        self.reason = reason
        self.field = field
        self.detail = detail


class DataError(RuntimeError):
    """Raised in strict mode for a defective sample or shard.

    Attributes:
        reason, url, key, field, detail: where and what; ``key`` is None for whole-shard errors.

    Raised inside a DataLoader worker, it reaches the main process re-built from its message alone
    (that is how torch forwards worker exceptions); the message still names shard, key and field,
    and ``reason`` is parsed back from it.
    """

    def __init__(self, reason: str, url: str | None = None, key: str | None = None, field: str | None = None, detail: str | None = None):
        if field is None and detail is None and url is None and key is None:
            super().__init__(reason)  # re-raised from a worker: `reason` is the full message
            found = re.search(r"bad data \((\w+)\)", reason)
            self.reason = found.group(1) if found else None
            self.url = self.key = self.field = self.detail = None
            return
        where = f"shard {url!r}" + (f", sample {key!r}" if key is not None else "")
        super().__init__(f"bad data ({reason}) in {where}, key {field!r}: {detail}")
        self.reason = reason
        self.url = url
        self.key = key
        self.field = field
        self.detail = detail


class SkipStats:
    """Counter of skipped samples by reason, logged through :mod:`logging` periodically.

    Args:
        log_every_s: log a summary at most this often (seconds) while skips keep happening; the first
            skip is always logged in full.
        name: label used in log lines (e.g. ``'rank 0 worker 1'``).
    """

    def __init__(self, log_every_s: float = 60.0, name: str = "data"):
        self.counts: Counter[str] = Counter()
        self.seen = 0
        self.log_every_s = float(log_every_s)
        self.name = name
        self._last_log = 0.0

    @property
    def total(self) -> int:
        """Number of samples skipped so far."""
        return int(sum(self.counts.values()))

    def as_dict(self) -> dict[str, int]:
        """Snapshot of the counts (reason -> count), only reasons seen at least once."""
        return {k: int(v) for k, v in self.counts.items() if v}

    def record_ok(self) -> None:
        """Count one good sample (for the skip rate in the log lines)."""
        self.seen += 1

    def record(self, reason: str, url: str | None, key: str | None, field: str, detail: str) -> None:
        """Count one skipped sample and log it (in full the first time, then summaries)."""
        self.counts[reason] += 1
        now = time.monotonic()
        if self.total == 1:
            log.warning("%s: skipping sample %r of %s (%s, %s): %s", self.name, key, url, reason, field, detail)
            self._last_log = now
        elif now - self._last_log >= self.log_every_s:
            self.log_summary()
            self._last_log = now
        else:
            log.debug("%s: skipping sample %r of %s (%s, %s): %s", self.name, key, url, reason, field, detail)

    def log_summary(self) -> None:
        """Log the counts so far at WARNING level (no-op when nothing was skipped)."""
        if self.total:
            log.warning(
                "%s: skipped %d samples (%d good) by reason: %s", self.name, self.total, self.seen, self.as_dict()
            )
