"""kindling export onnx MODEL.kdl -o model.onnx [--opset 17] [--dynamic-batch]."""
from __future__ import annotations

import time

HELP = "an ONNX model (checked with onnx.checker, full_check)"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def add_arguments(p):
    p.add_argument("--opset", type=int, default=17, help="the ONNX opset to write (13 and later; default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (a symbolic first axis)")
    p.add_argument("--input-shape", type=_ints, metavar="N,C,H,W",
                   help="the input shape, when the model does not record it")


def run(args) -> int:
    import kindling
    from kindling.commands.convert_onnx import onnx_module
    start = time.perf_counter()
    model = kindling.load(args.model)
    path = onnx_module().export(model, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                                input_shape=args.input_shape)
    print(f"exported {args.model} -> {path}: opset {args.opset}, {'any batch' if args.dynamic_batch else 'batch 1'}, "
          f"{path.stat().st_size / 1e6:.1f} MB, in {time.perf_counter() - start:.2f} s")
    return 0
