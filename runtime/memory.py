"""Keep the serving process's resident memory to what it uses: weight files paged out once repacked, and
glibc's heap kept from fragmenting across threads.

OpenVINO maps the weight files (the IR's `.bin`, or the compiled-model cache's `.blob`) and, on the first
inference of each model, the CPU plugin repacks most weights into its own buffers for its kernels. From then
on the mapped pages are not read again, yet they stay resident: the weights are held twice, ~1 GB for the int8
model. Advising the kernel to page them out (MADV_PAGEOUT, Linux 5.4+) drops clean file pages at once; a page
that is read later is read back from the file, so nothing can be lost, only re-read. The text-embedding table,
read a row per token, is left alone: a row paged out would be a disk read in the decode loop.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)
MADV_PAGEOUT = 21  # linux/mman.h
WEIGHT_SUFFIXES = (".bin", ".blob")


@functools.cache
def _libc():
    """The C library, or None where there is none to load (not Linux, or no C library found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _madvise():
    """libc's madvise, or None where there is none to call."""
    libc = _libc()
    if libc is None:
        return None
    fn = libc.madvise
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def mapped_files(folders: list[str], maps_path: str = "/proc/self/maps") -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's mappings of weight files that lie under one of folders."""
    roots = tuple(os.path.join(os.path.realpath(f), "") for f in folders if f)
    found = []
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) < 6:
                    continue
                path = parts[5].strip()
                if path.endswith(WEIGHT_SUFFIXES) and path.startswith(roots):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    found.append((start, end, path))
    except OSError:
        return []
    return found


def page_out_weight_files(folders: list[str], keep: frozenset[str] = frozenset()) -> int:
    """Ask the kernel to reclaim the resident pages of mapped weight files under folders, except the files in
    keep; returns the bytes advised (0 where the system cannot do it: the pages then simply stay)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    advised = 0
    for start, end, path in mapped_files(folders):
        if path in keep:
            continue
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
        else:  # EINVAL before Linux 5.4: nothing to do, the pages stay resident
            log.debug("madvise(MADV_PAGEOUT) on %s failed: %s", path, os.strerror(ctypes.get_errno()))
            return advised
    return advised


def tune_malloc() -> None:
    """Stop glibc's heap from growing with every worker thread: at most 2 malloc arenas, and blocks of 128 KiB
    or more (decoded images, tiles, activations) mapped and returned one by one instead of fragmenting the
    heap. On the soak (tests/load/soak.py, 3000 requests), with the engine's pool of infer requests, the
    server ends at about 340 MiB instead of 760.
    glibc's own MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ (environment or .env) replace these values;
    nothing happens where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return
    for env, option, value in (("MALLOC_ARENA_MAX", -8, 2), ("MALLOC_MMAP_THRESHOLD_", -3, 128 * 1024)):
        raw = os.environ.get(env, "").strip()
        mallopt(option, int(raw) if raw.isdigit() else value)  # M_ARENA_MAX = -8, M_MMAP_THRESHOLD = -3
