"""The gradient exchange inside a real Spark barrier stage on local[2]: SocketExchange (TCP between
the tasks) against DriverExchange (BarrierTaskContext.allGather through the driver), interleaved.

    python benchmarks/spark_exchange.py [--repeats 5] [--vgg16-repeats 3] [--workloads ...] [--json out.json]

One exchange is what an iteration of synchronous training does: reduce_scatter of the gradients,
the owner's update of its shard, all_gather of the parameters (the update itself is not timed).
For LeNet-, VGG-style- and VGG16-size vectors (and two scalars, the latency floor), 2 tasks each
holding parameters and gradients, it prints seconds per exchange (the median over repetitions of
each repetition's mean: a repetition repeats a fast exchange for at least half a second), the
ratio, GB/s (model bytes per second), and the medians of single reduce_scatter and all_gather
calls. Each repetition records the CPU that processes outside this benchmark (this script,
its JVM, the Python workers) used meanwhile; repetitions where they used <= 0.3 cores are
"quiet" and get their own medians.

Peak RSS: for the VGG16 size, each method also runs once in a fresh Spark session of its own
(a child process), so nothing left by the other method counts: the peak RSS of each task and
of the driver (its JVM, which in local mode is the executor too, and its Python), relative to
the model's size (target <= 3x each).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # before the JVM starts: all traffic on loopback

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
QUIET_CORES = 0.3
MIN_WINDOW = 0.5  # seconds: a repetition of a fast exchange loops at least this long
TARGET_RSS_RATIO = 3.0


# ---- the machine ----------------------------------------------------------------------------------
def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, utime + stime ticks, command name) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        rest = text.rsplit(")", 1)[1].split()
        out[int(entry)] = (int(rest[1]), int(rest[11]) + int(rest[12]), name)
    return out


def _tree(root: int, procs) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


class CpuWindow:
    """CPU used by processes outside the tree of ``root`` (this benchmark) between start and stop."""

    def __init__(self, root: int):
        self.root = root

    def _sample(self):
        procs = _processes()
        ours = sum(procs[p][1] for p in _tree(self.root, procs) if p in procs)
        return time.monotonic(), _busy_ticks(), ours

    def start(self):
        self._first = self._sample()

    def others_cores(self) -> float:
        (t0, busy0, ours0), (t1, busy1, ours1) = self._first, self._sample()
        ticks = os.sysconf("SC_CLK_TCK") * max(t1 - t0, 1e-9)
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / ticks


def _status_mb(pid: int | str, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak(pid: int | str = "self") -> None:
    """VmHWM starts again from the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def _jvm_of(driver_pid: int) -> int:
    procs = _processes()
    return next(p for p in _tree(driver_pid, procs) if procs[p][2] == "java")


# ---- the Spark side -----------------------------------------------------------------------------
def spark_session(app: str):
    from pyspark import cloudpickle
    from pyspark.sql import SparkSession
    if __name__ != "__main__":  # imported: the workers cannot import benchmarks/, ship the code by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    session = (SparkSession.builder.master("local[2]").appName(app)
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    return session


def _exchanges(context):
    from kindling.runtime.spark.allreduce import SocketExchange
    from kindling.runtime.spark.exchange import DriverExchange
    return {"socket": SocketExchange.from_barrier(context, timeout=900), "driver": DriverExchange.from_barrier(context)}


def _one_exchange(ex, grads, params, lr=0.01) -> tuple[float, float]:
    """An iteration's exchange: (reduce_scatter seconds, all_gather seconds); the update between is not timed."""
    lo, hi = ex.shard(params.size)
    t0 = time.perf_counter()
    shard = ex.reduce_scatter(grads)
    t1 = time.perf_counter()
    shard *= -lr / ex.world
    params[lo:hi] += shard
    t2 = time.perf_counter()
    ex.all_gather(params)
    return t1 - t0, time.perf_counter() - t2


def _all_sum(ex, v: np.ndarray) -> np.ndarray:
    """The sum of ``v`` over the tasks, on every task."""
    total = np.zeros_like(v)
    lo, hi = ex.shard(v.size)
    total[lo:hi] = ex.reduce_scatter(v)
    ex.all_gather(total)
    return total


