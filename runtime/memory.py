"""How much memory this process can still take, checked BEFORE a large allocation: a hostile or
mistaken file (``num_output: 2147483648``, a shape of 10^10) is refused with its size in GB instead
of a MemoryError, or of pages that the kernel's OOM killer collects later.

The budget is the least of what the machine has free (MemAvailable), what the cgroup allows
(a container's memory.max less what it uses) and what the address-space limit leaves
(``ulimit -v``, RLIMIT_AS, less the address space in use).
"""
from __future__ import annotations

import resource
from pathlib import Path

from .errors import TooLarge

_CGROUP = Path("/sys/fs/cgroup")


def _meminfo(key: str) -> int | None:
    """A /proc/meminfo-style field in bytes, or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_left() -> int | None:
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft


def available() -> int | None:
    """Bytes this process can still allocate, or None where nothing says (not Linux)."""
    known = [v for v in (_meminfo("MemAvailable"), _cgroup_left(), _address_space_left()) if v is not None]
    return max(0, min(known)) if known else None


def gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:,.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e9:.3f} GB"


def check(nbytes: int, what: str) -> None:
    """Raises TooLarge, saying ``what`` needs ``nbytes``, when that is more than is available."""
    left = available()
    if left is not None and nbytes > left:
        raise TooLarge(f"{what} needs {gb(nbytes)} of memory, but only {gb(left)} is available")
