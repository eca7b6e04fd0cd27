"""Converting a 100 MB frozen TensorFlow graph (Keras's ResNet50 as Keras 3 writes it, random
weights, frozen through TensorFlow): time and peak memory against simply reading the file, each
in a fresh process, interleaved.

    python benchmarks/tf_convert.py [--json out.json] [--repeats 5] [--graph frozen.pb]

Target: peak RSS (above the interpreter's baseline) <= 1.5x the file size. Parsing the GraphDef
whole with protobuf is measured too: that alone holds the file's bytes and the parsed copy (2x)
before any module has its weights. Building the graph needs TensorFlow (the test extra); the
measured conversion never imports it. For each repetition the CPU time other processes used
while it ran is recorded (from /proc/stat, less the measured process's own), and repetitions
where others used at most 0.3 cores are reported apart as quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import run_measured  # noqa: E402

BUILD = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
keras.utils.set_random_seed(0)
model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000)
fn = tf.function(lambda x: model(x, training=False))
concrete = fn.get_concrete_function(tf.TensorSpec([None, 224, 224, 3], tf.float32, name="x"))
graph = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
open(sys.argv[1], "wb").write(graph.SerializeToString(deterministic=True))
"""

FOOTER = """
import resource
ru = resource.getrusage(resource.RUSAGE_SELF)
result["cpu_seconds"] = ru.ru_utime + ru.ru_stime
"""
READ = """
t = time.perf_counter()
buf = numpy.empty(os.path.getsize({path!r}), numpy.uint8)  # reading it into memory, as any loader must
with open({path!r}, "rb") as f:
    f.readinto(memoryview(buf))
result["seconds"] = time.perf_counter() - t
"""
PARSE = """
from kindling.protos import tensorflow_pb2
t = time.perf_counter()
with open({path!r}, "rb") as f:
    graph = tensorflow_pb2.GraphDef.FromString(f.read())
result["seconds"] = time.perf_counter() - t
"""
CONVERT = """
import sys
from kindling.converters import tensorflow as tfc
t = time.perf_counter()
model = tfc.convert({path!r})
result["seconds"] = time.perf_counter() - t
result["params"] = sum(int(p.size) for _, p, _ in model.named_parameters())
result["modules"] = sum(1 for _ in model.modules()) - 1
result["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
"""


def _busy_seconds() -> float:
    """CPU time every process on the machine has used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + (fields[7] if len(fields) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def measured(code: str) -> dict:
    """run_measured, plus the cores other processes kept busy meanwhile."""
    busy, wall = _busy_seconds(), time.perf_counter()
    own = os.times()
    result = run_measured("import os\n" + code + FOOTER)
    wall = time.perf_counter() - wall
    own_after = os.times()
    ours = result["cpu_seconds"] + (own_after.user - own.user) + (own_after.system - own.system)
    result["others_cores"] = max(0.0, (_busy_seconds() - busy - ours) / wall)
    return result


def _median(rows, key):
    return statistics.median(r[key] for r in rows)


def summary(reads, parses, converts, size_mb) -> dict:
    peak = statistics.median(r["peak_rss_mb"] - r["baseline_mb"] for r in converts)
    parse_peak = statistics.median(r["peak_rss_mb"] - r["baseline_mb"] for r in parses)
    t_read, t_parse, t_conv = _median(reads, "seconds"), _median(parses, "seconds"), _median(converts, "seconds")
    return {"repetitions": len(converts), "read_seconds": round(t_read, 3), "parse_seconds": round(t_parse, 3),
            "convert_seconds": round(t_conv, 3), "convert_vs_read": round(t_conv / t_read, 2),
            "peak_rss_mb": round(peak, 1), "peak_vs_file": round(peak / size_mb, 3),
            "whole_parse_peak_vs_file": round(parse_peak / size_mb, 3),
            "others_cores": [round(r["others_cores"], 2) for r in converts]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--graph", help="a frozen graph to convert (default: build Keras's ResNet50, ~100 MB)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.graph or os.path.join(tmp, "resnet50.pb")
        if not args.graph:
            print("building Keras's ResNet50 as a frozen graph (TensorFlow)...", file=sys.stderr)
            subprocess.run([sys.executable, "-c", BUILD, path], check=True)
        size_mb = os.path.getsize(path) / 2**20
        reads, parses, converts = [], [], []
        for _ in range(args.repeats):  # interleaved, so all see the same machine
            reads.append(measured(READ.format(path=path)))
            parses.append(measured(PARSE.format(path=path)))
            converts.append(measured(CONVERT.format(path=path)))
    assert not any(r["tensorflow_imported"] for r in converts), "the conversion imported TensorFlow"
    report = {"file_mb": round(size_mb, 1), "params": converts[0]["params"], "modules": converts[0]["modules"],
              "all": summary(reads, parses, converts, size_mb)}
    quiet = [i for i, r in enumerate(converts) if r["others_cores"] <= 0.3]
    if quiet:
        report["quiet"] = summary([reads[i] for i in quiet], [parses[i] for i in quiet],
                                  [converts[i] for i in quiet], size_mb)
    print(f"frozen graph {size_mb:.0f} MB, {report['params']:,} parameters, {report['modules']} modules")
    for label in ("all", "quiet"):
        if label not in report:
            print(f"quiet: no repetition with other processes at <= 0.3 cores (they used "
                  f"{report['all']['others_cores']})")
            continue
        s = report[label]
        print(f"{label} ({s['repetitions']} repetitions, others' cores {s['others_cores']}):")
        print(f"  convert: {s['convert_seconds']:.2f} s = {s['convert_vs_read']:.2f}x the time to read the file "
              f"({s['read_seconds']:.2f} s); parsing it whole with protobuf alone: {s['parse_seconds']:.2f} s")
        print(f"  peak RSS while converting: {s['peak_rss_mb']:.0f} MB = {s['peak_vs_file']:.2f}x the file "
              f"(target <= 1.5x); parsing it whole with protobuf alone: {s['whole_parse_peak_vs_file']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
