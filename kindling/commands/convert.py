"""kindling convert FRAMEWORK ...: bring a model from another framework into kindling's format.

The flags every framework shares (output, labels, preprocessing, input shapes, the parity check)
are defined once here, in a parent parser; each framework adds its own in a module of its own
(``convert_<framework>.py``) that exposes HELP, ``add_arguments(parser)`` and
``convert(args, *, inputs, labels, preprocessing) -> Module``. After converting, every framework
goes through the same check, atomic save and summary.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from importlib import import_module

import numpy as np

HELP = "convert a model from another framework (caffe, torch) into kindling's native format"

# framework -> module under kindling/commands/ with its flags and its convert()
FRAMEWORKS = {"caffe": "convert_caffe", "torch": "convert_torch"}


def _shape(text: str) -> tuple[str, list[int]]:
    name, _, dims = text.partition("=")
    if not dims:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=N,C,H,W, e.g. data=1,3,227,227")
    return name, [int(d) for d in dims.split(",")]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def common_arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-o", "--output", required=True, help="the .kdl file to write")
    p.add_argument("--input", action="append", type=_shape, default=[], metavar="NAME=N,C,H,W",
                   help="shape of an input (for inputs without a declared shape); repeat for several")
    p.add_argument("--labels", help="class labels, one per line (synset lines are kept whole)")
    p.add_argument("--mean", type=floats, help="per-channel mean subtracted before the net, e.g. 104,117,123")
    p.add_argument("--scale", type=float, help="multiplier applied after the mean")
    p.add_argument("--std", type=floats, help="per-channel std to divide by")
    p.add_argument("--channel-order", choices=["rgb", "bgr", "gray"], help="channel order the net expects")
    p.add_argument("--input-size", type=_ints, help="H,W the net expects")
    p.add_argument("--check", nargs=2, metavar=("INPUT.npy", "EXPECTED.npy"),
                   help="run INPUT through the converted model and compare with EXPECTED (fails above 1e-4; "
                        "nothing is written then)")
    return p


def add_arguments(p):
    common = common_arguments()
    sub = p.add_subparsers(dest="framework", metavar="FRAMEWORK", required=True)
    for name, module in FRAMEWORKS.items():
        fw = import_module(f"kindling.commands.{module}")
        fp = sub.add_parser(name, parents=[common], help=fw.HELP, description=fw.HELP)
        fw.add_arguments(fp)
        fp.set_defaults(_convert=fw.convert)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _preprocessing(args) -> dict | None:
    pre = {"mean": args.mean, "std": args.std, "scale": args.scale, "channel_order": args.channel_order,
           "input_size": args.input_size}
    return {k: v for k, v in pre.items() if v is not None} or None


def _check(model, inputs: str, expected: str) -> bool:
    x = np.load(inputs, allow_pickle=False).astype(np.float32)
    want = np.load(expected, allow_pickle=False)
    y = np.asarray(model.evaluate().forward(x))
    if y.shape != want.shape:
        print(f"check: output shape {y.shape} differs from expected {want.shape}", file=sys.stderr)
        return False
    diff = float(np.abs(y - want).max())
    print(f"check: max abs difference {diff:.3g} against {expected}")
    if diff > 1e-4:
        print("check failed: difference above 1e-4; nothing written", file=sys.stderr)
        return False
    return True


def _summary(model, args, seconds: float) -> str:
    from kindling.runtime.shapes import trace
    params = sum(int(np.prod(p.shape)) for _, p, _ in model.named_parameters())
    shape = model.metadata.get("input_shape")
    out_shape = ""
    if shape:
        out_shape = f", output shape {_listed(trace(model, [[1, *shape[1:]]])[model.name])}"
    source = ", ".join(f["path"] for f in model.metadata.get("source", {}).get("files", []))
    return (f"converted {source or args.framework} -> {args.output}: {sum(1 for _ in model.modules()) - 1} layers "
            f"({type(model).__name__}), {params:,} parameters{out_shape}, in {seconds:.2f} s, "
            f"peak memory {_peak_rss_mb():.0f} MB")


def _listed(shape):
    return [list(s) for s in shape] if isinstance(shape, list) else list(shape)


def run(args) -> int:
    import kindling
    from kindling.runtime.data import read_labels
    start = time.perf_counter()
    labels = read_labels(args.labels, unique=False) if args.labels else None
    model = args._convert(args, inputs=dict(args.input), labels=labels, preprocessing=_preprocessing(args))
    if args.check and not _check(model, *args.check):  # before writing: a failed check leaves no file
        return 1
    kindling.save(model, args.output)
    for note in getattr(model, "notes", []):
        print(f"note: {note}")
    print(_summary(model, args, time.perf_counter() - start))
    return 0
