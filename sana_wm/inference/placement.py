"""Where each inference module's weights live, and every copy that puts them there.

Offloading rests on one fact: inference never changes weights. So the first time a module goes to host memory its
parameters and buffers are copied into host tensors that are then kept — page-locked ("pinned") when CUDA is
present, so that host→device copies run at full bus speed and asynchronously. Every later offload only points the
module's tensors back at those host copies (no device→host copy), and every load is a ``non_blocking`` host→device
copy from them. A module that starts in host memory gets its host copy when it is first homed there (its pageable
tensors are copied into pinned memory once and released).

Guard against stale host copies: a load records, per tensor, the device tensor's storage and its autograd version
counter (which every in-place op through the tensor bumps, with or without grad mode: ``copy_``, ``add_``,
``load_state_dict``, optimiser steps). An offload re-points a tensor only when the module still holds that storage
at that version; any other tensor is copied back into its host copy (``on_changed="copy"``, with a warning naming
the module and the tensors) or the offload is refused (``on_changed="error"``). In-place edits through
``tensor.data`` get a fresh version counter and are not seen; nothing in this package edits weights that way.

Prefetch: :meth:`ModulePlacement.prefetch` starts a module's host→device copies on a side CUDA stream while the
current stream keeps computing; the following :meth:`ModulePlacement.move` to that device makes the current stream
wait on the copies' event and marks each prefetched tensor as used by it (``record_stream``), so the caching
allocator cannot hand the memory to a later side-stream allocation while the current stream still reads it. Until
then the module keeps pointing at its host copies, so using it early is safe (and slow), never wrong.

Byte and time accounting: each :class:`Transfer` counts host→device, device→host and host→host (pinning) bytes and
the bytes re-pointed without a copy; on CUDA its copy time comes from CUDA events (read lazily, so recording costs
no synchronisation): for a load, the seconds the current stream spent copying or waiting for the prefetch; for a
device→host copy, the copy itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["ModulePlacement", "Transfer", "move_module"]

#: Host copies of tensors up to a quarter of this size are packed into chunks of at most this many bytes (larger ones
#: get a buffer each): the caching host allocator rounds every pinned request up to a power of two, so a buffer per
#: small tensor could waste up to half of it, and a 26 GB module in one buffer would take 32 GB.
HOST_CHUNK_BYTES = 1 << 30
_ALIGN = 512  # byte alignment of each tensor inside a chunk (DMA-friendly, and enough for any dtype's view)


@torch.no_grad()
def move_module(module: nn.Module, device: torch.device | str, skip: Callable[[str], bool] | None = None) -> None:
    """Move a module's parameters and buffers to ``device`` in place, leaving those whose name ``skip`` accepts.

    Unlike ``module.to`` this never transfers the skipped tensors (no transient peak on the target device). A plain
    copy: no host copies are kept (see :class:`ModulePlacement` for that).
    """
    device = torch.device(device)
    for owner, kind, key, _, t in _slots(module, skip):
        if t.device != device:
            _install(owner, kind, key, t.to(device))


def _slots(module: nn.Module, skip: Callable[[str], bool] | None) -> Iterator[tuple[nn.Module, str, str, str, torch.Tensor]]:
    """(owner module, "param" | "buffer", key, full name, tensor) of every parameter and buffer not skipped; a tied
    parameter or shared buffer is yielded once."""
    seen: set[int] = set()
    for mod_name, mod in module.named_modules():
        for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
            for key, t in list(table.items()):
                full = f"{mod_name}.{key}" if mod_name else key
                if t is None or id(t) in seen or (skip is not None and skip(full)):
                    continue
                seen.add(id(t))
                yield mod, kind, key, full, t


def _install(owner: nn.Module, kind: str, key: str, value: torch.Tensor) -> None:
    """Point a module's parameter or buffer at ``value``, keeping the Parameter object where the types allow."""
    if kind == "buffer":
        owner._buffers[key] = value
        return
    p = owner._parameters[key]
    if torch._has_compatible_shallow_copy_type(p.data, value):
        p.data = value  # keeps the Parameter object (weight tying, optimiser references)
    else:  # e.g. to/from `meta`: a new Parameter, as nn.Module.to does
        owner._parameters[key] = nn.Parameter(value, requires_grad=p.requires_grad)


