"""Device choice (auto = cuda > mps > cpu), autocast and out-of-memory detection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from napari_medsegdiff.errors import InputError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")


def available_devices() -> list[str]:
    """Device names usable on this machine, best first, always ending with 'cpu'."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def choose_device(name: str | torch.device = "auto") -> torch.device:
    """Resolve ``auto|cuda|mps|cpu`` (or ``cuda:1``) to a usable device, or raise InputError."""
    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise InputError(
            f"device: unknown device {name!r}; choose auto, cuda, mps or cpu", argument="device"
        )
    if kind != "cpu" and kind not in available_devices():
        raise InputError(
            f"device: {kind} is not available on this machine; use auto or cpu",
            argument="device",
        )
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (bf16 where supported); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (the caller halves its batch and retries)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@contextlib.contextmanager
def released_memory(device: torch.device) -> Iterator[None]:
    """Free cached accelerator memory after an OOM before retrying."""
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
