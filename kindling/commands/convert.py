"""kindling convert FRAMEWORK ...: bring a model from another framework into kindling's format.

The flags every framework shares (output, labels, preprocessing, input shapes, the parity check)
are defined once here, in a parent parser; each framework adds its own in a module of its own
(``convert_<framework>.py``) that exposes HELP, ``add_arguments(parser)`` and
``convert(args, *, inputs, labels, preprocessing) -> Module``. After converting, every framework
goes through the same checks and summary, all before the atomic save: a command that fails
writes nothing.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from importlib import import_module

import numpy as np

HELP = "convert a model from another framework (caffe, tf, torch, onnx) into kindling's native format"

# framework -> module under kindling/commands/ with its flags and its convert()
FRAMEWORKS = {"caffe": "convert_caffe", "tf": "convert_tf", "torch": "convert_torch", "onnx": "convert_onnx"}


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
    v = p.add_argument_group("parity on the spot")
    v.add_argument("--verify", action="store_true",
                   help="compare every layer with a reference before writing, in execution order; stop at the first "
                        "layer over the tolerance, name it, and write nothing")
    v.add_argument("--reference", metavar="NAME|FILE.npz",
                   help="what to compare with: the framework's own reference (the default) or stored outputs, an "
                        ".npz holding the inputs and reference tensors by name")
    v.add_argument("--verify-input", metavar="FILE.npz",
                   help="inputs by name for --verify (default: the stored outputs' inputs, else seeded random ones)")
    v.add_argument("--tolerance", type=float, default=1e-4,
                   help="per layer: max abs difference <= tolerance * (1 + the reference's largest magnitude)")
    return p


def add_arguments(p):
    common = common_arguments()
    sub = p.add_subparsers(dest="framework", metavar="FRAMEWORK", required=True)
    for name, module in FRAMEWORKS.items():
        fw = import_module(f"kindling.commands.{module}")
        fp = sub.add_parser(name, parents=[common], help=fw.HELP, description=fw.HELP)
        fw.add_arguments(fp)
        fp.set_defaults(_framework=fw)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _preprocessing(args) -> dict | None:
    pre = {"mean": args.mean, "std": args.std, "scale": args.scale, "channel_order": args.channel_order,
           "input_size": args.input_size}
    return {k: v for k, v in pre.items() if v is not None} or None


def _check(model, inputs: str, expected: str) -> bool:
    from kindling.runtime.npy import read_npy
    x = read_npy(inputs).astype(np.float32)
    want = read_npy(expected)
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


def _reference(args, model):
    from kindling.converters.verify import NpzReference
    fw = args._framework
    choice = args.reference or getattr(fw, "DEFAULT_REFERENCE", None)
    if choice is None:
        raise ValueError(f"--verify: give the reference outputs (--reference FILE.npz) for {args.framework} models")
    if choice.endswith(".npz"):
        return NpzReference(choice, (model.metadata or {}).get("input_names") or ["input"])
    known = getattr(fw, "REFERENCES", {})
    if choice not in known:
        raise ValueError(f"--reference {choice}: not a reference for {args.framework} models; "
                         f"known: {', '.join([*known, 'FILE.npz'])}")
    return known[choice](args)


def _verified(model, args) -> bool:
    from kindling.converters.verify import random_inputs, verify
    reference = _reference(args, model)
    inputs = None
    if args.verify_input:
        from kindling.runtime.npy import read_npz
        inputs = {k: np.asarray(v, np.float32) for k, v in read_npz(args.verify_input).items()}
    elif getattr(reference, "inputs", None) is None:
        inputs = random_inputs(model)
    report = verify(model, reference, inputs, atol=args.tolerance, rtol=args.tolerance)
    print(report.table())
    bad = report.first_failure
    if bad is not None:
        print(f"verify failed at {bad.module} ({bad.type}), the first layer over the tolerance "
              f"{args.tolerance:g}{': ' + bad.note if bad.note else ''}; nothing written", file=sys.stderr)
        return False
    compared = sum(r.max_abs is not None for r in report.rows)
    print(f"verify: {compared} of {len(report.rows)} layers compared with {report.reference}, all within "
          f"{args.tolerance:g}")
    return True


def _description(model, args) -> str:
    """What the summary says about the model, worked out BEFORE the save (tracing the output shape
    may find a layer too large for this machine: then nothing is written)."""
    from kindling.runtime import shapes
    from kindling.runtime.errors import KindlingError
    params = sum(int(np.prod(p.shape)) for _, p, _ in model.named_parameters())
    shape = model.metadata.get("input_shape")
    source = ", ".join(f["path"] for f in model.metadata.get("source", {}).get("files", []))
    out_shape = ""
    if shape:
        sample = model.metadata.get("sample_shape") or [1, *shape[1:]]
        try:
            out_shape = f", output shape {_listed(shapes.trace(model, [sample])[model.name])}"
        except KindlingError as e:
            raise KindlingError(f"{source or args.framework}: tracing the converted model: {e}") from e
        if sample != [1, *shape[1:]]:
            out_shape += f" at input {sample} (it takes any size that fits {shape})"
    return (f"converted {source or args.framework} -> {args.output}: {sum(1 for _ in model.modules()) - 1} layers "
            f"({type(model).__name__}), {params:,} parameters{out_shape}")


def _listed(shape):
    return [list(s) for s in shape] if isinstance(shape, list) else list(shape)


def run(args) -> int:
    import kindling
    from kindling.runtime.data import read_labels
    start = time.perf_counter()
    labels = read_labels(args.labels, unique=False) if args.labels else None
    model = args._framework.convert(args, inputs=dict(args.input), labels=labels, preprocessing=_preprocessing(args))
    # before writing: a failed check leaves no file
    if args.check and not _check(model, *args.check):
        return 1
    if args.verify and not _verified(model, args):
        return 1
    description = _description(model, args)
    kindling.save(model, args.output)
    for note in getattr(model, "notes", []):
        print(f"note: {note}")
    print(f"{description}, in {time.perf_counter() - start:.2f} s, peak memory {_peak_rss_mb():.0f} MB")
    return 0
