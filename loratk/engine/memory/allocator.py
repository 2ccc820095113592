"""Keep glibc from holding on to large freed blocks.

glibc serves a large allocation with its own memory map and unmaps it when freed, but after the
first such free it raises that size threshold to the freed block's size, so later blocks of that
size come from the heap and stay in the process when freed. A step that allocates and frees many
blocks of tens of megabytes (``loratk merge`` upcasts one layer at a time to float64 for its check)
then keeps them all: 200 MB more resident memory for the embedded model. Fixing the threshold
returns every freed block of 1 MiB or more to the system at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter, glibc's malloc.h
THRESHOLD_BYTES = 1 << 20


def return_large_frees_to_os() -> bool:
    """Fix glibc's mmap threshold at 1 MiB; returns whether it applied (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl) has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
