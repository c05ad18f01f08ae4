"""Returning freed heap memory to the operating system between large, short-lived allocations.

glibc serves an allocation below its (dynamic) mmap threshold from a heap, and after large blocks are
freed that threshold rises (up to 32 MiB), so the many 4-32 MiB arrays of a ranking pass land on heaps
and their pages stay resident after they are freed: the process's RSS grows with every pass although
its live memory does not. `release_free_memory` asks glibc to hand those pages back (`malloc_trim(0)`,
which since glibc 2.8 releases free pages in the middle of every arena too). A no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> None:
    """Give the pages of freed heap memory back to the OS (glibc; elsewhere nothing happens)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
