"""Converting a VGG16-size PyTorch state_dict (~550 MB, torchvision's names, random weights): time and
peak memory of `pytorch.convert` (the model built by its factory, every weight read in, SHA-256 of the
file for the metadata) against PyTorch loading the same file (torch.load(weights_only=True); for
.safetensors, safetensors' load_file with every tensor touched) and against simply reading it, each
in a fresh process, interleaved so all three see the same machine.

    python benchmarks/torch_convert.py [--json out.json] [--repeats 5] [--formats pt,safetensors]

Target: peak RSS (above the interpreter's baseline) <= 1.5x the file size.
The machine is shared: for each repetition the CPU time other processes used is taken from
/proc/stat (all CPUs' busy time, minus this process and its children) and given in cores; a
repetition with others <= 0.3 cores is "quiet" and the quiet medians are reported apart.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import run_measured  # noqa: E402

BENCH = str(Path(__file__).resolve().parent)
QUIET_CORES = 0.3

READ = """
import os
t, cpu = time.perf_counter(), time.process_time()
buf = numpy.empty(os.path.getsize({path!r}), numpy.uint8)  # reading it into memory, as any loader must
with open({path!r}, "rb") as f:
    f.readinto(memoryview(buf))
result["seconds"], result["cpu_seconds"] = time.perf_counter() - t, time.process_time() - cpu
result["own_baseline_mb"] = baseline
"""
TORCH = """
import torch
from safetensors.torch import load_file
result["own_baseline_mb"] = _rss("VmRSS")  # after importing torch: measure the load alone
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # restart the high-water mark
t, cpu = time.perf_counter(), time.process_time()
if {path!r}.endswith(".safetensors"):
    state = load_file({path!r})  # memory-mapped: touch every value so that it is read, as a model would
    for v in state.values():
        v.sum()
else:
    state = torch.load({path!r}, weights_only=True)
result["seconds"], result["cpu_seconds"] = time.perf_counter() - t, time.process_time() - cpu
result["params"] = sum(v.numel() for v in state.values())
"""
KINDLING = """
import sys
sys.path.insert(0, {bench!r})
import _models
from kindling.converters import pytorch
result["own_baseline_mb"] = baseline
t, cpu = time.perf_counter(), time.process_time()
model = pytorch.convert({path!r}, _models.vgg16_torchvision)
result["seconds"], result["cpu_seconds"] = time.perf_counter() - t, time.process_time() - cpu
result["params"] = sum(int(p.size) for _, p, _ in model.named_parameters())
"""


def vgg16_state_dict(torch):
    """torchvision's VGG16 keys and shapes, random weights (no download)."""
    import _models
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in _models.vgg16_torchvision().state_dict().items():
        state[key] = torch.randn(value.shape, generator=gen) * 0.01
    return state


def _busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (/proc/stat's first line, in seconds)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measured(code: str) -> dict:
    """run_measured, plus the cores other processes kept busy meanwhile and the child's CPU time
    in the measured part (its own clock, so a busy machine stretches it less than wall time)."""
    busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
    result = run_measured(code)
    wall = time.perf_counter() - wall
    others = (_busy_seconds() - busy) - (_own_seconds() - own)
    result["others_cores"] = max(0.0, others / wall)
    result["peak_mb"] = result["peak_rss_mb"] - result["own_baseline_mb"]
    return result


def summary(runs: list[dict]) -> dict:
    quiet = [r for r in runs if r["others_cores"] <= QUIET_CORES]

    def med(rs, key):
        return round(statistics.median(r[key] for r in rs), 3) if rs else None
    return {"seconds": med(runs, "seconds"), "cpu_seconds": med(runs, "cpu_seconds"), "peak_mb": med(runs, "peak_mb"),
            "quiet_seconds": med(quiet, "seconds"),
            "quiet_repetitions": len(quiet), "others_cores": [round(r["others_cores"], 2) for r in runs]}


def bench_file(path: str, repeats: int) -> dict:
    size_mb = os.path.getsize(path) / 2**20
    runs = {"read": [], "torch": [], "kindling": []}
    for _ in range(repeats):  # interleaved: every repetition runs all three, in the same weather
        runs["read"].append(measured(READ.format(path=path)))
        runs["torch"].append(measured(TORCH.format(path=path)))
        runs["kindling"].append(measured(KINDLING.format(path=path, bench=BENCH)))
    report = {"file_mb": round(size_mb, 1), "params": runs["kindling"][0]["params"],
              **{name: summary(rs) for name, rs in runs.items()}}
    k, t, r = report["kindling"], report["torch"], report["read"]
    report["ratios"] = {
        "kindling_vs_torch_seconds": round(k["seconds"] / t["seconds"], 2),
        "kindling_vs_torch_cpu_seconds": round(k["cpu_seconds"] / t["cpu_seconds"], 2),
        "kindling_vs_read_seconds": round(k["seconds"] / r["seconds"], 2),
        "kindling_peak_vs_file": round(k["peak_mb"] / size_mb, 3),
        "torch_peak_vs_file": round(t["peak_mb"] / size_mb, 3),
    }
    # the same ratios per repetition, so a noisy one is visible
    report["ratios"]["per_repetition_kindling_vs_torch"] = [
        round(a["seconds"] / b["seconds"], 2) for a, b in zip(runs["kindling"], runs["torch"])]
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--formats", default="pt,safetensors")
    args = ap.parse_args(argv)
    import torch
    from safetensors.torch import save_file
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        state = vgg16_state_dict(torch)
        files = {"pt": os.path.join(tmp, "vgg16.pth"), "safetensors": os.path.join(tmp, "vgg16.safetensors")}
        for fmt in args.formats.split(","):
            (torch.save if fmt == "pt" else save_file)(state, files[fmt])
        del state
        for fmt in args.formats.split(","):
            rep = reports[fmt] = bench_file(files[fmt], args.repeats)
            k, t, r, ratio = rep["kindling"], rep["torch"], rep["read"], rep["ratios"]
            print(f"VGG16 .{fmt} {rep['file_mb']:.0f} MB, {rep['params']:,} parameters, {args.repeats} repetitions "
                  f"({k['quiet_repetitions']} quiet: others <= {QUIET_CORES} cores; others per repetition "
                  f"{k['others_cores']})")
            print(f"  kindling convert: {k['seconds']:.2f} s (quiet {k['quiet_seconds']}) = "
                  f"{ratio['kindling_vs_torch_seconds']:.2f}x torch.load ({t['seconds']:.2f} s, quiet "
                  f"{t['quiet_seconds']}), {ratio['kindling_vs_read_seconds']:.2f}x a plain read "
                  f"({r['seconds']:.2f} s); per repetition vs torch {ratio['per_repetition_kindling_vs_torch']}")
            print(f"  CPU time: kindling {k['cpu_seconds']:.2f} s = {ratio['kindling_vs_torch_cpu_seconds']:.2f}x "
                  f"torch's {t['cpu_seconds']:.2f} s (both threads of kindling's: the reading, and SHA-256 beside it)")
            print(f"  peak RSS: kindling {k['peak_mb']:.0f} MB = {ratio['kindling_peak_vs_file']:.2f}x the file "
                  f"(target <= 1.5x); torch.load {t['peak_mb']:.0f} MB = {ratio['torch_peak_vs_file']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
