"""One device rule for every command: ``auto`` (a GPU when PyTorch sees one, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``; anything else, or a GPU that is not there, is a clear error."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name`` (see the module docstring); raises ``ValueError`` saying what to use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: PyTorch sees no GPU here (torch.cuda.is_available() is False); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} GPU(s), numbered from 0")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only auto, cpu, cuda and cuda:N are supported")
    return device


def computes_bf16_natively(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic in hardware (CPU: AVX512-BF16 or AMX; GPU: bf16 tensor cores),
    where bf16 autocast makes convolutions and matrix products faster; elsewhere it is emulated, and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type, or off (float32) where ``dtype`` is None: the one way training
    and evaluation set a run's precision (``TrainConfig.amp``)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
