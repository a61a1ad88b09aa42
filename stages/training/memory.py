"""A stage's peak memory: the accelerator's allocated peak (CUDA) and the process's resident high-water mark, both
reset when the stage begins, so that several stages in one process (the demo) each report their own."""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory() -> bool:
    """Start both peaks afresh; False when the resident peak cannot be reset here (not Linux, or not allowed)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR.write_text("5")  # resets VmHWM (Linux >= 4.0, proc(5))
    except OSError:
        return False
    return True


def peak_memory(rss_reset: bool) -> dict[str, int]:
    """``peak_gpu_bytes`` (CUDA) and ``peak_rss_bytes`` (only when ``rss_reset``: else it would be the process's
    peak since it started) since `reset_peak_memory`."""
    peaks = {"peak_gpu_bytes": torch.cuda.max_memory_allocated()} if torch.cuda.is_available() else {}
    if rss_reset:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks["peak_rss_bytes"] = int(line.split()[1]) * 1024
    return peaks
