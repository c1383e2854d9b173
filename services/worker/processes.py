"""Child processes of a worker (a trainer, a model service) that must not outlive it."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the kernel sends SIGKILL to the child when the worker dies (kill -9 included)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_DEATHSIG
