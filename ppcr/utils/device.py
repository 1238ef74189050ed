"""Turn the user's ``--device`` / ``--dtype`` words into torch objects, or a one-line error.

Resolving up front (before any weights are read) means a bad combination — CUDA asked for on a
machine without it, fp16 on the CPU — fails in a second with a clear message instead of deep
inside a kernel after the model has been loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppcr.config.schema import DtypeName, choices
from ppcr.errors import PPCRError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = choices(DtypeName)
_DTYPE_ALIASES = {
    "auto": "auto",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
}


def resolve_device(name: "str | torch.device" = "auto") -> "torch.device":
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    word = str(name).strip().lower()
    if word == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if word == "cpu":
        return torch.device("cpu")
    if word == "cuda" or word.startswith("cuda:"):
        index_text = word.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise PPCRError(f"invalid device {name!r}", hint="use cuda or cuda:N with N a GPU number")
        if not torch.cuda.is_available():
            raise PPCRError(
                f"device {name!r} was requested but CUDA is not available",
                hint="use --device cpu (or auto), or install a CUDA build of torch",
            )
        if index_text and int(index_text) >= torch.cuda.device_count():
            raise PPCRError(
                f"device {name!r} was requested but only {torch.cuda.device_count()} GPU(s) are visible",
                hint="pick cuda:0 … cuda:{} or check CUDA_VISIBLE_DEVICES".format(torch.cuda.device_count() - 1),
            )
        return torch.device(word)
    raise PPCRError(f"unknown device {name!r}", hint=f"valid: {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def resolve_dtype(name: str, device: "torch.device") -> "torch.dtype":
    """``fp32`` / ``bf16`` / ``fp16`` as a torch dtype that ``device`` can actually run; ``auto``:
    :func:`preferred_dtype` (bf16 on a GPU that has it, else fp32)."""
    import torch

    key = _DTYPE_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise PPCRError(f"unknown dtype {name!r}", hint=f"valid: {', '.join(DTYPE_CHOICES)}")
    if key == "auto":
        return preferred_dtype(device)
    if key == "fp16" and device.type == "cpu":
        raise PPCRError(
            "fp16 is not supported on the CPU (many CPU kernels lack half precision)",
            hint="use --dtype fp32 or bf16 on the CPU, or --device cuda",
        )
    if key == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PPCRError(
            f"this GPU ({torch.cuda.get_device_name(device)}) does not support bf16",
            hint="use --dtype fp16 or fp32",
        )
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[key]


def preferred_dtype(device: "torch.device") -> "torch.dtype":
    """The dtype to run in when the user did not choose one: bf16 on a CUDA GPU that supports it
    (the paper's inference precision, half the memory), else fp32 (CPU kernels are fastest and
    exact in fp32; older GPUs lack bf16)."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
