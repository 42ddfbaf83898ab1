"""Give freed heap memory back to the system.

glibc keeps memory a program freed in its heap for later allocations. Two things leave a
lot of it behind in this agent: bcc's LLVM compiler, whose working memory is freed once
the eBPF program is loaded, and bursts such as a backend outage's queued batches. Calling
glibc's ``malloc_trim`` after them returns those pages, so the resident memory is what
the agent holds, not what it once held.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

_libc: Any = None
_looked = False


def trim() -> bool:
    """Release free heap pages (glibc only); False where there is no malloc_trim."""
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
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True
