"""How busy other processes kept the machine during a measurement: all CPU time (/proc/stat)
less this benchmark's own (itself, its waited-for children, and live children by pid); and the
one way every benchmark here compares frameworks with it (``alternate`` and ``summarize``).

Why blocks and both orders: one framework's threads may still spin or be woken right after its
call (OpenBLAS and OpenMP spin for a while), and that lands inside the next framework's timing.
Several steps in a block make the hand-over a small part of each timing, and running the blocks
in both orders shows whether the ratio depends on who goes first (it should not)."""
from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")
# A repetition is quiet when other processes used at most this many cores during it.
QUIET_CORES = 0.3


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


@dataclass
class Repetition:
    """One block of steps of each contender: seconds per step, and the cores other processes
    used meanwhile."""
    seconds: dict = field(default_factory=dict)
    others: float = 0.0

    @property
    def quiet(self) -> bool:
        return self.others <= QUIET_CORES


def alternate(steps: dict, repeats: int, block: int = 3, warmup: int = 1) -> list[Repetition]:
    """``steps`` ({name: callable}) run in the dict's order, ``block`` calls of each in turn, for
    ``repeats`` repetitions; each repetition is measured with a CpuMeter."""
    for f in steps.values():
        for _ in range(warmup):
            f()
    reps = []
    for _ in range(repeats):
        rep = Repetition()
        with CpuMeter() as meter:
            for who, f in steps.items():
                start = time.perf_counter()
                for _ in range(block):
                    f()
                rep.seconds[who] = (time.perf_counter() - start) / block
        rep.others = meter.others
        reps.append(rep)
    return reps


def _median_rate(reps, who, records):
    return round(records / statistics.median(r.seconds[who] for r in reps), 1) if reps else None


def summarize(reps: list[Repetition], records: int, subject: str, reference: str) -> dict:
    """Medians over all repetitions and over the quiet ones apart: records/s of each contender,
    ``subject``/``reference`` ratios (of the median times, and the median of per-repetition
    ratios, which pairs each block with its neighbour in time), and how many were quiet."""
    quiet = [r for r in reps if r.quiet]
    out = {"repetitions": len(reps), "quiet_repetitions": len(quiet),
           "others_cores_median": round(statistics.median(r.others for r in reps), 2)}
    for label, subset in (("all", reps), ("quiet", quiet)):
        if not subset:
            out[label] = None
            continue
        res = {who: _median_rate(subset, who, records) for who in subset[0].seconds}
        res["ratio"] = round(res[subject] / res[reference], 3)
        res["paired_ratio"] = round(statistics.median(r.seconds[reference] / r.seconds[subject] for r in subset), 3)
        out[label] = res
    return out


def describe(summary: dict, subject: str, reference: str) -> str:
    """One line: all repetitions, then the quiet ones (or that there were none)."""
    a = summary["all"]
    line = (f"{subject} {a[subject]:8.1f} rec/s  {reference} {a[reference]:8.1f} rec/s  ratio {a['ratio']:.2f} "
            f"(paired {a['paired_ratio']:.2f}; others used {summary['others_cores_median']:.2f} cores)")
    q = summary["quiet"]
    if q is None:
        return line + f"; quiet 0/{summary['repetitions']}"
    return line + (f"; quiet {summary['quiet_repetitions']}/{summary['repetitions']}: ratio {q['ratio']:.2f} "
                   f"({subject} {q[subject]:.1f}, {reference} {q[reference]:.1f} rec/s)")
