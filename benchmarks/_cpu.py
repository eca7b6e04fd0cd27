"""How busy other processes kept the machine during a measurement: all CPU time (/proc/stat)
less this benchmark's own (itself, its waited-for children, and live children by pid)."""
from __future__ import annotations

import os
import resource
import time

TICK = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle and iowait


def _pid_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / TICK  # utime + stime


def _own_seconds(live: tuple[int, ...]) -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + sum(_pid_seconds(p) for p in live)


class CpuMeter:
    """``with CpuMeter(live_pids) as m: ...`` then ``m.others`` (cores other processes used),
    ``m.ours`` (cores this benchmark used) and ``m.server_seconds`` (CPU seconds of the live pids). Live children (a server) are counted by pid; children
    that exit inside the block must be waited for inside it."""

    def __init__(self, live: tuple[int, ...] = ()):
        self.live = tuple(live)

    def __enter__(self):
        self._t, self._busy, self._own = time.monotonic(), _busy_ticks(), _own_seconds(self.live)
        self._live = sum(_pid_seconds(p) for p in self.live)
        return self

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self._t, 1e-9)
        busy = (_busy_ticks() - self._busy) / TICK
        own = _own_seconds(self.live) - self._own
        self.wall = wall
        self.ours = own / wall
        self.others = max(0.0, busy - own) / wall
        self.server_seconds = sum(_pid_seconds(p) for p in self.live) - self._live  # the live children alone
        return False
