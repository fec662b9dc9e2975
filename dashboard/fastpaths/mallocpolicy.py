"""glibc's malloc gives what a burst freed back to the system: a fixed trim threshold.

glibc raises its trim threshold (and mmap threshold) each time a process
frees a large block, up to 32 MB on 64-bit, and keeps freed memory below it.
A server whose sockets subscribe to thousands of keys makes such bursts (a
10,000-key `subscribed` answer is ~1 MB, with the replay's maps beside it),
and afterwards kept about 70 B per held key of memory it no longer used:
bench/connmem.py --keys 10000 measured 118 B of RSS per held key with the
default, 55 B with the threshold fixed at 128 KB (bench/README.md, Memory
per connection). `mallopt(M_TRIM_THRESHOLD, 128 KB)` (with the mmap threshold
put back to 128 KB) is what `MALLOC_TRIM_THRESHOLD_=131072` does from the
environment, but the
environment of every way the server starts (`manage.py serve`, daphne,
systemd) is not ours to set. Only glibc has it: elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform

from dashboard import fastpaths

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, no longer raised by frees
# Blocks this big get their own mapping, returned whole when freed. Also glibc's starting value; set
# again because start-up's frees (Django, migrations) have raised it by the time this runs, and a
# 1 MB answer then lands in the heap and fragments it (RSS per held key 90-104 B instead of 54 B).
MMAP_THRESHOLD_BYTES = 128 * 1024


def is_glibc() -> str | None:
    """Return why the policy cannot apply here (not glibc), or None (the fast-path guard's check)."""
    if platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        return "glibc has no mallopt"
    return None


def configure() -> bool:
    """Fix glibc's trim threshold for this process; return whether it was set."""
    if not fastpaths.enabled("malloc_trim"):
        return False  # glibc's dynamic threshold: memory freed after big subscribes stays with the process
    libc = ctypes.CDLL(None)
    for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        if libc.mallopt(param, value) != 1:
            fastpaths.disable("malloc_trim", RuntimeError(f"mallopt({param}, {value}) refused"))
            return False
    return True
