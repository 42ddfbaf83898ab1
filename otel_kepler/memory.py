"""Give freed heap memory back to the system.

glibc keeps memory a program freed in its heap for later allocations. Two things leave a
lot of it behind in this agent: bcc's LLVM compiler, whose working memory is freed once
the eBPF program is loaded, and bursts such as a backend outage's queued batches. Calling
glibc's ``malloc_trim`` after them returns those pages, so the resident memory is what
the agent holds, not what it once held.

:func:`tune` also sets two of glibc's allocator options at start, unless the environment
sets them (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``): a fixed mmap threshold of
128 KiB, so that large short-lived buffers (a request body, its gzip) are mapped and
unmapped rather than left in the heap (glibc otherwise raises the threshold after the
first such buffer is freed), and at most two heap arenas, so that the exporter and
serving threads do not each keep a heap of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

_libc: Any = None
_looked = False

#: mallopt(3) parameters
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2


def tune() -> bool:
    """Set the allocator options above (glibc only); False where there is no mallopt."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, ARENA_MAX)
    return True


def trim() -> bool:
    """Release free heap pages (glibc only); False where there is no malloc_trim."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _glibc() -> Any:
    global _libc, _looked
    if not _looked:
        _looked = True
        try:
            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "malloc_trim"):
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                _libc = libc
        except OSError as err:
            log.debug("no malloc_trim: %s", err)
    return _libc
