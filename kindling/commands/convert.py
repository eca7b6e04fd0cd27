"""kindling convert caffe ...: bring a model from another framework into kindling's format."""
from __future__ import annotations

import resource
import sys
import time

import numpy as np

HELP = "convert a model from another framework (caffe) into kindling's native format"


def _shape(text: str) -> tuple[str, list[int]]:
    name, _, dims = text.partition("=")
    if not dims:
        raise ValueError(f"--input {text!r}: expected NAME=N,C,H,W, e.g. data=1,3,227,227")
    return name, [int(d) for d in dims.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def add_arguments(p):
    sub = p.add_subparsers(dest="framework", metavar="FRAMEWORK", required=True)
    c = sub.add_parser("caffe", help="a Caffe prototxt + caffemodel (current or V1 format)",
                       description="Convert a Caffe model (deploy or train_val prototxt + caffemodel).")
    c.add_argument("--prototxt", required=True, help="net definition (deploy.prototxt or train_val.prototxt)")
    c.add_argument("--caffemodel", help="trained weights (omit to convert the structure only)")
    c.add_argument("-o", "--output", required=True, help="the .kdl file to write")
    c.add_argument("--input", action="append", type=_shape, default=[], metavar="NAME=N,C,H,W",
                   help="shape of an input (needed for train_val nets and inputs without a declared shape)")
    c.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="select layers by their include/exclude stage rules, as Caffe's NetState (DIGITS nets: "
                        "--stage deploy); repeat for several")
    c.add_argument("--phase", choices=["test", "train"], default="test",
                   help="which phase's layers to keep in a train_val net (default: test)")
    c.add_argument("--labels", help="class labels, one per line (synset lines are kept whole)")
    means = c.add_mutually_exclusive_group()
    means.add_argument("--mean", type=_floats, help="per-channel mean subtracted before the net, e.g. 104,117,123")
    means.add_argument("--mean-file", help="a Caffe mean image (mean.binaryproto, or .npy), reduced to per-channel "
                                           "means")
    c.add_argument("--scale", type=float, help="multiplier applied after the mean")
    c.add_argument("--std", type=_floats, help="per-channel std to divide by")
    c.add_argument("--channel-order", choices=["rgb", "bgr", "gray"], help="channel order the net expects")
    c.add_argument("--input-size", type=lambda s: [int(v) for v in s.split(",")], help="H,W the net expects")
    c.add_argument("--softmax-loss-as-softmax", action="store_true",
                   help="turn a train_val file's SoftmaxWithLoss into a Softmax output")
    c.add_argument("--check", nargs=2, metavar=("INPUT.npy", "EXPECTED.npy"),
                   help="run INPUT through the converted model and compare with EXPECTED (fails above 1e-4)")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args) -> int:
    import kindling
    from kindling.converters import caffe
    from kindling.runtime.data import read_labels
    start = time.perf_counter()
    labels = read_labels(args.labels, unique=False) if args.labels else None
    mean = caffe.read_mean(args.mean_file) if args.mean_file else args.mean
    pre = {k: v for k, v in {"mean": mean, "std": args.std, "scale": args.scale,
                             "channel_order": args.channel_order, "input_size": args.input_size}.items()
           if v is not None}
    model = caffe.convert(args.prototxt, args.caffemodel, inputs=dict(args.input), labels=labels,
                          preprocessing=pre or None, softmax_loss_as_softmax=args.softmax_loss_as_softmax,
                          phase=args.phase, stages=args.stage)
    if args.check:  # before writing: a failed check leaves no file behind
        x = np.load(args.check[0], allow_pickle=False).astype(np.float32)
        expected = np.load(args.check[1], allow_pickle=False)
        y = np.asarray(model.evaluate().forward(x))
        if y.shape != expected.shape:
            print(f"check: output shape {y.shape} differs from expected {expected.shape}", file=sys.stderr)
            return 1
        diff = float(np.abs(y - expected).max())
        print(f"check: max abs difference {diff:.3g} against {args.check[1]}")
        if diff > 1e-4:
            print("check failed: difference above 1e-4; nothing written", file=sys.stderr)
            return 1
    kindling.save(model, args.output)
    seconds = time.perf_counter() - start
    for note in getattr(model, "notes", []):
        print(f"note: {note}")
    meta = model.metadata
    params = sum(int(np.prod(p.shape)) for _, p, _ in model.named_parameters())
    shape = meta.get("input_shape")
    out_shape = ""
    if shape:
        out = model.evaluate().forward(np.zeros([1, *shape[1:]], np.float32))
        out_shape = f", output shape {[list(np.shape(o)) for o in out] if isinstance(out, list) else list(np.shape(out))}"
    print(f"converted {args.prototxt} -> {args.output}: {sum(1 for _ in model.modules()) - 1} layers "
          f"({type(model).__name__}), {params:,} parameters{out_shape}, in {seconds:.2f} s, "
          f"peak memory {_peak_rss_mb():.0f} MB")
    return 0
