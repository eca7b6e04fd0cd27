"""Spark batch scoring against single-process batch inference on the same cores, interleaved.

    python benchmarks/scoring.py [--repeats 3] [--lenet-images 1797] [--resnet-images 96] [--json out.json]

For the real Caffe LeNet (scikit-learn's digits as 28x28 JPEGs) and a ResNet-18-size model (224x224
JPEG crops of the cat photo), each repetition times, one after the other:
  single  one process: Predictor.load, preprocess every file, forward in batches of 32 with
          kindling's 2 threads (what ``kindling run`` does), images/s
  spark   ``kindling.runtime.spark.predict`` over ``binary_files`` on local[2] (two Python workers
          of one thread each, spark.task.cpus=1), every row computed (Spark's "noop" sink), images/s
and their ratio. The session start, and the first job (Python workers starting, model loaded once
per worker), are reported apart. Each repetition records the CPU other processes used (all busy
time in /proc/stat less this process's and its descendants': the JVM and its Python workers);
repetitions where others used <= 0.3 cores are reported apart as quiet.

Target: spark >= 0.9x single for the ResNet-18-size model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
FIXTURES = HERE.parents[1] / "shared" / "fixtures"
QUIET = 0.3
TARGET = {"resnet18": 0.9}


def make_workloads(root: Path, lenet_images: int, resnet_images: int) -> dict[str, tuple[Path, Path]]:
    """{name: (model .kdl, folder of JPEGs)}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    import _models
    import kindling
    from kindling.converters import caffe
    lenet = caffe.convert(FIXTURES / "caffe/lenet_mnist/lenet.prototxt",
                          FIXTURES / "caffe/lenet_mnist/lenet_iter_10000.caffemodel", labels=[str(i) for i in range(10)],
                          preprocessing={"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]})
    digits = load_digits()
    (root / "digits").mkdir(parents=True)
    for i in range(lenet_images):
        img = digits.images[i % len(digits.images)]
        frame = Image.new("L", (28, 28))
        frame.paste(Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR), (4, 4))
        frame.save(root / "digits" / f"{i:05d}.jpg", quality=95)
    resnet = _models.resnet18()
    resnet.metadata = {"input_shape": [-1, 3, 224, 224], "labels": [f"class{i}" for i in range(1000)],
                       "preprocessing": {"input_size": [224, 224], "mean": [123.7, 116.3, 103.5],
                                         "std": [58.4, 57.1, 57.4]}}
    cat = Image.open(FIXTURES / "images/cat.jpg").convert("RGB")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    w, h = cat.size
    for i in range(resnet_images):
        left, top = int(rng.integers(0, w - 224)), int(rng.integers(0, h - 224))
        cat.crop((left, top, left + 224, top + 224)).save(root / "photos" / f"{i:05d}.jpg", quality=90)
    return {"lenet": (kindling.save(lenet, root / "lenet.kdl"), root / "digits"),
            "resnet18": (kindling.save(resnet, root / "resnet18.kdl"), root / "photos")}


def descendants() -> tuple[int, ...]:
    """This process's descendants (the JVM, its Python daemon and workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [os.getpid()]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return tuple(out)


def single(model: Path, folder: Path) -> float:
    """Seconds for one process to classify every file as ``kindling run`` does."""
    from kindling.runtime.predict import Predictor
    files = sorted(folder.iterdir())
    start = time.perf_counter()
    p = Predictor.load(model, batch_size=32)
    out = p.forward([p.preprocess(files)])[0]
    p.top_k(out, 5)
    return time.perf_counter() - start


def spark_run(spark, model: Path, folder: Path) -> float:
    from kindling.runtime.spark import binary_files, predict
    start = time.perf_counter()
    predict(binary_files(spark, str(folder)), str(model), batch_size=32).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def measure(spark, name, model, folder, count) -> dict:
    from _cpu import CpuMeter
    from kindling.runtime import blas
    blas.set_threads(2)
    out = {}
    for label, fn in (("single", lambda: single(model, folder)), ("spark", lambda: spark_run(spark, model, folder))):
        with CpuMeter(descendants()) as meter:
            seconds = fn()
        out[label] = {"images_per_s": count / seconds, "seconds": seconds, "others": meter.others, "ours": meter.ours}
    out["ratio"] = out["spark"]["images_per_s"] / out["single"]["images_per_s"]
    out["others"] = max(out["single"]["others"], out["spark"]["others"])
    print(f"  {name:9s} single {out['single']['images_per_s']:8.1f} img/s   spark local[2] "
          f"{out['spark']['images_per_s']:8.1f} img/s   ratio {out['ratio']:.2f}x   "
          f"cores used: ours {out['single']['ours']:.2f}/{out['spark']['ours']:.2f}, "
          f"others {out['single']['others']:.2f}/{out['spark']['others']:.2f}", flush=True)
    return out


def report(reps: list[dict], names) -> dict:
    summary = {}
    for label, subset in (("all", reps), ("quiet", [r for r in reps if r["others_max"] <= QUIET])):
        print(f"\nmedians over {len(subset)} {label} repetition(s):")
        summary[label] = {"repetitions": len(subset)}
        for name in names:
            if not subset:
                continue
            med = {k: statistics.median(r[name][k]["images_per_s"] for r in subset) for k in ("single", "spark")}
            ratio = statistics.median(r[name]["ratio"] for r in subset)
            target = TARGET.get(name)
            verdict = "" if target is None else f"  (target >= {target}x: {'met' if ratio >= target else 'MISSED'})"
            print(f"  {name:9s} single {med['single']:8.1f} img/s   spark {med['spark']:8.1f} img/s   "
                  f"ratio {ratio:.2f}x{verdict}")
            summary[label][name] = {**med, "ratio": ratio}
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lenet-images", type=int, default=1797)
    ap.add_argument("--resnet-images", type=int, default=96)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from kindling.runtime import blas
    from kindling.runtime.spark.session import session
    info = blas.describe()
    print(f"kindling BLAS {info['backend']} {info['version']}; {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="kindling-scoring-bench-") as tmp:
        workloads = make_workloads(Path(tmp), args.lenet_images, args.resnet_images)
        counts = {"lenet": args.lenet_images, "resnet18": args.resnet_images}
        start = time.perf_counter()
        spark = session("local[2]", "kindling-scoring-bench", **{"spark.ui.enabled": "false",
                                                                  "spark.ui.showConsoleProgress": "false"})
        spark.sparkContext.setLogLevel("ERROR")
        session_s = time.perf_counter() - start
        first = {name: spark_run(spark, model, folder) for name, (model, folder) in workloads.items()}
        print(f"session start {session_s:.1f} s; first jobs (workers start, model loaded once per worker): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()), flush=True)
        reps = []
        try:
            for rep in range(1, args.repeats + 1):
                print(f"\nrepetition {rep}", flush=True)
                r = {name: measure(spark, name, model, folder, counts[name])
                     for name, (model, folder) in workloads.items()}
                r["others_max"] = max(v["others"] for v in r.values())
                reps.append(r)
                print(f"repetition {rep}: other processes used up to {r['others_max']:.2f} cores "
                      f"({'quiet' if r['others_max'] <= QUIET else 'busy'})", flush=True)
        finally:
            spark.stop()
        summary = report(reps, list(workloads))
        if args.json:
            with open(f"{args.json}.tmp", "w") as f:
                json.dump({"session_start_s": session_s, "first_job_s": first, "repetitions": reps,
                           "summary": summary}, f, indent=2)
            os.replace(f"{args.json}.tmp", args.json)
            print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
