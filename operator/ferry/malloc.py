"""Give the C allocator's free memory back to the system now and then (glibc's `malloc_trim`).

Python objects larger than 512 bytes, and what C libraries allocate, come from the C library's malloc, and
glibc's returns freed memory to the system only from the top of a heap. The operator parses a watch event for
every change of every task, Deployment and pod, keeps a small part of each and drops the rest, so its heaps fill
with free holes: at 1,000 tasks about 21 MB, which one `malloc_trim(0)` (about 3 ms) gave back. Without glibc
(musl has no `malloc_trim`) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
TRIM_INTERVAL = 60.0  # seconds between trims
_started: list[threading.Thread] = []  # one trimming thread per process


def trimmer() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None when the process's C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs with
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def start_trimming(interval: float = TRIM_INTERVAL) -> threading.Thread | None:
    """Trim every `interval` seconds in a daemon thread (ctypes releases the GIL during the call); once per
    process, however often it is called."""
    trim = trimmer()
    if trim is None or interval <= 0:
        return None
    if _started:
        return _started[0]

    def run() -> None:
        while True:
            time.sleep(interval)
            trim(0)

    thread = threading.Thread(target=run, name="ferry-malloc-trim", daemon=True)
    thread.start()
    _started.append(thread)
    log.debug("trimming the C allocator's free memory every %ss", interval)
    return thread
