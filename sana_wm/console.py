"""What the entry points (train.py, infer.py, `python -m sana_wm.demo`) print: third-party start-up warnings that
say nothing about the run are dropped, and Lightning's lines are printed once.

Each dropped message is matched by its logger and its text, so the same logger's other warnings still show:

* torchao's wheel ships CUDA-only extensions; on a machine without a CUDA GPU they cannot load, and torchao logs each
  failure ("Failed to load …_C_cutlass_90a.abi3.so") and the missing Triton as warnings. transformers and diffusers
  import torchao whenever it is installed (`make venv` installs it for the float8 tests), so every CPU run printed
  them. With a CUDA GPU these lines are real problems and are kept.
* torchao registers two Enums as pytree constants, which torch now reports as deprecated, on every import.
* diffusers warns that it cannot import torchao tensor classes that torchao 0.18 no longer has; they matter only for
  checkpoints serialised with torchao's quantised tensors, which this framework never writes or reads (FP8 converts
  layers after loading, sana_wm/fp8.py).
* DeepSpeed warns that it falls back to its CPU accelerator; without a CUDA GPU that is the only one there is.
* Lightning calls a torch pytree API that torch deprecated; nothing a user can act on.

Lightning puts its own console handler on the ``lightning`` logger and still lets records reach the root logger;
once Hydra (or `logging.basicConfig`) has given the root logger handlers, every Lightning line appeared twice. With
the root configured, Lightning's own console handler is removed, so its lines go through the root's handlers (the
console and Hydra's log file) once.
"""

from __future__ import annotations

import logging
import sys
import warnings

# (logger, text in the message, dropped only without a CUDA GPU)
_NOISE: tuple[tuple[str, str, bool], ...] = (
    ("torchao", "Failed to load ", True),
    ("torchao.kernel.intmm", "Detected no triton", True),
    ("DeepSpeed", "Setting accelerator to CPU", True),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported", False),
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects", False),
)
_LIGHTNING_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_third_party(cuda_available: bool | None = None) -> None:
    """Drop the start-up warnings listed in the module docstring (idempotent). Call it in an entry point once logging
    is configured and before transformers, diffusers or DeepSpeed are imported; Lightning's duplicate lines are fixed
    only if Lightning is imported by then and the root logger has handlers.

    Args:
        cuda_available: whether this process can use a CUDA GPU; None asks torch.
    """
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    for name, text, cpu_only in _NOISE:
        if cpu_only and cuda_available:
            continue
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(_DropMessage(text))
    warnings.filterwarnings("ignore", message=_LIGHTNING_DEPRECATION)
    if logging.getLogger().handlers and "lightning" in sys.modules:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
