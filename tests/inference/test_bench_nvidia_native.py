"""Our side of bench/nvidia_native.py: the checkout check, the import isolation, the state-dict conversion, the
camera-downscale mode read from NVIDIA's classes, the inputs and the file subset.

NVIDIA's code is not in this repository and tests download nothing, so its network is not built here; the modules
and classes below are stand-ins written by these tests with the shapes of NVIDIA's (names, packages, class
hierarchy), never their code. The bench itself needs a GPU and a checkout (--nvidia-src).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from sana_wm import SanaWM
from sana_wm.models.sana_wm import PRESETS

BENCH = Path(__file__).resolve().parents[2] / "bench"
CAM = "diffusion.model.nets.sana_gdn_camctrl_blocks"
TRITON = "diffusion.model.nets.sana_gdn_blocks_triton"


@pytest.fixture
def nvb(bench_module):
    return bench_module("nvidia_native.py")


@pytest.fixture
def restore_modules():
    """import_nvidia registers packages and stand-ins in sys.modules: removed again after the test."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def fake_checkout(root: Path, model_source: str) -> Path:
    """A folder with the entry files of NVIDIA's checkout, package __init__s that fail if run, a registry module
    written like theirs (mmcv's Registry by name) and `model_source` as the model module."""
    files = {
        "configs/sana_wm/sana_wm_1600m_720p.yaml": "model: {}\n",
        "diffusion/model/nets/sana_gdn_blocks_triton.py": "",
        "diffusion/model/nets/sana_gdn_camctrl_blocks.py": "",
        "diffusion/model/ops/fused_cam_gdn.py": "",
        "diffusion/utils/camctrl_config.py": "",
        "diffusion/model/ops/__init__.py": "",
        "diffusion/model/ops/helper.py": "VALUE = 7\n",
        "diffusion/model/registry.py": "from mmcv import Registry\n\nATTENTION_BLOCKS = Registry('attention_blocks')\n",
        "diffusion/model/nets/sana_multi_scale_video_camctrl.py": model_source,
    }
    for pkg in ("diffusion", "diffusion/model", "diffusion/model/nets", "diffusion/utils"):
        files[f"{pkg}/__init__.py"] = f"raise ImportError('{pkg}/__init__.py must not run')\n"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


MODEL_SOURCE = """
from termcolor import colored
from diffusion.model.builder import MODELS
from diffusion.model.registry import ATTENTION_BLOCKS
from diffusion.utils.dist_utils import get_rank
from diffusion.utils.logger import get_root_logger
from diffusion.model.ops.helper import VALUE


@ATTENTION_BLOCKS.register_module()
class Attn:
    pass


@MODELS.register_module()
def Model_P1_D20():
    return Attn()


RANK = get_rank()
LOGGER = get_root_logger("ignored.log")
"""


def test_a_missing_or_wrong_nvidia_src_names_the_path_and_the_files_expected(nvb, tmp_path, capsys):
    with pytest.raises(nvb.NvidiaSourceError, match=r"--nvidia-src is required: .*configs/sana_wm/sana_wm_1600m_720p"):
        nvb.check_nvidia_src(None)
    with pytest.raises(nvb.NvidiaSourceError, match=rf"--nvidia-src {tmp_path / 'nope'}: no such directory"):
        nvb.check_nvidia_src(tmp_path / "nope")
    (tmp_path / "configs/sana_wm").mkdir(parents=True)
    (tmp_path / "configs/sana_wm/sana_wm_1600m_720p.yaml").write_text("model: {}\n")
    with pytest.raises(nvb.NvidiaSourceError) as err:
        nvb.check_nvidia_src(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"--nvidia-src {tmp_path} is not a checkout of NVIDIA's SANA-WM code: it lacks "
                          "diffusion/model/nets/sana_multi_scale_video_camctrl.py, diffusion/model/nets/"
                          "sana_gdn_blocks_triton.py, ")
    assert "lacks configs/" not in msg and "bench/nvidia_subset.sh" in msg
    # the script's own exit: status 2 and the same message, before anything touches a GPU
    assert nvb.main(["--nvidia-src", str(tmp_path)]) == 2
    assert f"error: --nvidia-src {tmp_path} is not a checkout" in capsys.readouterr().err
    assert nvb.main([]) == 2
    assert "error: --nvidia-src is required" in capsys.readouterr().err


