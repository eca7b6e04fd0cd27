"""kindling run MODEL --input x.npy --output y.npy: a forward pass in evaluate mode, in batches."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

HELP = "run a model on a float32 NCHW .npy tensor (.npz by input/output names for several)"


def add_arguments(p):
    p.add_argument("model", help="a .kdl model file")
    p.add_argument("--input", required=True, help=".npy (one input) or .npz (arrays named by the model's inputs)")
    p.add_argument("--output", required=True, help=".npy (one output) or .npz (one array per model output)")
    p.add_argument("--batch-size", type=int, default=0, help="split the first axis into batches of N (default: all)")


def _names(model, key, default):
    names = model.metadata.get(key) or getattr(model, key, None)
    return list(names) if names else [default]


def _read_inputs(path: str, names: list[str]) -> list[np.ndarray]:
    from kindling.runtime.npy import read_npy, read_npz
    if path.endswith(".npz"):
        arrays = read_npz(path)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"{path}: no arrays named {missing}; the model's inputs are {names}, "
                             f"the file has {sorted(arrays)}")
        return [np.asarray(arrays[n], np.float32) for n in names]
    if len(names) > 1:
        raise ValueError(f"the model has {len(names)} inputs {names}: give an .npz with one array per input")
    return [np.asarray(read_npy(path), np.float32)]


def _write_atomic(path: Path, save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args) -> int:
    import kindling
    model = kindling.load(args.model).evaluate()
    in_names = _names(model, "input_names", "input")
    out_names = _names(model, "output_names", "output")
    xs = _read_inputs(args.input, in_names)
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs):
        raise ValueError(f"inputs differ in batch size: {[x.shape for x in xs]}")
    expected = model.metadata.get("input_shape")
    if expected and len(xs) == 1 and (len(expected) != xs[0].ndim or any(
            e > 0 and e != d for e, d in zip(expected[1:], xs[0].shape[1:]))):
        raise ValueError(f"{args.input}: input shape {list(xs[0].shape)} does not fit the model's "
                         f"{expected} (first axis is the batch)")
    step = args.batch_size if args.batch_size > 0 else max(n, 1)
    chunks: list[list[np.ndarray]] = []
    for lo in range(0, n, step):
        batch = [x[lo:lo + step] for x in xs]
        y = model.forward(batch[0] if len(batch) == 1 else batch)
        ys = y if isinstance(y, (list, tuple)) else [y]
        chunks.append([np.array(o, np.float32, copy=True) for o in ys])  # outputs are reused buffers
    outs = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    if len(out_names) != len(outs):
        out_names = [f"output{i}" for i in range(len(outs))] if len(outs) > 1 else ["output"]
    out = Path(args.output)
    if out.suffix == ".npz":
        _write_atomic(out, lambda p: np.savez(p, **dict(zip(out_names, outs))))
    elif len(outs) > 1:
        raise ValueError(f"the model has {len(outs)} outputs {out_names}: write them to an .npz")
    else:
        _write_atomic(out, lambda p: np.save(p, outs[0]))
    print(f"wrote {out} ({', '.join(f'{k} {list(v.shape)}' for k, v in zip(out_names, outs))})")
    return 0