def timing_task(n: int, repeats: int, driver_pid: int, warm_driver: bool):
    """The barrier task of one size: both exchanges, interleaved, ``repeats`` windows each."""
    def run(_):
        from pyspark import BarrierTaskContext
        context = BarrierTaskContext.get()
        rank = context.partitionId()
        exchanges = _exchanges(context)
        sockets = exchanges["socket"]

        def sync():  # every task at the same point; Spark's barrier() would cost a second
            sockets.reduce_scatter(np.empty(0, np.float32))

        grads = np.random.default_rng(rank).standard_normal(n, dtype=np.float32)
        params = np.zeros(n, np.float32)
        # Warm up (page faults, buffers); then agree on how many exchanges a window of each takes.
        warm = np.zeros(2 * sockets.world, np.float32)
        for i, method in enumerate(("socket", "driver")):
            if method == "socket" or warm_driver:
                sync()
                warm[2 * rank + i] = sum(_one_exchange(exchanges[method], grads, params))
        warm = _all_sum(sockets, warm)
        loops = {"socket": max(1, math.ceil(MIN_WINDOW / max(float(warm[0::2].max()), 1e-6))), "driver": 1}
        window = CpuWindow(driver_pid)
        rows = []
        for rep in range(repeats):
            order = ("socket", "driver") if rep % 2 == 0 else ("driver", "socket")
            for method in order:
                row = {"rank": rank, "rep": rep, "method": method, "loops": loops[method]}
                try:
                    sync()
                    window.start()
                    parts = [_one_exchange(exchanges[method], grads, params) for _ in range(loops[method])]
                    row["seconds"] = statistics.fmean(rs + ag for rs, ag in parts)
                    row["reduce_scatter"] = statistics.median(p[0] for p in parts)
                    row["all_gather"] = statistics.median(p[1] for p in parts)
                    row["others_cores"] = window.others_cores()
                except Exception as e:  # noqa: BLE001 - reported (e.g. the driver's RPC limits)
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
        sockets.close()
        return rows
    return run


def memory_task(n: int, method: str, driver_pid: int):
    """One exchange by ``method`` in a fresh session: peak RSS of this task and of the driver."""
    def run(_):
        from pyspark import BarrierTaskContext
        context = BarrierTaskContext.get()
        rank = context.partitionId()
        _reset_peak()
        exchanges = _exchanges(context)
        grads = np.random.default_rng(rank).standard_normal(n, dtype=np.float32)
        params = np.zeros(n, np.float32)
        row = {"rank": rank, "method": method}
        try:
            row["seconds"] = sum(_one_exchange(exchanges[method], grads, params))
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"
        row["task_peak_mb"] = _status_mb("self", "VmHWM")
        if rank == 0:
            row["jvm_peak_mb"] = _status_mb(_jvm_of(driver_pid), "VmHWM")
            row["driver_python_peak_mb"] = _status_mb(driver_pid, "VmHWM")
        exchanges["socket"].close()
        return [row]
    return run


def run_barrier(session, fn):
    return session.sparkContext.parallelize(range(2), 2).barrier().mapPartitions(fn).collect()