def test_bad_cases_and_policies_are_refused(nvb):
    with pytest.raises(SystemExit):
        nvb.parse_args(["--cases", "fwd21,fwd42"])
    with pytest.raises(SystemExit):
        nvb.parse_args(["--ac", "ffn"])  # the ffn policy needs the compiler
    with pytest.raises(SystemExit):
        nvb.parse_args(["--compile", "--ac", "full,some"])
    assert nvb.parse_args([]).ac == "full,selective"
    assert nvb.parse_args(["--compile"]).ac == "full,ffn"


def test_import_runs_only_the_needed_files_with_stand_ins_for_the_rest(nvb, tmp_path, restore_modules):
    """The package __init__s of the checkout raise if run; the registry module runs with the Registry stand-in (mmcv
    is not installed here); builder, rank and logger come from the script."""
    root = fake_checkout(tmp_path / "sana", MODEL_SOURCE)
    mod = nvb.import_nvidia(root)
    assert mod.__file__ == str(root.resolve() / "diffusion/model/nets/sana_multi_scale_video_camctrl.py")
    assert mod.VALUE == 7 and mod.RANK == 0 and mod.LOGGER.name == "nvidia_sana"
    from diffusion.model.builder import MODELS
    from diffusion.model.registry import ATTENTION_BLOCKS

    assert ATTENTION_BLOCKS.get("Attn") is mod.Attn and ATTENTION_BLOCKS.get("Other") is None
    assert isinstance(MODELS.get("Model_P1_D20")(), mod.Attn)
    assert nvb.import_nvidia(root) is mod  # the same checkout again: the same module
    other = fake_checkout(tmp_path / "other", MODEL_SOURCE)
    with pytest.raises(RuntimeError, match=r"a package `diffusion` is already imported from .*sana/diffusion"):
        nvb.import_nvidia(other)


def test_a_module_the_checkout_lacks_is_named(nvb, tmp_path, restore_modules):
    root = fake_checkout(tmp_path, "from diffusion.model.ops.absent import X\n")
    with pytest.raises(nvb.NvidiaSourceError, match=r"NVIDIA's code imports diffusion.model.ops.absent, which this "
                                                    r"checkout lacks"):
        nvb.import_nvidia(root)


def test_registry_stand_in_registers_gets_and_refuses_a_second_name(nvb):
    reg = nvb.Registry("blocks")
    first = reg.register_module()(type("A", (), {}))
    assert reg.get("A") is first and reg.register_module(name="B", module=int) is int and reg.get("B") is int
    with pytest.raises(KeyError, match="A is already registered in blocks"):
        reg.register_module()(type("A", (), {}))
    second = reg.register_module(force=True)(type("A", (), {}))
    assert reg.get("A") is second


