"""sana_wm.console: the entry points' third-party start-up noise is dropped by logger and text, nothing else is."""

import logging
import warnings

import pytest

from sana_wm.console import _NOISE, _DropMessage, quiet_third_party


@pytest.fixture
def clean_loggers():
    """Start without the filters that an entry point run earlier in this process (infer.main, the demo) installed;
    put everything back afterwards."""
    names = [name for name, _, _ in _NOISE] + ["lightning"]
    saved = {n: (list(logging.getLogger(n).filters), list(logging.getLogger(n).handlers)) for n in names}
    for n in names:
        lg = logging.getLogger(n)
        lg.filters[:] = [f for f in lg.filters if not isinstance(f, _DropMessage)]
    with warnings.catch_warnings():
        yield
    for n, (filters, handlers) in saved.items():
        lg = logging.getLogger(n)
        lg.filters[:] = filters
        lg.handlers[:] = handlers


def _passes(name: str, message: str) -> bool:
    lg = logging.getLogger(name)
    return bool(lg.filter(lg.makeRecord(name, logging.WARNING, __file__, 0, message, None, None)))


def test_cpu_drops_exactly_the_listed_messages(clean_loggers):
    quiet_third_party(cuda_available=False)
    quiet_third_party(cuda_available=False)  # idempotent: one filter per message
    assert len(logging.getLogger("torchao").filters) == 1
    assert not _passes("torchao", "Failed to load /x/torchao/_C_cutlass_90a.abi3.so: Could not load this library")
    assert not _passes("torchao.kernel.intmm", "Warning: Detected no triton, on systems without Triton ...")
    assert not _passes("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, ...")
    assert not _passes("torch.utils._pytree", "<enum 'KernelPreference'> is an Enum subclass and is now natively "
                       "supported by torch.compile as an opaque value type.")
    assert not _passes("diffusers.quantizers.torchao.torchao_quantizer",
                       "Unable to import `torchao` Tensor objects. This may affect loading checkpoints")
    # the same loggers' other warnings still show
    assert _passes("torchao", "Skipping import of cpp extensions due to incompatible torch version.")
    assert _passes("DeepSpeed", "Setting ds_accelerator to cuda (auto detect)")
    assert _passes("torch.utils._pytree", "some other pytree warning")


def test_gpu_keeps_extension_failures(clean_loggers):
    quiet_third_party(cuda_available=True)
    assert _passes("torchao", "Failed to load /x/torchao/_C_cutlass_90a.abi3.so: Could not load this library")
    assert _passes("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, ...")
    assert not _passes("torch.utils._pytree", "<enum 'X'> is an Enum subclass and is now natively supported")


def test_lightning_lines_printed_once_under_a_configured_root(clean_loggers):
    import lightning  # noqa: F401

    lg = logging.getLogger("lightning")
    own = [h for h in lg.handlers if type(h) is logging.StreamHandler]
    if not own:  # another test removed it already; put one back as Lightning's import does
        lg.addHandler(logging.StreamHandler())
    root = logging.getLogger()
    added = logging.NullHandler()
    root.addHandler(added)
    try:
        quiet_third_party(cuda_available=False)
    finally:
        root.removeHandler(added)
    assert [h for h in lg.handlers if type(h) is logging.StreamHandler] == []
