"""sana_wm.eval.lpips: the published key layouts load strictly, and the distance matches an independent numpy
implementation of the LPIPS v0.1 formula on random weights (and the lpips package, where it is installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana_wm.eval.lpips import LPIPS_CHANNELS, LPIPS_SCALE, LPIPS_SHIFT, load_lpips_model
from sana_wm.eval.quality import Skipped, gt_metrics, load_lpips

# (kind, out, in, kernel, stride, pad) for conv; ("pool", k, s) for max-pool; taps after these conv indices
ALEX = [("conv", 64, 3, 11, 4, 2), ("pool", 3, 2), ("conv", 192, 64, 5, 1, 2), ("pool", 3, 2),
        ("conv", 384, 192, 3, 1, 1), ("conv", 256, 384, 3, 1, 1), ("conv", 256, 256, 3, 1, 1)]
ALEX_INDEX = [0, None, 3, None, 6, 8, 10]  # torchvision `features` indices of the convs
VGG_WIDTHS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def _vgg_layout():
    layers, index, c_in = [], [], 3
    i = 0
    for b, (w, n) in enumerate(VGG_WIDTHS):
        if b:
            layers.append(("pool", 2, 2))
            index.append(None)
            i += 1
        for _ in range(n):
            layers.append(("conv", w, c_in, 3, 1, 1))
            index.append(i)
            c_in = w
            i += 2
    return layers, index


def _official_files(tmp_path, net: str, seed: int = 0):
    """Random weights saved as torchvision's whole-model state dict (features + stand-in classifier keys) and as
    the lpips package's head file; returns the paths and the tensors (float64 numpy) for the oracle."""
    rng = np.random.default_rng(seed)
    layers, index = (ALEX, ALEX_INDEX) if net == "alex" else _vgg_layout()
    state, convs = {}, []
    for layer, i in zip(layers, index, strict=True):
        if layer[0] != "conv":
            convs.append(layer)
            continue
        _, c_out, c_in, k, s, p = layer
        w = rng.normal(0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32)
        b = rng.normal(0, 0.05, c_out).astype(np.float32)
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
        convs.append(("conv", w.astype(np.float64), b.astype(np.float64), s, p))
    state["classifier.1.weight"] = torch.zeros(2, 2)  # ignored; torchvision's file has the classifier too
    heads = {f"lin{k}.model.1.weight": torch.from_numpy(rng.random((1, c, 1, 1)).astype(np.float32))
             for k, c in enumerate(LPIPS_CHANNELS[net])}
    torch.save(state, tmp_path / f"{net}net.pth")
    torch.save(heads, tmp_path / f"{net}.pth")
    return tmp_path / f"{net}net.pth", tmp_path / f"{net}.pth", convs, [h.double().numpy()[0, :, 0, 0]
                                                                         for h in heads.values()]


def _np_conv(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # C, H', W', k, k
    return np.einsum("chwij,ocij->ohw", win, w) + b[:, None, None]


def _np_pool(x, k, s):
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s].max(axis=(-1, -2))


def _np_lpips(x, y, convs, heads):
    """LPIPS v0.1 from the published formula, one image (3, H, W) in [-1, 1], float64 numpy."""
    shift, scale = np.array(LPIPS_SHIFT)[:, None, None], np.array(LPIPS_SCALE)[:, None, None]

    def taps(z):
        z, out = (z - shift) / scale, []
        for layer in convs:
            if layer[0] == "pool":
                z = _np_pool(z, layer[1], layer[2])
            else:
                z = np.maximum(_np_conv(z, *layer[1:]), 0.0)
                out.append(z)
        return out[-5:] if len(out) == 5 else [out[i] for i in (1, 3, 6, 9, 12)]  # VGG: relu1_2 … relu5_3

    total = 0.0
    for fx, fy, w in zip(taps(x), taps(y), heads, strict=True):
        nx = fx / (np.sqrt((fx**2).sum(0, keepdims=True)) + 1e-10)
        ny = fy / (np.sqrt((fy**2).sum(0, keepdims=True)) + 1e-10)
        total += float((w[:, None, None] * (nx - ny) ** 2).sum(0).mean())
    return total


