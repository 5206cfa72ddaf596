"""Keep the memory a CPU training step frees, so that the next step reuses it.

glibc's malloc hands every block larger than its mmap threshold (at most 32 MB by default) to
the kernel on `free`, and maps fresh pages for the next request. A training step allocates and
frees blocks of that size every time: the logits over a 13 317-token vocabulary for a batch of
8 × 150 tokens are 64 MB, and so are their softmax and gradient. Each fresh page costs a page
fault and the kernel zeroing it: on the 2-layer model of bench/bench_train.py that was a third
of the step's time (2 M page faults in 40 steps). Raising the thresholds keeps those blocks in
the heap, so a process's memory stays at its peak instead of going up and down every step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from, and go back to, the heap


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks up to 1 GiB for reuse; True when it took effect.

    Process-wide and lasting, as `torch.set_num_threads` is. Does nothing (False) outside Linux
    with glibc (musl, macOS and Windows allocators keep their own policies).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW))