def _current(owner: nn.Module, kind: str, key: str) -> torch.Tensor | None:
    return (owner._parameters if kind == "param" else owner._buffers).get(key)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _host_like(tensors: list[torch.Tensor], pin: bool) -> list[torch.Tensor]:
    """Empty host tensors shaped like ``tensors`` (pinned when ``pin``), the small contiguous ones packed into chunks
    of at most :data:`HOST_CHUNK_BYTES` (a chunk is a power of two: the size the allocator would round it to)."""
    def empty(make):
        if pin:
            try:
                return make(True)
            except RuntimeError as err:  # the host may refuse to page-lock that much memory
                log.warning("could not allocate pinned host memory (%s); using pageable memory, so copies to and "
                            "from the device are slower and synchronous", err)
        return make(False)

    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups, members, used = [], [], 0
    for i, t in enumerate(tensors):
        n = _nbytes(t)
        if not t.is_contiguous() or n > HOST_CHUNK_BYTES // 4:  # big or strided: a buffer of its own
            out[i] = empty(lambda p, t=t: torch.empty_like(t, device="cpu", pin_memory=p))
            continue
        if used + n > HOST_CHUNK_BYTES:
            groups.append((members, used))
            members, used = [], 0
        members.append((i, t, used))
        used += -(-n // _ALIGN) * _ALIGN
    if members:
        groups.append((members, used))
    for members, used in groups:
        size = 1 << max(used - 1, 0).bit_length()
        chunk = empty(lambda p, size=size: torch.empty(size, dtype=torch.uint8, pin_memory=p))
        for i, t, off in members:
            out[i] = chunk[off:off + _nbytes(t)].view(t.dtype).view(t.shape)
    return out


@dataclass
class _Slot:
    """One tensor's host copy and the device tensor the last load installed for it (kept referenced so that its
    storage cannot be freed and its address reused unnoticed; None when not on a device)."""

    host: torch.Tensor
    device: torch.Tensor | None = None
    version: int | None = None

    def holds_host(self, cur: torch.Tensor) -> bool:
        """Whether ``cur`` is this host copy."""
        h = self.host
        return cur.device.type == "cpu" and cur.data_ptr() == h.data_ptr() and cur.shape == h.shape \
            and cur.dtype == h.dtype


@dataclass
class _HostCopy:
    module: nn.Module
    slots: dict[tuple[int, str, str], _Slot] = field(default_factory=dict)


@dataclass
class _Pending:
    module: nn.Module
    device: torch.device
    tensors: dict[tuple[int, str, str], tuple[int, int, torch.Tensor]]  # key → (source data_ptr, version, copy)
    done: torch.cuda.Event


@dataclass
class Transfer:
    """One placement operation.

    kind: ``"load"`` (to a non-host device), ``"offload"`` (to host memory) or ``"host_copy"`` (a host copy made
    without moving the module, :meth:`ModulePlacement.keep_host_copy`, or a host-resident module adopted at home).
    h2d_bytes / d2h_bytes: bytes copied host→device / device→host (any other device counts as "device").
    pinned_bytes: bytes copied host→host into pinned memory. reused_bytes: bytes re-pointed at an existing host copy.
    prefetched: the load consumed a :meth:`ModulePlacement.prefetch`. changed: tensors whose device copy had changed
    since the last load and were copied back.
    """

    name: str
    device: str
    kind: str
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    pinned_bytes: int = 0
    reused_bytes: int = 0
    prefetched: bool = False
    changed: tuple[str, ...] = ()
    _seconds: float | None = None
    _events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    @property
    def copy_seconds(self) -> float:
        """Seconds this transfer held up the stream that needed it (see the module docstring); waits on CUDA."""
        if self._seconds is None and self._events is not None:
            start, end = self._events
            end.synchronize()
            self._seconds = start.elapsed_time(end) / 1e3
            self._events = None
        return self._seconds or 0.0


class ModulePlacement:
    """Moves named modules between devices, keeps their host copies and records every transfer.

    Args:
        pin_memory: keep host copies in page-locked memory (default: when CUDA is available; the pipeline passes
            whether its execution device is CUDA).
        on_changed: what an offload does with a tensor whose device copy changed since its load: ``"copy"`` (copy it
            back into the host copy and warn) or ``"error"`` (refuse, naming the module and the tensors).

    Attributes:
        where: module name → device string it was last moved to.
        transfers: every :class:`Transfer`, in order.
        log: (name, device) of every transfer that changed a module's device, in order.
    """

    def __init__(self, *, pin_memory: bool | None = None, on_changed: str = "copy") -> None:
        if on_changed not in ("copy", "error"):
            raise ValueError(f"on_changed must be 'copy' or 'error'; got {on_changed!r}")
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.on_changed = on_changed
        self.where: dict[str, str] = {}
        self.transfers: list[Transfer] = []
        self._copies: dict[str, _HostCopy] = {}
        self._pending: dict[str, _Pending] = {}
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    @property
    def log(self) -> list[tuple[str, str]]:
        return [(t.name, t.device) for t in self.transfers if t.kind != "host_copy"]

    def totals(self, since: int = 0) -> dict[str, float]:
        """Sums over ``transfers[since:]``: moves, bytes per direction, re-pointed bytes and copy seconds."""
        ts = self.transfers[since:]
        return {
            "moves": sum(t.kind != "host_copy" for t in ts),
            "h2d_bytes": sum(t.h2d_bytes for t in ts),
            "d2h_bytes": sum(t.d2h_bytes for t in ts),
            "pinned_bytes": sum(t.pinned_bytes for t in ts),
            "reused_bytes": sum(t.reused_bytes for t in ts),
            "copy_seconds": sum(t.copy_seconds for t in ts),
        }

    def host_copy_bytes(self, name: str) -> int:
        """Bytes of the host copy kept for ``name`` (0 if none)."""
        rec = self._copies.get(name)
        return sum(_nbytes(s.host) for s in rec.slots.values()) if rec else 0

    # ------------------------------------------------------------------------------------------------ moves

    @torch.no_grad()
    def move(self, name: str, module: nn.Module, device, skip: Callable[[str], bool] | None = None) -> None:
        """Put ``module``'s tensors (those ``skip`` does not accept) on ``device``: an offload when it is the CPU,
        else a load. A move to where the module already is copies nothing (a host-resident module gets its host copy
        the first time it is homed to the CPU)."""
        dev = torch.device(device)
        t = self._to_host(name, module, skip, kind="offload") if dev.type == "cpu" else self._load(name, module, dev, skip)
        t.device = str(dev)
        if self.where.get(name) == t.device:
            if t.pinned_bytes or t.d2h_bytes or t.h2d_bytes:
                t.kind = "host_copy"
                self.transfers.append(t)
            return
        self.where[name] = t.device
        self.transfers.append(t)

    @torch.no_grad()
    def keep_host_copy(self, name: str, module: nn.Module, skip: Callable[[str], bool] | None = None) -> None:
        """Make ``module``'s host copy now without moving it (so that its first offload is free); a host-resident
        module is pointed at the (pinned) copy."""
        t = self._to_host(name, module, skip, kind="host_copy", repoint=False)
        if t.pinned_bytes or t.d2h_bytes:
            self.transfers.append(t)

    @torch.no_grad()
    def prefetch(self, name: str, module: nn.Module, device, skip: Callable[[str], bool] | None = None) -> bool:
        """Start copying ``module`` to the CUDA ``device`` on a side stream; the next :meth:`move` of ``name`` to
        ``device`` completes the load. The copies start after the work already queued on the current stream (such as
        the load of the module about to run), so they do not compete with it for the bus. Returns False (nothing
        started) off CUDA or when nothing needs copying."""
        dev = _indexed(torch.device(device))
        if dev.type != "cuda" or name in self._pending:
            return False
        todo = [(owner, kind, key, t) for owner, kind, key, _, t in _slots(module, skip) if t.device != dev]
        if not todo:
            return False
        if dev not in self._streams:
            self._streams[dev] = torch.cuda.Stream(dev)
        stream = self._streams[dev]
        done = torch.cuda.Event()
        tensors = {}
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for owner, kind, key, t in todo:
                tensors[(id(owner), kind, key)] = (t.data_ptr(), t._version, t.to(dev, non_blocking=True))
            done.record(stream)
        self._pending[name] = _Pending(module, dev, tensors, done)
        return True

    def cancel_prefetch(self, name: str) -> None:
        """Drop an unconsumed prefetch of ``name`` (its device memory is freed once the side stream is done)."""
        pending = self._pending.pop(name, None)
        if pending is not None:
            pending.done.synchronize()  # its host sources may be written by a copy-back next

    # ------------------------------------------------------------------------------------------------ internals

    def _record(self, name: str, module: nn.Module) -> _HostCopy:
        rec = self._copies.get(name)
        if rec is None or rec.module is not module:
            rec = self._copies[name] = _HostCopy(module)
        return rec

    @staticmethod
    def _unchanged(s: _Slot | None, t: torch.Tensor) -> bool:
        """Whether device tensor ``t`` is still the one the last load installed for slot ``s``, at the same version —
        so that it equals its host copy."""
        return (
            s is not None and s.device is not None and t._version == s.version
            and t.untyped_storage()._cdata == s.device.untyped_storage()._cdata and t.data_ptr() == s.device.data_ptr()
            and t.shape == s.host.shape and t.dtype == s.host.dtype
        )

    def _to_host(self, name, module, skip, *, kind: str, repoint: bool = True) -> Transfer:
        """Offload (``repoint``) or only copy (``repoint=False``) ``module`` to its host copy, making the copy where
        missing."""
        self.cancel_prefetch(name)
        rec = self._record(name, module)
        plan = []  # (owner, kind, key, tensor, slot, action)
        for owner, k, key, full, cur in _slots(module, skip):
            s = rec.slots.get((id(owner), k, key))
            if cur.device.type == "cpu":
                if s is None or not s.holds_host(cur):
                    plan.append((owner, k, key, full, cur, s, "pin" if self.pin_memory and not cur.is_pinned()
                                 else "adopt"))
            elif self._unchanged(s, cur):
                plan.append((owner, k, key, full, cur, s, "reuse"))
            else:
                plan.append((owner, k, key, full, cur, s, "changed" if s is not None else "copy"))
        changed = [p[3] for p in plan if p[6] == "changed"]
        if changed and self.on_changed == "error":
            raise RuntimeError(
                f"offloading {name!r}: {len(changed)} tensor(s) changed on the device since they were loaded "
                f"({', '.join(changed[:3])}{' …' if len(changed) > 3 else ''}), so its host copy is stale; weights "
                "must stay unchanged between a load and an offload (or use on_changed='copy')"
            )
        if changed:
            log.warning("offloading %r: %d tensor(s) changed on the device since they were loaded (%s); copying them "
                        "back to the host", name, len(changed), ", ".join(changed[:3]))

        def fits(s, cur):
            return s is not None and s.host.shape == cur.shape and s.host.dtype == cur.dtype

        fresh = [p[4] for p in plan if p[6] == "pin" or (p[6] in ("copy", "changed") and not fits(p[5], p[4]))]
        fresh_host = iter(_host_like(fresh, self.pin_memory))
        t = Transfer(name, "cpu", kind, changed=tuple(changed))
        cuda = next((p[4].device for p in plan if p[4].device.type == "cuda"), None)
        stream = torch.cuda.current_stream(cuda) if cuda is not None else None
        if stream is not None:
            t._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            t._events[0].record(stream)
        t0 = time.perf_counter()
        for owner, k, key, _, cur, s, action in plan:
            sk = (id(owner), k, key)
            if action == "adopt":
                rec.slots[sk] = _Slot(cur)
            elif action == "pin":
                host = next(fresh_host)
                host.copy_(cur)
                t.pinned_bytes += _nbytes(cur)
                _install(owner, k, key, host)
                rec.slots[sk] = _Slot(host)
            elif action == "reuse":
                t.reused_bytes += _nbytes(cur)
                if repoint:
                    _install(owner, k, key, s.host)
                    s.device = s.version = None
            else:  # copy, changed: a real device→host copy
                host = s.host if fits(s, cur) else next(fresh_host)
                host.copy_(cur, non_blocking=cur.device.type == "cuda" and host.is_pinned())
                t.d2h_bytes += _nbytes(cur)
                if repoint:
                    _install(owner, k, key, host)
                    rec.slots[sk] = _Slot(host)
                else:  # the module keeps its device tensor, now known to equal the host copy
                    rec.slots[sk] = _Slot(host, cur.detach(), cur._version)
        if stream is not None:
            t._events[1].record(stream)
            if t.d2h_bytes:
                stream.synchronize()  # the host copies are read from now on
        else:
            t._seconds = time.perf_counter() - t0
        return t

    def _load(self, name, module, dev: torch.device, skip) -> Transfer:
        """Copy ``module``'s tensors to ``dev`` (from a prefetch where one is pending), noting for each host copy the
        device tensor that now stands for it."""
        dev = _indexed(dev)
        pending = self._pending.get(name)
        if pending is not None and (pending.module is not module or pending.device != dev):
            self.cancel_prefetch(name)
        pending = self._pending.pop(name, None)
        rec = self._copies.get(name)
        if rec is not None and rec.module is not module:
            rec = None
        t = Transfer(name, str(dev), "load", prefetched=pending is not None)
        stream = torch.cuda.current_stream(dev) if dev.type == "cuda" else None
        if stream is not None:
            t._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            t._events[0].record(stream)
            if pending is not None:
                stream.wait_event(pending.done)
        t0 = time.perf_counter()
        for owner, k, key, _, cur in _slots(module, skip):
            if cur.device == dev:
                continue
            sk = (id(owner), k, key)
            pre = pending.tensors.get(sk) if pending is not None else None
            if pre is not None and pre[0] == cur.data_ptr() and pre[1] == cur._version:
                new = pre[2]
                new.record_stream(stream)  # allocated on the side stream, read on this one
            else:
                new = cur.to(dev, non_blocking=True)
            if cur.device.type == "cpu":
                t.h2d_bytes += _nbytes(cur)
            s = rec.slots.get(sk) if rec is not None else None
            from_copy = s is not None and s.holds_host(cur)
            _install(owner, k, key, new)
            if from_copy:
                s.device, s.version = new, _current(owner, k, key)._version
        if stream is not None:
            t._events[1].record(stream)
        else:
            t._seconds = time.perf_counter() - t0
        return t


def _indexed(dev: torch.device) -> torch.device:
    """``cuda`` → ``cuda:<current>`` (streams and comparisons need the index)."""
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev
