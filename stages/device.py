"""The device a stage runs on, its dtype, and the names a manifest records for it: torch only, never
transformers, so a stage that runs torch without a model (fit-router) starts without importing it."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from . import distributed


def default_device() -> torch.device:
    """This process's device under a launcher, else CUDA when available, else the CPU."""
    return distributed.device() or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU's model as the kernel names it (platform.processor() is often empty or only the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32
