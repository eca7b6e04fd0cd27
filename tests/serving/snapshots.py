"""Real snapshots for the serving tests: the Caffe-trained LeNet from ../shared/fixtures, converted
and fine-tuned on scikit-learn's digits by the Optimizer, validated and checkpointed every
iteration as training does (model.N with its validation record; labels.txt beside them)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from caffe_nets import LENET

PRE = {"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]}
LABELS = [str(i) for i in range(10)]


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 digits placed MNIST-style (a 20x20 box centred in 28x28), labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    out = np.zeros((len(d.images), 28, 28), np.uint8)
    for i, img in enumerate(d.images):
        box = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        out[i, 4:24, 4:24] = np.asarray(box)
    return out, d.target


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def converted_lenet():
    from kindling.converters import caffe
    return caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", labels=LABELS,
                         preprocessing=PRE)


def train_snapshots(folder: Path, iterations: int = 40, lr: float = 0.002) -> dict[int, float]:
    """Fine-tunes the converted LeNet for ``iterations`` batches of 16, validating and
    checkpointing after each; returns {iteration: Top1Accuracy} of the snapshots written."""
    import kindling
    from kindling.runtime import nn
    from kindling.runtime.data import ArrayDataSet
    from kindling.runtime.optim import SGD, Loss, Optimizer, Top1Accuracy, Trigger
    images, labels = digit_images()
    x = images[:, None].astype(np.float32) / 255
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    val, train = order[:400], order[400:]
    model = converted_lenet()
    model.replace("prob", nn.LogSoftmax(name="prob"))
    opt = Optimizer(model, ArrayDataSet(x[train], labels[train], LABELS), nn.ClassNLLCriterion(),
                    SGD(learningrate=lr, momentum=0.9), Trigger.max_iteration(iterations), batch_size=16, seed=0)
    opt.set_validation(Trigger.several_iteration(1), ArrayDataSet(x[val], labels[val], LABELS, name="digits-val"),
                       [Top1Accuracy(), Loss()])
    opt.set_checkpoint(folder, Trigger.several_iteration(1))
    opt.optimize()
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in LABELS))
    return {int(p.name.split(".")[1]): kindling.load(p).metadata["training"]["validation"]["results"]["Top1Accuracy"]
            for p in folder.glob("model.*")}


def rising(accuracies: dict[int, float]) -> list[int]:
    """The longest run of snapshots, in iteration order, each strictly more accurate than the last."""
    its = sorted(accuracies)
    best: list[list[int]] = []
    for i, it in enumerate(its):
        chain = max((c for c in best[:i] if accuracies[c[-1]] < accuracies[it]), key=len, default=[])
        best.append(chain + [it])
    return max(best, key=len)


def land(src: Path, dst_folder: Path, version: int | None = None) -> Path:
    """Copies a snapshot into a model folder the way a person would (write, then rename into place)."""
    dst_folder.mkdir(parents=True, exist_ok=True)
    name = src.name if version is None else f"model.{version}"
    tmp = dst_folder / f".{name}.part"
    shutil.copyfile(src, tmp)
    tmp.rename(dst_folder / name)
    return dst_folder / name


def slow_snapshot(folder: Path, size: int = 192, filters: int = 64) -> Path:
    """A validated snapshot of a deliberately heavy classifier (one 7x7 convolution with 64 filters
    on size x size RGB, about 5 ms an image on one core; cost grows with ``filters``), for queues, deadlines and shutdowns
    with work in flight. Validated for real (on 40 upscaled digits; it is untrained, so about
    chance) and checkpointed the way training does."""
    from kindling.runtime import nn
    from kindling.runtime.data import ArrayDataSet
    from kindling.runtime.optim import SGD, Top1Accuracy
    from kindling.runtime.optim.checkpoint import save_checkpoint
    from kindling.runtime.optim.validation import evaluate
    model = nn.Sequential(nn.Conv2d(3, filters, 7, name="conv"), nn.ReLU(name="relu"),
                          nn.AvgPool2d(global_pooling=True, name="pool"), nn.Flatten(name="flat"),
                          nn.Linear(filters, 10, name="fc"), nn.LogSoftmax(name="prob"), name="slow")
    model.metadata = {"input_shape": [-1, 3, size, size], "labels": LABELS,
                      "preprocessing": {"input_size": [size, size], "scale": 1 / 255}}
    images, labels = digit_images()
    x = np.stack([np.asarray(Image.fromarray(i).convert("RGB").resize((size, size)), np.float32).transpose(2, 0, 1)
                  / 255 for i in images[:40]])
    result = evaluate(model, ArrayDataSet(x, labels[:40], LABELS, name="digits-rgb"), [Top1Accuracy()])
    record = {"dataset": "digits-rgb", "count": 40, "results": result.as_dict()}
    return save_checkpoint(folder, model, SGD(), {"iteration": 1, "epoch": 1, "loss": 0.0}, record, model.metadata)