class Network:
    """NVIDIA's network as the loader sees it: a state dict."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def test_our_state_dict_is_their_layout_plus_their_pos_embed(nvb):
    ours = SanaWM.from_preset("tiny")
    own = ours.state_dict()
    theirs = {k: torch.zeros_like(v) for k, v in own.items()}
    theirs["pos_embed"] = torch.ones(1, 484, 224)
    state = nvb.nvidia_state_dict(ours, Network(theirs))
    assert set(state) == set(theirs) and state["pos_embed"] is theirs["pos_embed"]
    assert all(torch.equal(state[k], v) for k, v in own.items())
    # every difference named, counted
    extra = dict(theirs, **{"blocks.0.attn.extra": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"1 missing \['blocks.0.attn.extra'\], 0 unexpected \[\], 0 of another"):
        nvb.nvidia_state_dict(ours, Network(extra))
    fewer = {k: v for k, v in theirs.items() if k != "blocks.3.attn.A_log"}
    with pytest.raises(ValueError, match=r"0 missing \[\], 1 unexpected \['blocks.3.attn.A_log'\]"):
        nvb.nvidia_state_dict(ours, Network(fewer))
    wider = dict(theirs, **{"final_layer.linear.bias": torch.zeros(17)})
    with pytest.raises(ValueError, match=r"1 of another shape \['final_layer.linear.bias: ours \(16,\) vs NVIDIA "
                                         r"\(17,\)'\]"):
        nvb.nvidia_state_dict(ours, Network(wider))


def test_strict_load_into_a_network_with_their_extra_buffer(nvb):
    """torch's strict load (not a lenient override) into a module with our keys and NVIDIA's `pos_embed`."""
    torch.manual_seed(0)
    ours = SanaWM.from_preset("tiny")
    torch.manual_seed(1)
    target = SanaWM.from_preset("tiny")
    target.register_buffer("pos_embed", torch.full((1, 484, 224), 3.0))
    target.load_state_dict = None  # a lenient override like NVIDIA's must not be what loads
    nvb.load_into_nvidia(ours, target)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in ours.state_dict().items())
    assert torch.equal(target.pos_embed, torch.full((1, 484, 224), 3.0))


def _cls(name, module, bases=(), **methods):
    return type(name, bases, {"__module__": module, **{m: (lambda self: None) for m in methods}})


def _layout(gdn, softmax, depth=20):
    return types.SimpleNamespace(blocks=[types.SimpleNamespace(attn=(softmax if (i + 1) % 4 == 0 else gdn)())
                                         for i in range(depth)])


def test_downscale_mode_read_from_their_camera_classes(nvb):
    """Class hierarchies shaped like NVIDIA's: at 40151c8 the PyTorch camera class inherits the downscale helper from a
    'PostUCPERenorm' parent, the fused class overrides the camera branch in sana_gdn_blocks_triton, the softmax class
    derives from the PyTorch one; from 3f7bc74 on, no class has the helper."""
    cfg = PRESETS["sana_wm_1600m_720p"]
    renorm = _cls("BidirectionalGDNUCPELiteLAPostUCPERenorm", CAM, (), _downscale_to_reference_rms=1,
                  _forward_cam_branch=1)
    torch_gdn = _cls("BidirectionalGDNUCPESinglePathLiteLA", CAM, (renorm,), _forward_cam_branch=1)
    fused = _cls("BidirectionalGDNUCPESinglePathLiteLABothTriton", TRITON, (torch_gdn,), _forward_cam_branch=1)
    softmax = _cls("_SoftmaxUCPESinglePathLiteLA", CAM, (torch_gdn,))
    assert nvb.nvidia_downscale_mode(_layout(fused, softmax), cfg) == "softmax"  # as configured at 40151c8
    assert nvb.nvidia_downscale_mode(_layout(torch_gdn, softmax), cfg) == "all"  # their PyTorch classes only
    torch_gdn2 = _cls("BidirectionalGDNUCPESinglePathLiteLA", CAM, (), _forward_cam_branch=1)
    fused2 = _cls("BidirectionalGDNUCPESinglePathLiteLABothTriton", TRITON, (torch_gdn2,), _forward_cam_branch=1)
    softmax2 = _cls("_SoftmaxUCPESinglePathLiteLA", CAM, (torch_gdn2,))
    assert nvb.nvidia_downscale_mode(_layout(fused2, softmax2), cfg) == "none"  # 3f7bc74 on
    with pytest.raises(ValueError, match=r"downscales the camera branch in blocks \[0, 1, 2, 4, 5, 6, 8, 9, 10, 12, "
                                         r"13, 14, 16, 17, 18\], which no camera_rms_downscale mode"):
        nvb.nvidia_downscale_mode(_layout(torch_gdn, fused), cfg)


def test_inputs_of_a_moving_camera_at_any_grid(bench_module):
    """dit_step.make_inputs, which both benches feed both networks: shapes, the clean first frame, the text mask and
    intrinsics of 1000 px at 1280 wide scaled to the grid (latent units)."""
    dit = bench_module("dit_step.py")
    inp = dit.make_inputs(2, 3, torch.float32, hw=(4, 6), text=32, in_channels=16, caption_channels=32,
                          device="cpu")
    assert {k: tuple(v.shape) for k, v in inp.items()} == {
        "x": (2, 16, 3, 4, 6), "t": (2, 1, 3), "y": (2, 1, 32, 32), "mask": (2, 32), "cc": (2, 3, 20),
        "pl": (2, 48, 3, 4, 6)}
    assert inp["t"][0, 0].tolist() == [0.0, 812.0, 812.0] and inp["mask"].sum(1).tolist() == [31, 31]
    assert torch.equal(inp["cc"][0, :, 16:], torch.tensor([[4.6875, 4.6875, 3.0, 2.0]] * 3))
    assert inp["cc"][0, -1, [3, 7, 11]].abs().sum() > 0.5  # the camera has moved by the last latent frame
    full = dit.make_inputs(1, 2, device="cpu")
    assert full["cc"][0, 0, 16:].tolist() == [31.25, 31.25, 20.0, 11.0] and full["mask"].sum().item() == 120


def test_differences_and_training_flags(nvb):
    d = nvb.difference(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert d == {"rel_l2": pytest.approx(2 / 2**0.5), "max_abs": 2.0}
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for m, g in ((a, 1.0), (b, 3.0)):
        m.weight.grad, m.bias.grad = torch.full((1, 2), g), torch.full((1,), g)
    g = nvb.grad_difference(a, nvb.host_grads(b))
    assert (g["rel_l2"], g["max_abs"], g["only_ours"], g["only_nvidia"]) == (pytest.approx(2 / 3), 2.0, [], [])
    # weight: |d|² = 8 of 12 in all, |g_ref| = √18, |g_ours| = √2; bias: 4 of 12
    assert [(w["name"], w["share"], w["rel_l2"], w["norm_ours"], w["norm_nvidia"]) for w in g["worst"]] == [
        ("weight", pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2**0.5), pytest.approx(18**0.5)),
        ("bias", pytest.approx(1 / 3), pytest.approx(2 / 3), pytest.approx(1.0), pytest.approx(3.0))]
    # our blocks run checkpoint-wrapped: their parameters carry the wrapper's token and still match NVIDIA's names
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    ours, theirs = torch.nn.Sequential(checkpoint_wrapper(a)), torch.nn.Sequential(b)
    assert [n for n, _ in ours.named_parameters()] == ["0._checkpoint_wrapped_module.weight",
                                                      "0._checkpoint_wrapped_module.bias"]
    gw = nvb.grad_difference(ours, nvb.host_grads(theirs))
    assert (gw["rel_l2"], gw["only_ours"], [w["name"] for w in gw["worst"]]) == (
        pytest.approx(2 / 3), [], ["0.weight", "0.bias"])
    b.bias.grad = None  # a gradient on our side only: named, and left out of the difference
    g = nvb.grad_difference(a, nvb.host_grads(b))
    assert (g["rel_l2"], g["only_ours"], g["only_nvidia"], len(g["worst"])) == (pytest.approx(2 / 3), ["bias"], [], 1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[0].use_autograd_kernel = False
    net[1].uncond_prob = 0.1  # NVIDIA's caption embedder drops captions in training mode: held at 0, then restored
    nvb.set_nvidia_training(net, True)
    assert net.training and net[0].use_autograd_kernel and all(m.grad_checkpointing for m in net.modules())
    assert net[1].uncond_prob == 0.0
    nvb.set_nvidia_training(net, False)
    assert not net.training and not net[0].use_autograd_kernel and not net[1].grad_checkpointing
    assert net[1].uncond_prob == 0.1 and not hasattr(net[1], "_bench_uncond_prob")


def test_a_step_without_some_gradients_is_named_and_gets_no_speed_up(nvb, tmp_path):
    """NVIDIA's Triton GDN at 40151c8 writes its output outside autograd: the parameters before it get no gradient.
    `grad_difference` names them (gradient in ours only) and the bench computes no speed-up against such a step."""

    class NoBackward(torch.nn.Module):  # a kernel launch into a fresh tensor: no graph through it
        def __init__(self, detach: bool):
            super().__init__()
            self.qkv, self.proj, self.detach = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), detach

        def forward(self, x):
            h = self.qkv(x)
            return self.proj(h.detach() if self.detach else h)

    ours, theirs = NoBackward(False), NoBackward(True)
    theirs.load_state_dict(ours.state_dict())
    for m in (ours, theirs):
        m(torch.ones(1, 2)).sum().backward()
    g = nvb.grad_difference(ours, nvb.host_grads(theirs))
    assert (g["only_ours"], g["only_nvidia"], g["rel_l2"]) == (["qkv.bias", "qkv.weight"], [], 0.0)

    model = torch.nn.Module()
    model.config, model.blocks = PRESETS["tiny"], torch.nn.ModuleList()
    run = nvb.Run(nvb.parse_args(["--out", str(tmp_path / "nv.json")]), model, torch.nn.Linear(1, 1), {})
    run.record("train21", "nvidia", 1, 21, 100.0, 0.0)
    assert run.record("train21", "ours (full AC)", 1, 21, 50.0, 0.0, nvidia_no_grad=0)["speedup"] == 2.0
    row = run.record("train21", "ours (ffn AC)", 1, 21, 50.0, 0.0, nvidia_no_grad=2)
    assert "speedup" not in row and row["nvidia_no_grad"] == 2


def test_file_list_has_the_entry_files_and_marks_the_commit_specific_ones(nvb):
    files = nvb.nvidia_files()
    assert len(files) == 47 and set(nvb.ENTRY_FILES) <= {f for f, everywhere in files.items() if everywhere}
    assert sorted(f for f, everywhere in files.items() if not everywhere) == [
        "diffusion/distributed/context_parallel/config.py", "diffusion/model/ops/fused_gdn_chunkwise_cuda.py"]


def _tree(root: Path, names) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    return root


def test_subset_script_copies_exactly_the_list_from_a_checkout_or_a_commit(nvb, tmp_path):
    files = nvb.nvidia_files()
    required = [f for f, everywhere in files.items() if everywhere]
    src = _tree(tmp_path / "src", [*required, "diffusion/model/ops/fused_gdn_chunkwise_cuda.py", "README.md",
                                   "diffusion/__init__.py"])
    script = str(BENCH / "nvidia_subset.sh")
    run = subprocess.run(["bash", script, str(src), str(tmp_path / "dst")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    copied = sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*") if p.is_file())
    assert copied == sorted([*required, "diffusion/model/ops/fused_gdn_chunkwise_cuda.py"])
    assert (tmp_path / "dst/diffusion/model/act.py").read_text() == "# diffusion/model/act.py\n"
    # from a git directory at a commit
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "c"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    (src / "diffusion/model/act.py").write_text("changed after the commit\n")
    run = subprocess.run(["bash", script, f"{src / '.git'}@HEAD", str(tmp_path / "dst2")], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    copied2 = sorted(str(p.relative_to(tmp_path / "dst2")) for p in (tmp_path / "dst2").rglob("*") if p.is_file())
    assert copied2 == copied and (tmp_path / "dst2/diffusion/model/act.py").read_text() == "# diffusion/model/act.py\n"
    # a required file missing: named, non-zero exit
    (src / "diffusion/model/norms.py").unlink()
    run = subprocess.run(["bash", script, str(src), str(tmp_path / "dst3")], capture_output=True, text=True)
    assert run.returncode == 1 and f"error: {src} lacks diffusion/model/norms.py (" in run.stderr
