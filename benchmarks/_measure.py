"""Measurement helpers shared by the benchmarks: device sync and peak-memory growth of a code span.

``PeakMemory(device)`` is taken right before the span and ``.growth_mib()`` read right after it: on CUDA the
allocator's peak above what was allocated at the start; on Linux the peak RSS (``VmHWM``, reset to the current
RSS through ``/proc/self/clear_refs``) above the RSS at the start; elsewhere the growth of ``ru_maxrss`` (a lower
bound: it never resets).
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vm_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory growth (MiB) of what runs between construction and :meth:`growth_mib`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base_ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self.base = vm_kib("VmRSS")
            except OSError:
                self.base = None

    def growth_mib(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        peak = vm_kib("VmHWM")
        if self.base is not None and peak is not None:
            return (peak - self.base) / 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base_ru) / 1024
