"""Training through Spark against local training on the same cores, interleaved in one run.

    python benchmarks/spark_training.py [--exchange relay|driver|socket] [--repeats 5] [--json out.json]

Spark runs on local[2]: two barrier tasks of one core each (spark.task.cpus=1), each computing its
half of every global batch and combining gradients through the chosen exchange. Local training
runs the same model, batch and data in this process on 2 threads. Each repetition trains K
iterations each way (one Spark stage per repetition; its start-up is not an iteration and is
reported apart). Records/s are global-batch records over the median iteration time; a Spark
iteration's time is split into compute (forward, backward and update on the slowest task), data
(its samples to arrays), exchange (the collectives as that task saw them) and overhead (the
driver's round trips and the rest).

For each repetition the CPU time that other processes used is read from /proc/stat less this
process tree's own (the JVM and the Python workers are its children): repetitions where others
used <= 0.3 cores are reported apart as quiet. Targets (the VGG-style CNN at batch 64): Spark >=
0.9x local records/s; exchange + overhead <= 15% of an iteration.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("KINDLING_NUM_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402

from kindling.runtime import blas, nn  # noqa: E402
from kindling.runtime.data import ArrayDataSet  # noqa: E402
from kindling.runtime.optim import SGD, Optimizer, Trigger  # noqa: E402

WORKLOADS = {"lenet": (_models.lenet, (1, 28, 28)), "vgg_cnn": (_models.vgg_cnn, (3, 32, 32))}
BATCH = 64
QUIET = 0.3  # cores used by other processes, at most, for a quiet repetition


# ---- CPU used by others -----------------------------------------------------------------------
def _tree_ticks(root: int) -> int:
    """utime + stime of ``root`` and all its descendants (clock ticks), children reaped included."""
    parents, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    mine, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in mine]
        mine.update(kids)
        frontier += kids
    return sum(ticks.get(p, 0) for p in mine)


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


class OthersMeter:
    def __enter__(self):
        self.t, self.busy, self.own = time.monotonic(), _busy_ticks(), _tree_ticks(os.getpid())
        return self

    def __exit__(self, *exc):
        hz = os.sysconf("SC_CLK_TCK")
        seconds = time.monotonic() - self.t
        others = (_busy_ticks() - self.busy) - (_tree_ticks(os.getpid()) - self.own)
        self.cores = max(0.0, others / hz / max(seconds, 1e-9))


# ---- the two ways to train --------------------------------------------------------------------
def spark_run(spark, build, df, iterations, exchange, shape):
    from kindling.runtime.spark import DistriOptimizer
    opt = DistriOptimizer(build(), df, nn.ClassNLLCriterion(), SGD(learningrate=0.01), Trigger.max_iteration(iterations),
                          BATCH, feature_shape=shape, exchange=exchange, num_tasks=2)
    start = time.perf_counter()
    opt.optimize()
    total = time.perf_counter() - start
    steps = opt.history[1:]  # the first iteration warms caches and buffers
    return {"seconds": [h["seconds"] for h in steps], "parts": [h["parts"] for h in steps],
            "startup": total - sum(h["seconds"] for h in opt.history)}


def local_run(build, data, iterations):
    opt = Optimizer(build(), data, nn.ClassNLLCriterion(), SGD(learningrate=0.01), Trigger.max_iteration(iterations),
                    BATCH, workers=2)
    opt.optimize()
    return {"seconds": [h["seconds"] for h in opt.history[1:]]}


def summarize(reps):
    sp = [s for r in reps for s in r["spark"]["seconds"]]
    lo = [s for r in reps for s in r["local"]["seconds"]]
    parts = [p for r in reps for p in r["spark"]["parts"]]
    it = statistics.median(sp)
    split = {k: statistics.median(p[k] for p in parts) for k in ("compute", "data", "exchange", "overhead")}
    out = {"spark_rps": round(BATCH / it, 1), "local_rps": round(BATCH / statistics.median(lo), 1),
           "split_seconds": {k: round(v, 4) for k, v in split.items()},
           "exchange_plus_overhead": round((split["exchange"] + split["overhead"]) / sum(split.values()), 3),
           "startup_s": round(statistics.median(r["spark"]["startup"] for r in reps), 2),
           "others_cores": [round(r["others"], 2) for r in reps], "repetitions": len(reps)}
    out["ratio"] = round(out["spark_rps"] / out["local_rps"], 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exchange", default="relay", choices=["relay", "driver", "socket"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=8, help="per repetition and way")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    logging.getLogger("kindling").setLevel(logging.WARNING)
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").appName("kindling-benchmark")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.task.cpus", "1").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    blas.set_threads(2)
    info = blas.describe()
    print(f"kindling BLAS {info['backend']} (kernel {info['openblas_kernel']}); Spark local[2], 2 tasks x 1 core, "
          f"exchange={args.exchange}; local training on 2 threads; batch {BATCH}", flush=True)
    report = {"exchange": args.exchange, "batch": BATCH}
    rng = np.random.default_rng(0)
    try:
        for name, (build, shape) in WORKLOADS.items():
            n = BATCH * args.iterations
            x = rng.standard_normal((n, *shape)).astype(np.float32)
            y = rng.integers(0, 10, n)
            df = spark.createDataFrame([(xi.ravel().tolist(), int(yi)) for xi, yi in zip(x, y)],
                                       "features array<float>, label int").repartition(2).cache()
            df.count()
            data = ArrayDataSet(x, y)
            reps = []
            for _ in range(args.repeats):
                with OthersMeter() as meter:
                    rep = {"spark": spark_run(spark, build, df, args.iterations, args.exchange, shape),
                           "local": local_run(build, data, args.iterations)}
                rep["others"] = meter.cores
                reps.append(rep)
                print(f"  {name}: repetition {len(reps)}: others used {meter.cores:.2f} cores", flush=True)
            df.unpersist()
            result = {"all": summarize(reps)}
            quiet = [r for r in reps if r["others"] <= QUIET]
            result["quiet"] = summarize(quiet) if quiet else None
            report[name] = result
            for label, r in (("all", result["all"]), ("quiet", result["quiet"])):
                if r is None:
                    print(f"{name:8s} [{label}] no quiet repetition (others > {QUIET} cores throughout)")
                    continue
                s = r["split_seconds"]
                target = " (targets: ratio >= 0.9, exchange+overhead <= 0.15)" if name == "vgg_cnn" else ""
                print(f"{name:8s} [{label}: {r['repetitions']} reps] Spark {r['spark_rps']} rec/s, local {r['local_rps']} "
                      f"rec/s -> ratio {r['ratio']:.2f}; iteration: compute {s['compute']:.3f} s, data {s['data']:.3f} s, "
                      f"exchange {s['exchange']:.3f} s, overhead {s['overhead']:.3f} s -> exchange+overhead "
                      f"{r['exchange_plus_overhead']:.1%}{target}; stage start-up {r['startup_s']} s", flush=True)
    finally:
        spark.stop()
    if args.json:
        tmp = f"{args.json}.tmp"
        Path(tmp).write_text(json.dumps(report, indent=2))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
