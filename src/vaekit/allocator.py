"""The C allocator under PyTorch's CPU tensors: keep freed memory for the next step instead of returning it.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults a training step's large
activations (a convolutional VAE's 6 MB feature maps at batch 256) are freed at the step's end and the top of the
heap is handed back to the kernel (``M_TRIM_THRESHOLD``, and ``M_MMAP_THRESHOLD`` for blocks served by ``mmap``), so
the next step takes every page of them again as a fresh page fault, zero-filled by the kernel. On the default
convolutional model for Fashion-MNIST that was about a third of a step (``benchmarks/speed.py --parts conv``).

``tune_allocator`` raises the two thresholds once per process (``mallopt``): blocks up to 32 MB (glibc's largest
mmap threshold) come from the heap, and up to 512 MB of free memory at its top is kept for reuse. A process's peak
memory is unchanged; what it frees stays mapped (up to those 512 MB) until it exits or allocates again.
``VAEModel`` calls it when a model is built (training, loading a run, exporting: every command that computes). It
does nothing off glibc (macOS, Windows, musl), when the environment already sets glibc's malloc options
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES`` with ``glibc.malloc``), or with
``VAEKIT_ALLOCATOR=system``, which leaves the C library as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 512 << 20
# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_state: str | None = None  # what the first call decided: "tuned" or why not


def tune_allocator() -> str:
    """Raise glibc's trim and mmap thresholds once per process (see the module's docstring); returns "tuned" or
    the reason it left the allocator alone. Later calls return the first call's answer."""
    global _state
    if _state is None:
        _state = _tune()
    return _state


def glibc_mallopt():
    """glibc's ``mallopt`` through ctypes, or None off glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such function)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _tune() -> str:
    if os.environ.get("VAEKIT_ALLOCATOR", "").strip().lower() == "system":
        return "VAEKIT_ALLOCATOR=system"
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "malloc options set in the environment"
    mallopt = glibc_mallopt()
    if mallopt is None:
        return f"not glibc ({sys.platform})"
    # mallopt returns 1 on success. The mmap threshold first: setting any threshold fixes the others at their
    # current values instead of glibc's adaptive ones.
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "mallopt refused the thresholds"
    return "tuned"
