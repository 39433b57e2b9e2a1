"""Keeping a long-running server's resident memory flat on glibc (Linux), where freed memory otherwise stays
with the process.

glibc gives each thread that contends for the allocator an arena of its own (up to eight per core) and returns
freed memory to the system only from the top of a heap. A server that runs PyTorch in a pool of worker threads,
as Gradio does, so keeps the high-water mark of every arena and fragments them, and its resident memory creeps
up with the requests it serves. :func:`limit_arenas` caps the arenas created from then on; :func:`unmap_above`
gives large blocks (tensors) mappings of their own, unmapped when freed; :func:`trim_every`
hands the free pages of every arena back to the system at a fixed period (``malloc_trim``). Each does nothing where
the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers in glibc's malloc.h
M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc (looked up once), or None on another C library (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
        return None
    libc.malloc_trim.argtypes, libc.mallopt.argtypes = [ctypes.c_size_t], [ctypes.c_int, ctypes.c_int]
    return libc


def limit_arenas(n: int) -> bool:
    """Let glibc create at most ``n`` malloc arenas from now on; True when it applied (glibc only)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, int(n)))


def unmap_above(nbytes: int) -> bool:
    """Serve every allocation of at least ``nbytes`` by its own mapping from now on, returned to the system as soon
    as it is freed (glibc otherwise raises this threshold as large blocks come and go, and keeps them in its heaps);
    True when it applied (glibc only). Same as starting the process with ``MALLOC_MMAP_THRESHOLD_=nbytes``."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))


def trim() -> bool:
    """Return the free memory of every arena to the system now; True when memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def trim_every(seconds: float) -> threading.Thread | None:
    """A daemon thread calling :func:`trim` every ``seconds``; None (nothing started) without glibc."""
    if _glibc() is None:
        return None

    def loop() -> None:
        while True:
            time.sleep(seconds)
            trim()

    thread = threading.Thread(target=loop, name="hpm-malloc-trim", daemon=True)
    thread.start()
    return thread
