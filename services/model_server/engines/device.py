"""Device and dtype choice, shared by the engines that run a model in-process."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 math (avx512_bf16 or AMX); else bf16 is emulated
    and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on GPUs and bf16-capable CPUs, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs this process's cgroup may use (``cpu.max``: quota / period), None without a
    limit. A container limited to 2 CPUs on a 64-core node still sees 64 cores."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def default_threads(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Threads for an engine given none: the cores this process may run on, capped by its
    cgroup's CPU quota (rounded down, at least 1), so that the CFS quota does not throttle
    threads that could never all run."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)
