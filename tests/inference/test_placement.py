"""ModulePlacement: host copies kept across offloads, the stale-weights guard, the move log and its byte counts, and
(on CUDA) pinned memory, bit-identical round trips and prefetch on a side stream.

On the CPU-only test machine `meta` stands in for the accelerator: a load to `meta` copies nothing real, so an
offload that gives back the original values can only have re-pointed the module at its host copy."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from sana_wm.inference import placement
from sana_wm.inference.placement import ModulePlacement

TINY_BYTES = (4 * 8 + 8 + 8 + 8 + 8 * 3 + 3 + 1) * 4  # two Linears, a LayerNorm and a 1-element buffer, float32


def tiny(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    with torch.no_grad():
        m[1].weight.normal_()  # not all ones, so a lost LayerNorm weight shows
    m.register_buffer("scale", torch.tensor([2.0]))
    return m.to(dtype).requires_grad_(False).eval()


def state_ptrs(m: nn.Module) -> list[int]:
    return [t.data_ptr() for t in m.state_dict().values()]


def test_offload_after_a_load_repoints_at_the_host_copy_and_counts_exactly():
    m = tiny()
    x = torch.randn(5, 4)
    ref = m(x)
    ptrs = state_ptrs(m)
    pl = ModulePlacement(pin_memory=False)
    pl.move("tiny", m, "cpu")  # homed where it already is: the host copy is its own tensors
    for cycle in range(2):
        pl.move("tiny", m, "meta")
        assert all(t.device.type == "meta" for t in m.state_dict().values())
        pl.move("tiny", m, "cpu")
        assert state_ptrs(m) == ptrs, cycle  # the very host tensors, no copy
        assert torch.equal(m(x), ref)
    assert pl.log == [("tiny", "cpu"), ("tiny", "meta"), ("tiny", "cpu"), ("tiny", "meta"), ("tiny", "cpu")]
    assert [(t.kind, t.h2d_bytes, t.d2h_bytes, t.reused_bytes) for t in pl.transfers] == [
        ("offload", 0, 0, 0), ("load", TINY_BYTES, 0, 0), ("offload", 0, 0, TINY_BYTES),
        ("load", TINY_BYTES, 0, 0), ("offload", 0, 0, TINY_BYTES),
    ]
    totals = pl.totals(since=1)
    assert {k: totals[k] for k in ("moves", "h2d_bytes", "d2h_bytes", "pinned_bytes", "reused_bytes")} == {
        "moves": 4, "h2d_bytes": 2 * TINY_BYTES, "d2h_bytes": 0, "pinned_bytes": 0, "reused_bytes": 2 * TINY_BYTES}
    assert pl.host_copy_bytes("tiny") == TINY_BYTES and pl.where == {"tiny": "cpu"}
    pl.move("tiny", m, "cpu")
    assert len(pl.transfers) == 5  # a move to where the module is records nothing


def test_skipped_tensors_stay_and_are_not_counted():
    m = tiny()
    pl = ModulePlacement(pin_memory=False)
    pl.move("tiny", m, "cpu")
    pl.move("tiny", m, "meta", skip=lambda name: name.startswith("2."))
    assert m[2].weight.device.type == "cpu" and m[0].weight.device.type == "meta"
    assert pl.transfers[-1].h2d_bytes == TINY_BYTES - (8 * 3 + 3) * 4
    pl.move("tiny", m, "cpu", skip=lambda name: name.startswith("2."))
    assert pl.transfers[-1].reused_bytes == TINY_BYTES - (8 * 3 + 3) * 4


@pytest.mark.parametrize("change", ["in_place", "replaced_parameter_data", "replaced_buffer"])
def test_changed_weights_are_refused_naming_module_and_tensor(change):
    m = tiny()
    pl = ModulePlacement(pin_memory=False, on_changed="error")
    pl.move("tiny", m, "cpu")
    pl.move("tiny", m, "meta")
    with torch.no_grad():
        if change == "in_place":
            m[0].weight.add_(1.0)
            name = "0.weight"
        elif change == "replaced_parameter_data":
            m[2].bias.data = torch.empty(3, device="meta")
            name = "2.bias"
        else:
            m.scale = torch.empty(1, device="meta")
            name = "scale"
    with pytest.raises(RuntimeError, match=rf"^offloading 'tiny': 1 tensor\(s\) changed on the device since they were "
                                           rf"loaded \({name}\), so its host copy is stale"):
        pl.move("tiny", m, "cpu")
    assert all(t.device.type == "meta" for t in m.state_dict().values())  # refused before anything moved
    assert pl.where == {"tiny": "meta"}


def test_changed_weight_is_copied_back_not_repointed(caplog):
    """Default policy: the changed tensor is copied back (a real device→host copy, which `meta` cannot give, so the
    copy raises here — a re-point would have silently restored the old value)."""
    m = tiny()
    pl = ModulePlacement(pin_memory=False)
    pl.move("tiny", m, "cpu")
    pl.move("tiny", m, "meta")
    with torch.no_grad():
        m[0].weight.mul_(2.0)
    with caplog.at_level(logging.WARNING), pytest.raises(NotImplementedError, match="meta"):
        pl.move("tiny", m, "cpu")
    assert "offloading 'tiny': 1 tensor(s) changed on the device since they were loaded (0.weight); copying them " \
           "back to the host" in caplog.text


def test_on_changed_is_checked():
    with pytest.raises(ValueError, match=r"on_changed must be 'copy' or 'error'; got 'ignore'"):
        ModulePlacement(on_changed="ignore")


def test_keep_host_copy_of_a_host_module_moves_nothing():
    m = tiny()
    ptrs = state_ptrs(m)
    pl = ModulePlacement(pin_memory=False)
    pl.keep_host_copy("tiny", m)
    assert pl.transfers == [] and state_ptrs(m) == ptrs and pl.host_copy_bytes("tiny") == TINY_BYTES
    pl.move("tiny", m, "meta")
    pl.move("tiny", m, "cpu")
    assert (pl.transfers[-1].d2h_bytes, pl.transfers[-1].reused_bytes) == (0, TINY_BYTES)
    assert state_ptrs(m) == ptrs


def test_host_buffers_pack_small_tensors_into_power_of_two_chunks(monkeypatch):
    monkeypatch.setattr(placement, "HOST_CHUNK_BYTES", 4096)
    u8 = torch.uint8
    like = [torch.empty(100), torch.empty(3, 5, dtype=torch.bfloat16), torch.empty(900, dtype=u8),
            torch.empty(1000, dtype=u8), torch.empty(1000, dtype=u8), torch.empty(500, dtype=u8),
            torch.empty(300), torch.empty(4, 4).t()]  # the last two: 1200 B > 4096 // 4, and strided
    out = placement._host_like(like, pin=False)
    assert [(o.shape, o.dtype) for o in out] == [(t.shape, t.dtype) for t in like]
    # 400 B at 0, 30 B at 512, 900 B at 1024, 1000 B at 2048 and 3072 fill one 4096 B chunk; 500 B opens one of 512
    base = [o.untyped_storage().data_ptr() for o in out]
    assert len(set(base[:5])) == 1 and len(set(base[5:]) | {base[0]}) == 4
    assert [o.storage_offset() * o.element_size() for o in out[:6]] == [0, 512, 1024, 2048, 3072, 0]
    assert [o.untyped_storage().nbytes() for o in out[4:]] == [4096, 512, 1200, 64]
    assert out[7].stride() == (1, 4)  # strided tensors keep their layout
    for i, o in enumerate(out):
        o.fill_(i + 1)
    assert all(bool((o == i + 1).all()) for i, o in enumerate(out))  # no two views overlap


def test_prefetch_needs_cuda():
    m = tiny()
    pl = ModulePlacement(pin_memory=False)
    assert pl.prefetch("tiny", m, "meta") is False and pl.prefetch("tiny", m, "cpu") is False
    pl.cancel_prefetch("tiny")  # nothing pending: a no-op
    assert pl.transfers == []


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
def test_cuda_round_trip_is_bit_identical_from_pinned_memory_without_a_second_copy():
    m = tiny(torch.bfloat16).cuda()
    x = torch.randn(64, 4, device="cuda", dtype=torch.bfloat16)
    ref = m(x)
    pl = ModulePlacement()
    assert pl.pin_memory
    pl.move("tiny", m, "cuda")  # homed on the device: nothing copied
    pl.move("tiny", m, "cpu")  # first offload: the one device→host copy, into pinned memory
    assert pl.transfers[-1].d2h_bytes == TINY_BYTES // 2
    assert all(t.device.type == "cpu" and t.is_pinned() for t in m.state_dict().values())
    host = state_ptrs(m)
    for _ in range(2):
        pl.move("tiny", m, "cuda")
        assert pl.transfers[-1].h2d_bytes == TINY_BYTES // 2
        assert torch.equal(m(x), ref)
        pl.move("tiny", m, "cpu")
        assert (pl.transfers[-1].d2h_bytes, pl.transfers[-1].reused_bytes) == (0, TINY_BYTES // 2)
        assert state_ptrs(m) == host
    assert pl.totals()["copy_seconds"] >= 0.0
    assert pl.log == [("tiny", "cuda"), ("tiny", "cpu"), ("tiny", "cuda"), ("tiny", "cpu"), ("tiny", "cuda"),
                      ("tiny", "cpu")]


@pytest.mark.gpu
def test_cuda_host_module_is_pinned_when_homed():
    m = tiny()
    x = torch.randn(5, 4)
    ref = m(x)
    pl = ModulePlacement()
    pl.move("tiny", m, "cpu")
    assert all(t.is_pinned() for t in m.state_dict().values()) and torch.equal(m(x), ref)
    assert (pl.transfers[-1].kind, pl.transfers[-1].pinned_bytes) == ("offload", TINY_BYTES)
    pl.move("tiny", m, "cpu")
    assert len(pl.transfers) == 1


@pytest.mark.gpu
def test_cuda_changed_weight_is_copied_back():
    m = tiny().cuda()
    pl = ModulePlacement()
    pl.move("tiny", m, "cpu")
    pl.move("tiny", m, "cuda")
    with torch.no_grad():
        m[0].weight.mul_(3.0)
    want = m[0].weight.detach().cpu()
    pl.move("tiny", m, "cpu")
    t = pl.transfers[-1]
    assert t.changed == ("0.weight",) and t.d2h_bytes == 4 * 8 * 4 and t.reused_bytes == TINY_BYTES - 4 * 8 * 4
    assert torch.equal(m[0].weight, want) and m[0].weight.is_pinned()
    pl.move("tiny", m, "cuda")
    pl.move("tiny", m, "cpu")
    assert pl.transfers[-1].d2h_bytes == 0  # the copied-back tensor is the host copy from now on


@pytest.mark.gpu
def test_cuda_prefetch_on_a_side_stream_matches_a_plain_load():
    big = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)]).requires_grad_(False)
    x = torch.randn(256, 1024, device="cuda")
    pl = ModulePlacement()
    pl.move("big", big, "cpu")
    pl.move("big", big, "cuda")
    ref = big(x)
    pl.move("big", big, "cpu")
    a = torch.randn(4096, 4096, device="cuda")
    busy = a @ a  # work on the current stream while the copies run
    assert pl.prefetch("big", big, "cuda")
    assert all(p.device.type == "cpu" for p in big.parameters())  # not usable until the move completes it
    busy = busy @ a
    pl.move("big", big, "cuda")
    t = pl.transfers[-1]
    assert t.prefetched and t.h2d_bytes == sum(p.numel() * 4 for p in big.parameters())
    y = big(x)
    pl.move("big", big, "cpu")  # frees the prefetched memory while y's kernels may still be queued
    other = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)]).requires_grad_(False)
    pl.move("other", other, "cpu")
    assert pl.prefetch("other", other, "cuda")  # side-stream allocations that must not reuse it early
    pl.move("other", other, "cuda")
    torch.cuda.synchronize()
    assert torch.equal(y, ref)
    assert t.copy_seconds >= 0.0
    del busy


@pytest.mark.gpu
def test_cuda_cancelled_prefetch_leaves_the_module_on_the_host():
    m = tiny()
    pl = ModulePlacement()
    pl.move("tiny", m, "cpu")
    assert pl.prefetch("tiny", m, "cuda")
    pl.cancel_prefetch("tiny")
    pl.move("tiny", m, "cuda")
    assert not pl.transfers[-1].prefetched and m[0].weight.device.type == "cuda"
