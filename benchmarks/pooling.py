"""MaxPool2d against PyTorch's on the shapes that training meets: ResNet-18's stem (3x3, stride 2,
padding 1; batch 16 and batch 1), the VGG-style CNN's and LeNet's 2x2 pools, and Caffe's
AlexNet/GoogLeNet 3x3 stride-2 pools with ceil rounding. Each in three modes: the training
forward (which keeps what backward needs: kindling the winning offset per output, PyTorch its
indices), the backward alone (of one forward), and the evaluate-mode forward.

    python benchmarks/pooling.py [--repeats 7] [--block 5] [--only resnet_stem,...] [--modes ...]
                                 [--json out.json]

kindling gets its input as Conv2d hands it on (an NCHW view of NHWC memory), PyTorch a contiguous
NCHW tensor (its own convolutions' output); both get gradients of their layout. The two alternate
in blocks of ``--block`` steps (``benchmarks/_cpu.py``), once with kindling's block first and once
with PyTorch's, and every repetition records the CPU time other processes used meanwhile; medians
over the quiet repetitions (others <= 0.3 cores) are printed apart, with their count. Ratios are
kindling's speed over PyTorch's (above 1: kindling faster). PyTorch runs with
OMP_WAIT_POLICY=PASSIVE (see benchmarks/runtime.py) on the same number of threads as kindling.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cpu  # noqa: E402

from kindling.runtime import nn  # noqa: E402

THREADS = int(os.environ.get("KINDLING_NUM_THREADS", "2"))
# name: (input shape, kernel, stride, padding, ceil_mode)
CASES = {
    "resnet_stem": ((16, 64, 112, 112), 3, 2, 1, False),
    "resnet_stem_batch1": ((1, 64, 112, 112), 3, 2, 1, False),
    "vgg_cnn": ((64, 64, 32, 32), 2, 2, 0, False),
    "lenet_pool1": ((64, 20, 24, 24), 2, 2, 0, False),
    "alexnet_ceil": ((16, 96, 55, 55), 3, 2, 0, True),
    "googlenet_ceil": ((16, 192, 56, 56), 3, 2, 0, True),
}
MODES = ("forward", "backward", "inference")
ORDERS = {"kindling first": ("kindling", "torch"), "torch first": ("torch", "kindling")}


def _steps(torch, case, mode: str) -> dict:
    shape, k, s, p, ceil = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    xk = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # as Conv2d hands it on
    m, t = nn.MaxPool2d(k, s, p, ceil_mode=ceil), torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil)
    tx = torch.from_numpy(x).requires_grad_()
    y = m.forward(xk)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gk = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    tg = torch.from_numpy(gy)
    if mode == "forward":
        return {"kindling": lambda: m.forward(xk), "torch": lambda: t(tx)}
    if mode == "backward":
        ty = t(tx)

        def reference():
            tx.grad = None
            ty.backward(tg, retain_graph=True)
        return {"kindling": lambda: m.backward(xk, gk), "torch": reference}
    m.evaluate()
    tx.requires_grad_(False)

    def inference():
        with torch.no_grad():
            t(tx)
    return {"kindling": lambda: m.forward(xk), "torch": inference}


def measure(torch, case, mode: str, repeats: int, block: int) -> dict:
    steps = _steps(torch, case, mode)
    records = CASES[case][0][0]
    out, pooled = {}, []
    for order, who in ORDERS.items():
        reps = _cpu.alternate({w: steps[w] for w in who}, repeats, block)
        pooled += reps
        out[order] = _cpu.summarize(reps, records, "kindling", "torch")
    out["both orders"] = _cpu.summarize(pooled, records, "kindling", "torch")
    out["ms"] = {who: round(1e3 * float(np.median([r.seconds[who] for r in pooled])), 2) for who in steps}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="repetitions per order, case and mode")
    ap.add_argument("--block", type=int, default=5, help="steps of each framework per block")
    ap.add_argument("--only", default="", help=f"comma-separated cases among {', '.join(CASES)}")
    ap.add_argument("--modes", default=",".join(MODES), help="forward (training), backward, inference")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    cases = args.only.split(",") if args.only else list(CASES)
    unknown = [c for c in cases if c not in CASES] + [m for m in args.modes.split(",") if m not in MODES]
    if unknown:
        ap.error(f"unknown case or mode {unknown}; cases: {', '.join(CASES)}; modes: {', '.join(MODES)}")
    import torch
    torch.set_num_threads(THREADS)
    print(f"threads {THREADS} (kindling and torch), torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; ratio = kindling speed / torch speed", flush=True)
    report = {}
    for mode in args.modes.split(","):
        for case in cases:
            r = report[f"{case}/{mode}"] = measure(torch, case, mode, args.repeats, args.block)
            shape, k, s, p, ceil = CASES[case]
            print(f"{case} {'x'.join(map(str, shape))} k{k} s{s} p{p}{' ceil' if ceil else ''} {mode}: "
                  f"median ms kindling {r['ms']['kindling']}, torch {r['ms']['torch']}", flush=True)
            for part in (*ORDERS, "both orders"):
                print(f"    {part:15s} {_cpu.describe(r[part], 'kindling', 'torch')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