# ---- the workloads ----------------------------------------------------------------------------------
def parameter_count(builder: str) -> int:
    """Counted in a child process, so the driver never holds a 550 MB VGG16."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import _models; "
            f"print(sum(p.size for _, p, _ in _models.{builder}().named_parameters()))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


WORKLOADS = {"scalars": lambda: 2, "lenet": lambda: parameter_count("lenet"),
             "vgg_cnn": lambda: parameter_count("vgg_cnn"), "vgg16": lambda: parameter_count("vgg16")}


def summarize(rows, n: int) -> dict:
    mb = 4 * n / 1e6
    out = {"n": n, "model_mb": round(mb, 2)}
    for method in ("socket", "driver"):
        mine = [r for r in rows if r["method"] == method]
        errors = sorted({r["error"] for r in mine if "error" in r})
        if errors:
            out[method] = {"error": errors[0]}
            continue
        reps = {}
        for r in mine:  # a repetition lasts as long as its slowest task; others' CPU is rank 0's view
            rep = reps.setdefault(r["rep"], {"seconds": 0.0, "others_cores": 0.0})
            rep["seconds"] = max(rep["seconds"], r["seconds"])
            if r["rank"] == 0:
                rep["others_cores"] = r["others_cores"]
        seconds = [v["seconds"] for v in reps.values()]
        quiet = [v["seconds"] for v in reps.values() if v["others_cores"] <= QUIET_CORES]
        med = statistics.median(seconds)
        out[method] = {
            "seconds": med, "gb_per_s": mb / 1e3 / med, "repetitions": len(seconds),
            "loops_per_repetition": mine[0]["loops"],
            "reduce_scatter": statistics.median(r["reduce_scatter"] for r in mine),
            "all_gather": statistics.median(r["all_gather"] for r in mine),
            "others_cores": [round(v["others_cores"], 2) for v in reps.values()],
            "quiet_repetitions": len(quiet), "quiet_seconds": statistics.median(quiet) if quiet else None}
    if "seconds" in out["socket"] and "seconds" in out["driver"]:
        out["ratio"] = out["driver"]["seconds"] / out["socket"]["seconds"]
        if out["socket"]["quiet_seconds"] and out["driver"]["quiet_seconds"]:
            out["quiet_ratio"] = out["driver"]["quiet_seconds"] / out["socket"]["quiet_seconds"]
    return out


def _line(name: str, s: dict) -> str:
    def one(label, m):
        if "error" in m:
            return f"{label} FAILED: {m['error'][:300]}"
        q = (f", quiet {m['quiet_seconds']:.4g} s over {m['quiet_repetitions']}/{m['repetitions']}"
             if m["quiet_repetitions"] else f", no quiet repetition of {m['repetitions']}")
        return (f"{label} {m['seconds']:.4g} s ({m['gb_per_s']:.3g} GB/s; single calls' medians: reduce_scatter "
                f"{m['reduce_scatter']:.3g} s + all_gather {m['all_gather']:.3g} s{q}; others' cores {m['others_cores']})")
    ratio = f"\n    -> SocketExchange {s['ratio']:.1f}x faster" if "ratio" in s else ""
    if "quiet_ratio" in s:
        ratio += f" (quiet repetitions: {s['quiet_ratio']:.1f}x)"
    return (f"{name} ({s['n']:,} floats, {s['model_mb']:.4g} MB):\n    {one('SocketExchange', s['socket'])}\n"
            f"    {one('DriverExchange', s['driver'])}{ratio}")


def measure_memory(n: int, method: str) -> dict:
    """Runs this script with --memory in a child process: a fresh JVM and fresh workers."""
    out = subprocess.run([sys.executable, __file__, "--memory", method, "--n", str(n)], capture_output=True,
                         text=True, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    line = next((x for x in out.stdout.splitlines() if x.startswith("MEMORY ")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout)[-2000:]}
    return json.loads(line[len("MEMORY "):])


def _memory_child(method: str, n: int) -> None:
    session = spark_session(f"kindling-exchange-memory-{method}")
    try:
        rows = run_barrier(session, memory_task(n, method, os.getpid()))
    finally:
        session.stop()
    head = next(r for r in rows if r["rank"] == 0)
    result = {"task_peak_mb": max(r["task_peak_mb"] for r in rows), "jvm_peak_mb": head["jvm_peak_mb"],
              "driver_python_peak_mb": head["driver_python_peak_mb"],
              "seconds": max(r.get("seconds", float("nan")) for r in rows)}
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        result["error"] = errors[0]
    print("MEMORY " + json.dumps(result), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per method (small sizes)")
    ap.add_argument("--vgg16-repeats", type=int, default=3,
                    help="for the VGG16 size (DriverExchange takes about two minutes per exchange there)")
    ap.add_argument("--workloads", default="scalars,lenet,vgg_cnn,vgg16",
                    help="comma-separated subset of scalars,lenet,vgg_cnn,vgg16 (the memory runs need vgg16)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--memory", choices=("socket", "driver"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory:
        return _memory_child(args.memory, args.n)

    chosen = args.workloads.split(",")
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}; choose from {list(WORKLOADS)}")
    sizes = {name: WORKLOADS[name]() for name in WORKLOADS if name in chosen}
    report = {"sizes": sizes}
    session = spark_session("kindling-exchange-benchmark")
    try:
        for name, n in sizes.items():
            repeats = args.vgg16_repeats if name == "vgg16" else args.repeats
            started = time.monotonic()
            rows = run_barrier(session, timing_task(n, repeats, os.getpid(), warm_driver=n < 50e6))
            s = report[name] = summarize(rows, n)
            print(_line(name, s) + f"\n    ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        session.stop()

    if "vgg16" not in sizes:
        return _write(report, args.json)
    n = sizes["vgg16"]
    model_mb = 4 * n / 2**20
    print(f"peak RSS, one VGG16-size exchange in a fresh session (model {model_mb:.0f} MiB; target <= "
          f"{TARGET_RSS_RATIO:g}x each; a task holds the parameters and the gradients):", flush=True)
    for method, label in (("socket", "SocketExchange"), ("driver", "DriverExchange")):
        m = report[f"memory_{method}"] = measure_memory(n, method)
        if "task_peak_mb" not in m:
            print(f"    {label}: FAILED: {m['error']}", flush=True)
            continue
        ratios = {k: m[k] / model_mb for k in ("task_peak_mb", "jvm_peak_mb", "driver_python_peak_mb")}
        m["ratios"] = ratios
        verdict = "met" if max(ratios.values()) <= TARGET_RSS_RATIO else "MISSED"
        failed = f"; the exchange FAILED: {m['error'][:300]}" if "error" in m else ""
        print(f"    {label}: task {m['task_peak_mb']:.0f} MiB ({ratios['task_peak_mb']:.2f}x), driver JVM (and "
              f"local executor) {m['jvm_peak_mb']:.0f} MiB ({ratios['jvm_peak_mb']:.2f}x), driver Python "
              f"{m['driver_python_peak_mb']:.0f} MiB ({ratios['driver_python_peak_mb']:.2f}x): target {verdict}"
              f"{failed}", flush=True)
    _write(report, args.json)


def _write(report: dict, path: str | None) -> None:
    if path:
        Path(f"{path}.tmp").write_text(json.dumps(report, indent=2))
        os.replace(f"{path}.tmp", path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
