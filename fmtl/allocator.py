"""glibc malloc tuning for CPU training: keep large freed blocks instead of unmapping them.

With glibc's defaults every allocation above the mmap threshold (adaptive, at most 32 MiB) is a
fresh ``mmap`` and its release a ``munmap``: the kernel zero-fills every page on first touch, so a
tensor of [T, B, D] temporaries in a vectorized backward (or a [T, P] task-gradient matrix)
costs page faults on every step. Turning mmap allocation off and raising the trim threshold lets
the heap keep and reuse those blocks. Measured effect: ``benchmarks/RESULTS.md``.

Two equivalent ways, both process-wide:

* at run time, :func:`tune` (``mallopt`` through ``ctypes``; affects allocations made after it);
* in the environment before Python starts: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``
  (:data:`ENV`).

Cost: memory the process freed stays mapped (its resident size stays at its peak).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV", "tune", "is_tuned"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int

ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD)}

_tuned = False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def is_tuned() -> bool:
    """Whether this process runs with the tuning (set by :func:`tune` or by :data:`ENV`).

    Example:
        >>> isinstance(is_tuned(), bool)
        True
    """
    return _tuned or os.environ.get("MALLOC_MMAP_MAX_") == "0"


def tune() -> bool:
    """Turns off mmap'd allocations and trimming in glibc malloc; ``True`` if it applied.

    A no-op returning ``False`` where there is no glibc ``mallopt`` (macOS, Windows, musl).
    Set ``FMTL_DEFAULT_MALLOC=1`` to keep the defaults (e.g. to compare).

    Example:
        >>> tune() in (True, False)
        True
    """
    global _tuned
    if os.environ.get("FMTL_DEFAULT_MALLOC") == "1":
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _tuned = _tuned or ok
    return ok
