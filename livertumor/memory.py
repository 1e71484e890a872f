"""Allocator setting for processes that run the networks on the CPU.

PyTorch frees and allocates every activation anew at each layer. glibc's malloc hands blocks of more than
a few MB straight back to the kernel and maps fresh pages for the next one, so a CPU forward of the
paper's network (64x256x256, ~1M page faults) spends about 40% of its time in the kernel: 3.5 s against
2.0 s with freed memory kept for reuse (benchmarks/inference.py, 2 cores).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Largest value mallopt's int argument takes: blocks below 2 GB come from the reusable heap.
_MMAP_LIMIT = 2**31 - 1
#: mallopt's documented value for "never trim the heap".
_NEVER = -1


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the kernel.

    The process then holds on to its peak memory until it exits, so this is for the ``livertumor``
    command's own processes, never for a host application such as Slicer. Returns whether the setting
    took (False where the C library is not glibc).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
