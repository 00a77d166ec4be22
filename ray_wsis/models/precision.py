"""Where and in which number format a network runs: device, precision, memory layout.

``auto`` picks bfloat16 where the hardware computes it natively (CUDA; CPUs with AVX-512 BF16 or
AMX) and float32 elsewhere. Reduced precision is autocast: weights stay float32, convolutions
and matrix products run in the low-precision type, and every output a stage keeps is cast back
to float32 before any math of method/ touches it. docs/performance.md has the measurements that
made bfloat16 the default.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal, TypeVar

import torch

Precision = Literal["auto", "float32", "bfloat16", "float16"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_for(use_gpu: bool) -> torch.device:
    """CUDA when asked for and one is visible, else the CPU (never ``.cuda()``)."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX), not by emulation."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    cpu = getattr(torch._C, "_cpu", None)
    if cpu is not None and any(getattr(cpu, name, lambda: False)() for name in probes):
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype of ``precision`` on ``device`` (``auto`` decided here)."""
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())
        return torch.bfloat16 if native else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of auto, {', '.join(_DTYPES)}; got {precision!r}")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


ModelT = TypeVar("ModelT", bound=torch.nn.Module)


def for_inference(model: ModelT, device: torch.device) -> ModelT:
    """The model on its device, in eval mode, with channels-last weights (NHWC convolutions)."""
    return model.to(device).eval().to(memory_format=torch.channels_last)
