"""Which device a command or a training run uses: one place that reads `--device` / the `device` setting."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """A device name ("auto", "cpu", "cuda", "cuda:N") to a torch.device; "auto" is CUDA when present, and a
    bare "cuda" under torchrun is the GPU of this rank's LOCAL_RANK.

    Raises:
        ValueError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name} asked for, but there are {torch.cuda.device_count()} CUDA devices")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    elif device.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device