@pytest.mark.parametrize("net, size", [("alex", (64, 72)), pytest.param("vgg", (32, 40), marks=pytest.mark.slow)])
def test_lpips_matches_a_numpy_oracle_of_the_published_formula(tmp_path, net, size):
    backbone, heads_file, convs, heads = _official_files(tmp_path, net)
    model = load_lpips_model(net, backbone, heads_file).double()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, (2, 3, *size)), rng.uniform(-1, 1, (2, 3, *size))
    got = model(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    want = [_np_lpips(x[i], y[i], convs, heads) for i in range(2)]
    assert want[0] > 0.01  # a non-trivial value
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_identical_images_are_exactly_zero_and_the_fn_maps_uint8_to_unit_range(tmp_path):
    backbone, heads_file, convs, heads = _official_files(tmp_path, "alex")
    fn = load_lpips(backbone, heads_file)
    assert fn.metric_name == "lpips_alex"
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 256, (2, 2, 64, 64, 3), dtype=np.uint8)
    assert fn(a, a).tolist() == [0.0, 0.0]
    want = _np_lpips(a[1].transpose(2, 0, 1) / 127.5 - 1, b[1].transpose(2, 0, 1) / 127.5 - 1, convs, heads)
    assert fn(a, b)[1] == pytest.approx(want, rel=1e-4)  # float32 forward
    assert set(gt_metrics(a, b, fn)) == {"psnr_db", "ssim", "lpips_alex"}


def test_key_layouts_load_strictly_and_name_the_file(tmp_path):
    backbone, heads_file, *_ = _official_files(tmp_path, "alex")
    state = torch.load(backbone, weights_only=True)
    bare = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    torch.save(bare, tmp_path / "bare.pth")  # a `features` state dict alone loads too
    torch.testing.assert_close(load_lpips_model("alex", tmp_path / "bare.pth", heads_file).features[3].weight,
                               state["features.3.weight"])
    del state["features.8.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth: expected torchvision's alexnet .*missing \['8.bias'\]"):
        load_lpips_model("alex", tmp_path / "missing.pth", heads_file)
    vgg_heads = {f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS["vgg"])}
    torch.save(vgg_heads, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"(?s)vgg\.pth: .*size mismatch"):  # VGG heads on the AlexNet trunk
        load_lpips_model("alex", backbone, tmp_path / "vgg.pth")
    torch.save({"lin0.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match=r"old\.pth: expected the lpips package's keys"):
        load_lpips_model("alex", backbone, tmp_path / "old.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth: not a readable torch state dict"):
        load_lpips_model("alex", tmp_path / "junk.pth", heads_file)


def test_missing_weights_are_skipped_with_the_reason(tmp_path):
    assert load_lpips(None, None) == Skipped(
        "lpips_alex", "no local torchvision AlexNet weights configured (metrics.lpips.backbone_weights)")
    (tmp_path / "alexnet.pth").write_bytes(b"")
    assert load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth") == Skipped(
        "lpips_alex", f"LPIPS linear-head weights (alex.pth) file {tmp_path / 'alex.pth'} does not exist "
        "(metrics.lpips.linear_weights)")
    assert load_lpips(None, None, "vgg").reason.startswith("no local torchvision VGG16 weights")
    with pytest.raises(ValueError, match="must be 'alex' or 'vgg'; got 'squeeze'"):
        load_lpips(None, None, "squeeze")
    frames = np.zeros((1, 16, 16, 3), np.uint8)
    assert set(gt_metrics(frames, frames, load_lpips(None, None))) == {"psnr_db", "ssim"}  # and the report says why


def test_against_the_lpips_package_when_installed(tmp_path):
    lpips = pytest.importorskip("lpips")  # needs torchvision; not installable beside the CPU torch here
    backbone, heads_file, *_ = _official_files(tmp_path, "alex")
    ref = lpips.LPIPS(net="alex", pretrained=True, model_path=str(heads_file), pnet_rand=True, verbose=False).eval()
    feats = {k.removeprefix("features."): v for k, v in torch.load(backbone, weights_only=True).items()
             if k.startswith("features.")}
    for k, (a, b) in enumerate([(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], start=1):
        getattr(ref.net, f"slice{k}").load_state_dict(
            {f"{i}.{n}": feats[f"{i}.{n}"] for i in range(a, b) for n in ("weight", "bias") if f"{i}.{n}" in feats})
    ours = load_lpips_model("alex", backbone, heads_file)
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y).flatten(), rtol=1e-5, atol=1e-6)
