"""BigDL 2.4's local optimizer on the training workloads of benchmarks/runtime.py (LeNet and the
VGG-style CNN at batch 64, ResNet-18 at batch 16), for the issue's "training >= 3x BigDL" target.

BigDL pins an old Spark and numpy < 2, so it runs in a virtualenv of its own, outside the repo:

    python3 -m venv /tmp/bigdl && /tmp/bigdl/bin/pip install bigdl-dllib-spark3==2.4.0 'numpy<2'
    /tmp/bigdl/bin/python benchmarks/bigdl_local.py [--repeats 5] [--only lenet,vgg_cnn,resnet18] [--heap 3g]

(bigdl-dllib 2.4.0 itself pins pyspark 2.4.6, whose source package no longer builds; the spark3
build pins pyspark 3.1.3, which runs on this Java 17 with the --add-opens options below.) Run
benchmarks/runtime.py beside it for kindling's and PyTorch's figures on the same workloads.

Each repetition trains ``1`` and then ``1 + block`` more iterations through one optimizer's
``optimize`` (its end trigger moved on) and takes the difference, so the per-call set-up drops out;
the cores other processes used meanwhile come from benchmarks/_cpu.py.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cpu  # noqa: E402

_OPENS = ["java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
          "java.util.concurrent", "java.util.concurrent.atomic", "sun.nio.ch", "sun.nio.cs", "sun.security.action",
          "sun.util.calendar"]


def _context(threads: int, heap: str):
    import bigdl
    share = Path(bigdl.__file__).resolve().parent / "share"
    jars = sorted(glob.glob(str(share / "*" / "lib" / "*.jar")))
    opens = " ".join(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in _OPENS)
    os.environ["PYSPARK_SUBMIT_ARGS"] = (f'--driver-memory {heap} --driver-java-options "{opens}" --driver-class-path {":".join(jars)} '
                                         f'--jars {",".join(jars)} pyspark-shell')
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from bigdl.dllib.nncontext import init_nncontext
    from pyspark import SparkConf
    conf = (SparkConf().setMaster(f"local[{threads}]").set("spark.driver.host", "127.0.0.1")
            .set("spark.driver.bindAddress", "127.0.0.1").set("spark.ui.enabled", "false")
            .set("spark.driver.memory", heap))
    return init_nncontext(conf, spark_log_level="ERROR", redirect_spark_log=False)


def lenet(L):
    return (L.Sequential().add(L.SpatialConvolution(1, 20, 5, 5)).add(L.SpatialMaxPooling(2, 2, 2, 2))
            .add(L.SpatialConvolution(20, 50, 5, 5)).add(L.SpatialMaxPooling(2, 2, 2, 2)).add(L.Reshape([800]))
            .add(L.Linear(800, 500)).add(L.ReLU()).add(L.Linear(500, 10)).add(L.LogSoftMax()))


def vgg_cnn(L):
    m, c = L.Sequential(), 3
    for v in [64, 64, "P", 128, 128, "P", 256, 256, "P"]:
        if v == "P":
            m.add(L.SpatialMaxPooling(2, 2, 2, 2))
        else:
            m.add(L.SpatialConvolution(c, v, 3, 3, 1, 1, 1, 1)).add(L.ReLU())
            c = v
    return (m.add(L.Reshape([256 * 4 * 4])).add(L.Linear(256 * 4 * 4, 512)).add(L.ReLU()).add(L.Linear(512, 10))
            .add(L.LogSoftMax()))


def _basic_block(L, cin, cout, stride):
    body = (L.Sequential().add(L.SpatialConvolution(cin, cout, 3, 3, stride, stride, 1, 1, with_bias=False))
            .add(L.SpatialBatchNormalization(cout)).add(L.ReLU())
            .add(L.SpatialConvolution(cout, cout, 3, 3, 1, 1, 1, 1, with_bias=False))
            .add(L.SpatialBatchNormalization(cout)))
    if stride != 1 or cin != cout:
        short = (L.Sequential().add(L.SpatialConvolution(cin, cout, 1, 1, stride, stride, with_bias=False))
                 .add(L.SpatialBatchNormalization(cout)))
    else:
        short = L.Identity()
    return L.Sequential().add(L.ConcatTable().add(body).add(short)).add(L.CAddTable()).add(L.ReLU())


def resnet18(L):
    m = (L.Sequential().add(L.SpatialConvolution(3, 64, 7, 7, 2, 2, 3, 3, with_bias=False))
         .add(L.SpatialBatchNormalization(64)).add(L.ReLU()).add(L.SpatialMaxPooling(3, 3, 2, 2, 1, 1)))
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for b in range(2):
            m.add(_basic_block(L, cin, cout, 2 if stage > 1 and b == 0 else 1))
            cin = cout
    return (m.add(L.SpatialAveragePooling(7, 7, 1, 1)).add(L.Reshape([512])).add(L.Linear(512, 1000))
            .add(L.LogSoftMax()))


WORKLOADS = {"lenet": (lenet, (1, 28, 28), 64, 3), "vgg_cnn": (vgg_cnn, (3, 32, 32), 64, 3),
             "resnet18": (resnet18, (3, 224, 224), 16, 2)}


def measure(name, repeats):
    import numpy as np
    from bigdl.dllib.nn import layer as L
    from bigdl.dllib.nn.criterion import ClassNLLCriterion
    from bigdl.dllib.optim.optimizer import SGD, MaxIteration, Optimizer
    build, shape, batch, block = WORKLOADS[name]
    rng = np.random.default_rng(0)
    n = batch * 8
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(1, 11, n).astype(np.float32)  # BigDL's labels start at 1
    model = build(L)
    # one optimizer, its end moved on: a fresh one per call leaked the model clones' buffers
    # (Java heap exhausted on the VGG-style CNN after a few calls, even at 3 GB)
    opt = Optimizer.create(model=model, training_set=(x, y), criterion=ClassNLLCriterion(),
                           optim_method=SGD(learningrate=0.01), end_trigger=MaxIteration(1), batch_size=batch)
    done = 0

    def train(k):
        nonlocal done
        done += k
        opt.set_end_when(MaxIteration(done))
        opt.optimize()

    train(2)  # warm up
    reps = []
    for _ in range(repeats):
        rep = _cpu.Repetition()
        with _cpu.CpuMeter() as meter:
            t = time.perf_counter()
            train(1)
            one = time.perf_counter() - t
            t = time.perf_counter()
            train(1 + block)
            rep.seconds["bigdl"] = max(time.perf_counter() - t - one, 1e-9) / block
        rep.others = meter.others
        reps.append(rep)
    quiet = [r for r in reps if r.quiet]
    rate = lambda rs: round(batch / statistics.median(r.seconds["bigdl"] for r in rs), 1) if rs else None  # noqa: E731
    return {"batch": batch, "records_per_s": rate(reps), "quiet_records_per_s": rate(quiet),
            "quiet_repetitions": len(quiet), "repetitions": len(reps),
            "others_cores_median": round(statistics.median(r.others for r in reps), 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("KINDLING_NUM_THREADS", "2")))
    ap.add_argument("--only", help="comma-separated workloads")
    ap.add_argument("--heap", default="3g", help="the JVM's heap (ResNet-18 at batch 16 ran out of 3g)")
    args = ap.parse_args(argv)
    os.chdir(tempfile.mkdtemp(prefix="bigdl-"))  # BigDL writes bigdl.log into the working folder
    _context(args.threads, args.heap)
    import bigdl
    print(f"BigDL {getattr(bigdl, '__version__', '2.4')} local optimizer, local[{args.threads}]", flush=True)
    for name in (args.only.split(",") if args.only else WORKLOADS):
        r = measure(name, args.repeats)
        quiet = (f"quiet {r['quiet_repetitions']}/{r['repetitions']}: {r['quiet_records_per_s']} rec/s"
                 if r["quiet_records_per_s"] else f"quiet 0/{r['repetitions']}")
        print(f"{name:9s} training at batch {r['batch']}: {r['records_per_s']} rec/s (others used "
              f"{r['others_cores_median']:.2f} cores); {quiet}", flush=True)


if __name__ == "__main__":
    main()
