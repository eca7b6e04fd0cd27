"""BatchNorm2d against PyTorch's on the shapes of ResNet-18 training (batch 16) and on small ones
(LeNet/VGG-style maps, a 2-D (N, C) batch): training forward + backward, and evaluate-mode forward.

    python benchmarks/batchnorm.py [--repeats 9] [--block 5] [--only 16x64x56x56,...] [--layouts nhwc,nchw]
                                   [--json out.json]

Each 4-D shape runs in both memory orders, the same for both frameworks: ``nhwc``, kindling's input
as Conv2d hands it on (an NCHW view of NHWC memory) against PyTorch's channels_last tensor; and
``nchw``, contiguous NCHW for both (PyTorch's own convolutions' usual output). The gradients have
the input's layout. The two
alternate in blocks of ``--block`` steps (``benchmarks/_cpu.py``), once with kindling's block first
and once with PyTorch's, and every repetition records the CPU time other processes used meanwhile;
medians over the quiet repetitions (others <= 0.3 cores) are printed apart, with their count.
Ratios are kindling's speed over PyTorch's (above 1: kindling faster). PyTorch runs with
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
RESNET18 = [(16, 64, 112, 112), (16, 64, 56, 56), (16, 128, 28, 28), (16, 256, 14, 14), (16, 512, 7, 7)]
SMALL = [(64, 6, 24, 24), (64, 16, 8, 8), (64, 32, 16, 16), (64, 64, 8, 8), (64, 128)]
ORDERS = {"kindling first": ("kindling", "torch"), "torch first": ("torch", "kindling")}


def _name(shape) -> str:
    return "x".join(map(str, shape))


def _nhwc(a: np.ndarray) -> np.ndarray:
    """An NCHW view of NHWC memory, as kindling's convolutions hand it on."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _steps(torch, shape, mode: str, layout: str) -> dict:
    rng = np.random.default_rng(0)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    xk, gk = (_nhwc(x), _nhwc(gy)) if layout == "nhwc" else (x, gy)
    m = nn.BatchNorm2d(c)
    t = torch.nn.BatchNorm2d(c) if x.ndim == 4 else torch.nn.BatchNorm1d(c)
    tx, tg = torch.from_numpy(x), torch.from_numpy(gy)
    if layout == "nhwc":  # channels_last: the same NHWC memory PyTorch's own convolutions then produce
        tx, tg = tx.contiguous(memory_format=torch.channels_last), tg.contiguous(memory_format=torch.channels_last)
    tx.requires_grad_()
    if mode == "training":
        def kindling():
            m.forward(xk)
            m.backward(xk, gk)

        def reference():
            tx.grad = None
            t(tx).backward(tg)
    elif mode == "forward":  # training mode: batch statistics and the running ones' update, no backward
        def kindling():
            m.forward(xk)

        def reference():
            with torch.no_grad():
                t(tx)
    else:
        m.evaluate()
        t.eval()
        tx.requires_grad_(False)

        def kindling():
            m.forward(xk)

        def reference():
            with torch.no_grad():
                t(tx)
    return {"kindling": kindling, "torch": reference}


def measure(torch, shape, mode: str, layout: str, repeats: int, block: int) -> dict:
    steps = _steps(torch, shape, mode, layout)
    out, pooled = {}, []
    for order, who in ORDERS.items():
        reps = _cpu.alternate({w: steps[w] for w in who}, repeats, block)
        pooled += reps
        out[order] = _cpu.summarize(reps, shape[0], "kindling", "torch")
    out["both orders"] = _cpu.summarize(pooled, shape[0], "kindling", "torch")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9, help="repetitions per order, shape and mode")
    ap.add_argument("--block", type=int, default=5, help="steps of each framework per block")
    ap.add_argument("--only", default="", help="comma-separated shapes, e.g. 16x64x56x56,64x128")
    ap.add_argument("--modes", default="training,inference", help="training (forward + backward), forward (training mode's alone), inference")
    ap.add_argument("--layouts", default="nhwc,nchw", help="memory orders of the 4-D inputs: nhwc (as Conv2d "
                    "hands them on; PyTorch channels_last), nchw (contiguous for both)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(THREADS)
    shapes = RESNET18 + SMALL
    if args.only:
        wanted = set(args.only.split(","))
        shapes = [s for s in shapes if _name(s) in wanted]
    print(f"threads {THREADS} (kindling and torch), torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; ratio = kindling speed / torch speed", flush=True)
    report = {}
    for mode in args.modes.split(","):
        for shape in shapes:
            for layout in args.layouts.split(",") if len(shape) == 4 else ["plain"]:
                r = report[f"{_name(shape)}/{layout}/{mode}"] = measure(torch, shape, mode, layout, args.repeats,
                                                                        args.block)
                print(f"{_name(shape):>16s} {layout} {mode}", flush=True)
                for part in (*ORDERS, "both orders"):
                    print(f"    {part:15s} {_cpu.describe(r[part], 'kindling', 'torch')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
