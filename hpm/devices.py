"""Where computation runs: a module's device, an explicit choice over it, autocast for that device, and a
description of it for reports.

Every path that takes ``device=None`` follows the model it is given (its parameters' device), so that a
model on a GPU is never moved to, or fed from, the CPU behind the caller's back.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import HPMError

CPU = torch.device("cpu")  # where new networks, loaded weights and new tensors go when nothing says otherwise


def best_available() -> torch.device:
    """The first CUDA device when there is one, else the CPU (what the CLI and the app pick by default)."""
    return torch.device("cuda") if torch.cuda.is_available() else CPU


def require(device: torch.device) -> torch.device:
    """``device`` when this machine has it; otherwise :class:`HPMError` saying what is missing."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise HPMError(f"device {device}: PyTorch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                           f"{build}); use the CPU (--device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HPMError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                           f"numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise HPMError(f"device {device}: Apple's MPS backend is not available here; use the CPU (--device cpu)")
    return device


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module with neither."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else CPU


def resolve(device: torch.device | str | None, module: nn.Module) -> torch.device:
    """``device`` when given, else :func:`device_of` ``module``."""
    return torch.device(device) if device is not None else device_of(module)


def bf16_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bfloat16 autocast on ``device``'s own autocast backend (CPU or CUDA); off when ``enabled`` is False."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def set_tf32(enabled: bool) -> tuple[bool, bool]:
    """Allow or forbid TF32 (a 10-bit mantissa) in cuDNN convolutions and cuBLAS matrix products, process-wide;
    returns the previous ``(convolutions, matmuls)`` settings. PyTorch allows it in cuDNN by default on Ampere and
    later GPUs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    return saved


@contextmanager
def fp32_judging() -> Iterator[None]:
    """Plain IEEE float32 arithmetic while robustness is judged (no TF32; see :func:`set_tf32`); the caller's
    settings are restored afterwards. The settings are process-wide: threads that judge at the same time must
    all want float32 (the app sets it once for its whole process). A no-op on the CPU, which has no TF32."""
    saved = set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def describe(device: torch.device | str) -> dict:
    """The device an evaluation ran on, for its report: the device, and on CUDA the GPU's name, the CUDA and
    cuDNN versions and the determinism settings that affect per-sample outcomes."""
    device = torch.device(device)
    info: dict = {"device": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info |= {"gpu": torch.cuda.get_device_name(index), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(), "cudnn_deterministic": torch.backends.cudnn.deterministic,
                 "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return info
