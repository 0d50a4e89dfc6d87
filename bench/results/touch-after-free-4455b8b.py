#!/usr/bin/env python3
"""Cost of first touch of guest memory: map N GiB, write one byte a page, time it; unmap; then
again at once (pages just freed, not yet reported to the host), and again after a pause long
enough for free page reporting (2 s delay) to hand them back to the host."""

import mmap
import sys
import time

GIB = int(sys.argv[1]) if len(sys.argv) > 1 else 4


def touch():
    m = mmap.mmap(-1, GIB << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    t = time.perf_counter()
    for off in range(0, GIB << 30, 4096):
        m[off] = 1
    dt = time.perf_counter() - t
    m.close()
    return dt / ((GIB << 30) // 4096) * 1e6


print(f"first       {touch():.2f} us/page")
print(f"again now   {touch():.2f} us/page")
time.sleep(10)
print(f"after 10 s  {touch():.2f} us/page")
print(f"again now   {touch():.2f} us/page")
time.sleep(10)
print(f"after 10 s  {touch():.2f} us/page")
