"""Saving and loading a VGG16-size model (138 M parameters, ~550 MB) in kindling's native format:
time (median of 3) and peak memory, each in a fresh process, as a multiple of the file size.

    python benchmarks/format.py [--json out.json]

Target: peak RSS (above the interpreter's own baseline) <= 1.5x the file size, for save and load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import run_measured  # noqa: E402

SAVE = """
import sys, time
sys.path.insert(0, {bench!r})
import _models
model = _models.vgg16()
built = _rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # restart the high-water mark: measure the save alone
    f.write("5")
t = time.perf_counter()
kindling.save(model, {path!r})
result["seconds"] = time.perf_counter() - t
result["model_mb"] = built - baseline
"""
LOAD = """
t = time.perf_counter()
model = kindling.load({path!r})
result["seconds"] = time.perf_counter() - t
result["params"] = sum(int(p.size) for _, p, _ in model.named_parameters())
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    bench = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg16.kdl")
        saves = [run_measured(SAVE.format(bench=bench, path=path)) for _ in range(args.repeats)]
        size_mb = os.path.getsize(path) / 2**20
        loads = [run_measured(LOAD.format(path=path)) for _ in range(args.repeats)]
    report = {"file_mb": round(size_mb, 1), "params": loads[0]["params"]}
    for label, runs in (("save", saves), ("load", loads)):
        peak = statistics.median(r["peak_rss_mb"] - r["baseline_mb"] for r in runs)
        report[label] = {"seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                         "peak_rss_mb": round(peak, 1), "peak_vs_file": round(peak / size_mb, 3),
                         "MB_per_s": round(size_mb / statistics.median(r["seconds"] for r in runs), 1)}
        print(f"{label}: {report[label]['seconds']} s ({report[label]['MB_per_s']} MB/s), peak RSS "
              f"{report[label]['peak_rss_mb']} MB = {report[label]['peak_vs_file']:.2f}x the {size_mb:.0f} MB file "
              f"(target <= 1.5x)")
    print(f"VGG16: {report['params']:,} parameters")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
