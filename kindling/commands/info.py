"""kindling info MODEL: layers, output shapes, parameters, size; --backend: the BLAS in use."""
from __future__ import annotations

import numpy as np

HELP = "describe a model file (layers, output shapes, parameters, size) or, with --backend, the BLAS in use"


def add_arguments(p):
    p.add_argument("model", nargs="?", help="a .kdl model file")
    p.add_argument("--backend", action="store_true", help="print the BLAS backend, its version and threads")
    p.add_argument("--input-shape", help="input shape to trace output shapes with, e.g. 1,3,224,224 (default: the "
                                         "model's recorded input shape, its free dimensions at the declared size); a "
                                         "shape the model does not fit is refused naming the layer")


def _backend_lines() -> list[str]:
    from kindling.runtime import blas
    d = blas.describe()
    lines = [f"backend: {d['backend']} {d['version']}", f"library: {d['library']}",
             f"threads: {d['threads']} (kindling's pool; {d['active_threads']} active now; the BLAS library itself "
             f"runs single-threaded inside it)", f"chosen: {d['reason']}"]
    if d["openblas_kernel"]:
        held = ", ".join(f"{k}={v}" for k, v in d["openblas_kernel_held_by"].items())
        lines.append(f"numpy's OpenBLAS kernel: {d['openblas_kernel']}" + (
            f" (held there by {held}: an older kernel may run at a fraction of this CPU's speed)" if held else ""))
    if d["calibration_gflops"]:
        lines.append("calibration: " + ", ".join(f"{k} {v} GFLOP/s" for k, v in d["calibration_gflops"].items()))
    return lines


def run(args) -> int:
    if args.backend:
        print("\n".join(_backend_lines()))
        if not args.model:
            return 0
    if not args.model:
        raise ValueError("give a model file, or --backend")
    import os

    import kindling
    from kindling.runtime.errors import KindlingError
    from kindling.runtime.shapes import ShapeError, trace
    model = kindling.load(args.model)
    meta = model.metadata
    recorded = meta.get("input_shape")
    shape = [int(d) for d in args.input_shape.split(",")] if args.input_shape else recorded
    shapes = {}
    if shape and len(meta.get("input_names") or [None]) == 1:
        if args.input_shape and recorded and (len(shape) != len(recorded) or any(
                r > 0 and r != d for r, d in zip(recorded[1:], shape[1:]))):
            raise KindlingError(f"--input-shape {shape} does not fit the model's {recorded} (-1: any size that fits)")
        sample = meta.get("sample_shape") or [1] * len(shape)
        shape = [d if d > 0 else max(s, 1) for d, s in zip(shape, sample)]
        try:
            shapes = trace(model, [shape])
        except ShapeError as e:
            raise KindlingError(f"{args.model}: tracing the input shape {shape}: {e}") from e
    rows = [("layer", "type", "output shape", "params")]
    total = 0
    for m in model.modules():
        n = sum(int(np.prod(p.shape)) for p in m.params.values())
        total += n
        rows.append((m.name, type(m).__name__, str(shapes.get(m.name, "")), f"{n:,}" if n else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"parameters: {total:,}")
    print(f"file size: {os.path.getsize(args.model) / 1e6:.1f} MB")
    if shape:
        free = f" (recorded {recorded}: -1 takes any size that fits)" if recorded and min(recorded[1:]) <= 0 else ""
        print(f"input shape: {list(shape)}{free}")
    for key in ("input_names", "output_names"):
        if meta.get(key):
            print(f"{key.replace('_', ' ')}: {', '.join(meta[key])}")
    if meta.get("source"):
        print(f"source: {meta['source'].get('framework')} "
              + ", ".join(f.get("path", "") for f in meta["source"].get("files", [])))
    if meta.get("preprocessing"):
        print("preprocessing: " + ", ".join(f"{k} {v}" for k, v in meta["preprocessing"].items()))
    if meta.get("labels"):
        print(f"labels: {len(meta['labels'])} ({', '.join(meta['labels'][:3])}{', ...' if len(meta['labels']) > 3 else ''})")
    if meta.get("training"):
        t = meta["training"]
        line = f"training: iteration {t.get('iteration')}, epoch {t.get('epoch')}, loss {t.get('loss'):.6g}"
        if t.get("validation"):
            v = t["validation"]
            line += f"; validated on {v.get('dataset')}: " + ", ".join(f"{k} {x:.4f}" for k, x in v["results"].items())
        print(line)
    print("\n".join(_backend_lines()[:1]))
    return 0
