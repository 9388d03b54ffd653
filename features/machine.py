"""What the machine offers a process (shared by the training budget and local Spark)."""

from __future__ import annotations

import os


def machine_memory_bytes() -> int | None:
    """Physical memory, or the cgroup (v2) memory limit where it is lower.

    Returns
    -------
    int or None
        Bytes; None where neither can be read.
    """
    try:
        total: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw.isdigit():
            total = min(int(raw), total) if total else int(raw)
    except OSError:
        pass
    return total
