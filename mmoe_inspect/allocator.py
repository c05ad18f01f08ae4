"""Opt-in: keep glibc from handing a recording pass's freed temporaries back to the OS between batches.

glibc's malloc serves a block above its mmap threshold with a fresh `mmap` and returns it at `free`,
and trims the top of a heap once more than its trim threshold is free there. Both thresholds move
with the program (the mmap threshold rises to the largest block freed, up to 32 MiB, and the trim
threshold with it), and the recording pass of a large model frees and re-allocates tens of MiB of
temporaries a batch (stacked expert outputs, float64 gate matrices, the statistics' scratch): glibc
gives their pages back and the next batch faults them in again. Measured on an MMoE with 8 experts
[256, 128] and batches of 4,096 rows: ~2,400 minor page faults a batch and ~3 ms of system time in the
benchmarks' harness (recording steps alternating with plain forwards), 340-820 a batch in a real
`inspect()` of a parquet file; tuned, 0-40 and ~300 (`bench/results/allocator_session13.md`).

`tune_allocator()` fixes both thresholds high enough that such temporaries stay in the heap
(`mallopt(M_MMAP_THRESHOLD)` and `mallopt(M_TRIM_THRESHOLD)`; either alone is worse than neither:
setting one freezes the other at its current value). It is process-wide and cannot be undone, so
the library never calls it on its own: the `mmoe-inspect` command calls it once at its start (it owns
its process), and a Python caller may opt in. `MMOE_INSPECT_ALLOCATOR=system` in the environment
turns it off, and so does the user's own malloc setting (`GLIBC_TUNABLES` with `glibc.malloc.*`,
`MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_`, or jemalloc/tcmalloc/mimalloc in `LD_PRELOAD`).
Elsewhere than glibc (macOS, Windows, musl) it does nothing. It never raises.

The freed memory is not lost: `mmoe_inspect._memory.release_free_memory` (`malloc_trim(0)`, called
between the stages of an inspection) still hands it back explicitly.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from dataclasses import dataclass

__all__ = ["ENV_VAR", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "AllocatorTuning", "tune_allocator"]

ENV_VAR = "MMOE_INSPECT_ALLOCATOR"
"""Set to ``system`` to leave the allocator as it is (the CLI then does not tune it)."""

MMAP_THRESHOLD = 32 * 2**20
"""Bytes: blocks up to this size come from a heap, not from a fresh `mmap` each time. The top of glibc's
own dynamic range, and the largest value every 64-bit glibc accepts (HEAP_MAX_SIZE / 2 on older ones)."""

TRIM_THRESHOLD = 256 * 2**20
"""Bytes: free memory at the top of a heap kept for reuse before glibc trims it (its dynamic value stops
at 2 x 32 MiB, below what a batch of the big bench model frees and allocates again)."""

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_OTHER_MALLOCS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class AllocatorTuning:
    """What `tune_allocator` did. `applied`: the thresholds are set in this process (bytes in
    `mmap_threshold` / `trim_threshold`, None where not set); `reason`: one line saying what was done,
    or why nothing was."""

    applied: bool
    reason: str
    mmap_threshold: int | None = None
    trim_threshold: int | None = None


_lock = threading.Lock()
_done: AllocatorTuning | None = None


def _skip_reason() -> str | None:
    choice = os.environ.get(ENV_VAR, "").strip().lower()
    if choice == "system":
        return f"{ENV_VAR}=system: the allocator is left as it is"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets malloc parameters: the allocator is left as the user set it"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in os.environ:
            return f"{name} is set: the allocator is left as the user set it"
    preload = os.environ.get("LD_PRELOAD", "").lower()
    other = next((m for m in _OTHER_MALLOCS if m in preload), None)
    if other is not None:
        return f"{other} is preloaded: glibc's malloc is not the one in use"
    if not sys.platform.startswith("linux"):
        return f"not glibc ({sys.platform}): nothing to tune"
    try:
        libc, _ = platform.libc_ver()
    except (OSError, ValueError):
        libc = ""
    if libc != "glibc":
        return f"not glibc ({libc or 'unknown C library'}): nothing to tune"
    return None


def _tune() -> AllocatorTuning:
    reason = _skip_reason()
    if reason is not None:
        return AllocatorTuning(False, reason)
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return AllocatorTuning(False, "mallopt is not available: nothing was changed")
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: a trim threshold set alone would freeze it at its default (128 KiB)
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:  # refused: both thresholds stay dynamic
        return AllocatorTuning(False, "glibc refused M_MMAP_THRESHOLD: nothing was changed")
    done = f"glibc malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB"
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return AllocatorTuning(True, f"{done}; glibc refused M_TRIM_THRESHOLD", MMAP_THRESHOLD)
    return AllocatorTuning(
        True, f"{done}, trim threshold {TRIM_THRESHOLD >> 20} MiB", MMAP_THRESHOLD, TRIM_THRESHOLD
    )


def tune_allocator() -> AllocatorTuning:
    """Fix glibc's mmap and trim thresholds for this whole process, once (see the module's docstring).

    Process-wide and permanent: call it at the start of a program that runs inspections, before the
    large allocations. A second call returns the first call's result once the thresholds are set;
    while they are not (opted out, not glibc), each call looks at the environment again. Never raises.
    """
    global _done
    with _lock:
        if _done is not None:
            return _done
        try:
            result = _tune()
        except Exception as exc:  # never fail the caller over a performance setting
            result = AllocatorTuning(False, f"not tuned: {type(exc).__name__}: {exc}")
        if result.applied:
            _done = result
        return result
