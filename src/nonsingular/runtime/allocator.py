"""Keep the C heap from holding memory that the bound engine has freed (glibc on Linux).

CROWN sizes its chunks so that the coefficient tensors it holds stay within `--bound-memory-mb`, but each chunk's
tensors have a different size (the rows of unstable entries differ per node and per example), and glibc's
malloc keeps freed blocks of up to 32 MiB in its heap once it has raised its mmap threshold dynamically: the
heap fragments and the process's resident memory grows far beyond what is live (a SmallCNN, 10 examples, weight
threat: 3.3 GB peak RSS under a 256 MiB budget; BENCHMARKS.md). A fixed mmap threshold turns the dynamic
adjustment off: every block above it is mapped on allocation and returned to the system when freed.

The CLI applies this at start (`nonsingular certify`, `radius`, ...); a library user who wants it calls
`limit_heap_retention()` once. It changes a process-wide allocator setting, which is why the library never
calls it on its own. An explicit `MALLOC_MMAP_THRESHOLD_` in the environment is left to glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["DEFAULT_MMAP_THRESHOLD", "limit_heap_retention"]

logger = logging.getLogger(__name__)

#: Blocks above this many bytes are mapped and unmapped by the kernel rather than kept in the heap. 1 MiB: a
#: fresh mapping costs page faults per use, which a block of that size amortises over its own work, while the
#: small blocks of Python and of per-node bookkeeping stay in the heap (BENCHMARKS.md measures the choice).
DEFAULT_MMAP_THRESHOLD = 1 << 20

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def limit_heap_retention(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes (see the module docstring).

    Returns:
        Whether the setting was applied: False off glibc (macOS, Windows, musl), when the environment already
        sets MALLOC_MMAP_THRESHOLD_ (the user's choice wins), or when mallopt refuses the value.

    Raises:
        ValueError: threshold is not positive (glibc caps it at 32 MiB on 64-bit systems and refuses more).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be a positive number of bytes, got {threshold}")
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl's mallopt does nothing useful)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not applied:
        logger.debug("mallopt refused M_MMAP_THRESHOLD=%d", threshold)
    return applied
