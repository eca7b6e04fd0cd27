"""kindling run MODEL --input x.npy --output y.npy | --input photo.jpg [--top-k 5]: a forward pass in
evaluate mode, in batches, through the runtime's one batched-predict path (runtime/predict.py)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

HELP = ("run a model on a float32 .npy/.npz tensor, or classify image files and folders with the model's "
        "recorded preprocessing")

TENSOR_SUFFIXES = (".npy", ".npz")
# What a file that is neither a tensor nor an image most likely is, for the error message.
KNOWN_OTHERS = {".kdl": "a kindling model", ".txt": "a text file", ".json": "a JSON file", ".csv": "a CSV file",
                ".prototxt": "a Caffe net definition", ".caffemodel": "Caffe weights", ".pt": "PyTorch weights",
                ".pth": "PyTorch weights", ".onnx": "an ONNX model", ".pb": "a protobuf file"}


def add_arguments(p):
    p.add_argument("model", help="a .kdl model file")
    p.add_argument("--input", required=True, nargs="+",
                   help=".npy (one input) or .npz (arrays named by the model's inputs); or image files and folders "
                        "of images, preprocessed as the model records")
    p.add_argument("--output", help=".npy (one output) or .npz (one array per model output); required for tensors")
    p.add_argument("--batch-size", type=int, default=0,
                   help="split the first axis into batches of N (default: all; 32 for images)")
    p.add_argument("--top-k", type=int, default=5, help="classes printed per image (default 5)")


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


def _write_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npz":
        _write_atomic(path, lambda p: np.savez(p, **outputs))
    elif len(outputs) > 1:
        raise ValueError(f"the model has {len(outputs)} outputs {list(outputs)}: write them to an .npz")
    else:
        _write_atomic(path, lambda p: np.save(p, next(iter(outputs.values()))))
    print(f"wrote {path} ({', '.join(f'{k} {list(v.shape)}' for k, v in outputs.items())})")


def image_files(paths: list[str]) -> list[Path]:
    """The images named, and those under folders named (sorted, hidden files skipped); anything
    else is an error saying what it is and what is expected."""
    from kindling.runtime.data.dataset import IMAGE_SUFFIXES, _walk
    found: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            images, _ = _walk(p)
            if not images:
                raise ValueError(f"{p}: a folder with no images in it (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            found += images
        elif not p.exists():
            raise ValueError(f"{p}: no such file or folder")
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
        else:
            what = KNOWN_OTHERS.get(p.suffix.lower(), f"a {p.suffix or 'suffix-less'} file")
            raise ValueError(f"{p}: {what}, not an input: expected a tensor (.npy, .npz) or images "
                             f"({', '.join(sorted(IMAGE_SUFFIXES))}) or folders of them")
    return found


def _described(predictor, output, k: int) -> str:
    """An image's top-k classes, or a detector's k best detections (boxes as fractions of the
    image: x0,y0-x1,y1)."""
    if predictor.scores_from == "detections":
        found = predictor.detections(output, k)[0] if len(output) else []
        return ", ".join(f"{d.label or d.index} {d.score:.4f} at {d.box[0]:.3f},{d.box[1]:.3f}-{d.box[2]:.3f},"
                         f"{d.box[3]:.3f}" for d in found) or "nothing detected"
    c = predictor.top_k(output, k)[0]
    return ", ".join(f"{label or i} {score:.4f}" for i, label, score in zip(c.indices, c.labels, c.scores))


def run(args) -> int:
    from kindling.runtime.predict import Predictor
    tensors = [p for p in args.input if Path(p).suffix.lower() in TENSOR_SUFFIXES]
    if tensors and len(tensors) != len(args.input) or len(tensors) > 1:
        raise ValueError("give one .npy/.npz tensor file, or image files and folders, not a mix")
    images = None if tensors else image_files(args.input)  # checked before the model is read
    if tensors and not args.output:
        raise ValueError("tensor inputs need --output (.npy or .npz) for the results")
    batch = args.batch_size if args.batch_size > 0 else None
    predictor = Predictor.load(args.model, batch_size=batch or 32)
    if images is None:
        xs = _read_inputs(tensors[0], predictor.input_names)
        if batch is None:
            predictor.batch_size = max(len(xs[0]), 1)
        _write_outputs(Path(args.output), predictor.predict(dict(zip(predictor.input_names, xs))))
        return 0
    if predictor.pipeline is None:
        raise ValueError(f"{args.model}: the model records no image preprocessing or 4-D input shape, so images "
                         f"cannot be fed to it: give a tensor (.npy)")
    per_image = predictor.predict_images(images, names=[str(p) for p in images])
    for path, outs in zip(images, per_image):
        print(f"{path}: {_described(predictor, outs[0], args.top_k)}")
    if args.output:
        shapes = {tuple(o.shape for o in outs) for outs in per_image}
        if len(shapes) > 1:
            raise ValueError("the images gave outputs of different sizes (the model takes each image at its own "
                             "size), which one tensor file cannot hold: give one image with --output")
        outs = [np.concatenate(column) for column in zip(*per_image)]
        _write_outputs(Path(args.output), dict(zip(predictor.output_names_for(len(outs)), outs)))
    return 0
