"""kindling demo: the whole story on real files, offline, in about a minute.

1. Convert the real Caffe-trained LeNet (../shared/fixtures/caffe/lenet_mnist) to kindling's format.
2. Write scikit-learn's 1,797 real handwritten digits as a JPEG class-folder tree (MNIST-style:
   each 8x8 digit centred in a 20x20 box inside 28x28).
3. Measure the converted LeNet on them (it was trained on MNIST, not on these).
4. Fine-tune: a fresh last layer (ip2 -> ip2_digits), SGD with momentum, a few epochs, validating
   each epoch on a held-out stratified split, checkpoints and TensorBoard logs.
5. Show the held-out accuracy before and after, and where everything went.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

HELP = "end to end: convert the real Caffe LeNet, fine-tune it on real digits, validate it"


def _default_fixtures() -> Path:
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        candidate = base.parent / "shared" / "fixtures" / "caffe" / "lenet_mnist"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "fixtures" / "caffe" / "lenet_mnist"


def add_arguments(p):
    p.add_argument("--lenet", type=Path, default=None, help="folder with lenet.prototxt and lenet_iter_10000.caffemodel "
                                                           "(default: ../shared/fixtures/caffe/lenet_mnist)")
    p.add_argument("--out", type=Path, default=Path("kindling-demo"), help="where to write everything")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)


def write_digits(root: Path) -> int:
    """scikit-learn's digits as JPEGs, white on black, centred in a 20x20 box of a 28x28 frame."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        box = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        frame = Image.new("L", (28, 28))
        frame.paste(box, (4, 4))
        frame.save(folder / f"{i:04d}.jpg", quality=95)
    return len(d.images)


def run(args) -> int:
    import kindling
    from kindling.converters import caffe
    from kindling.runtime.data import ImageFolder, Pipeline
    from kindling.runtime.finetune import FineTune, fine_tuner, prepare_model
    from kindling.runtime.optim import Top1Accuracy
    from kindling.runtime.optim.checkpoint import snapshots

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    src = args.lenet or _default_fixtures()
    prototxt, weights = src / "lenet.prototxt", src / "lenet_iter_10000.caffemodel"
    if not prototxt.exists() or not weights.exists():
        raise ValueError(f"{src}: the LeNet fixture is not there (give --lenet DIR)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    print(f"1. converting {prototxt.name} + {weights.name}")
    model = caffe.convert(prototxt, weights, labels=[str(i) for i in range(10)],
                          preprocessing={"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]})
    kindling.save(model, out / "lenet.kdl")
    print(f"   -> {out / 'lenet.kdl'}")

    images = out / "digits"
    if not images.exists():
        print(f"2. writing {write_digits(images)} real digits as JPEGs under {images}")
    else:
        print(f"2. digits already under {images}")
    pre = model.metadata["preprocessing"]
    data = ImageFolder(images, Pipeline.from_metadata(pre))
    train_set, val_set = data.split(0.25, seed=args.seed)

    before = model.evaluate(val_set, [Top1Accuracy()], batch_size=128)
    print(f"3. the Caffe LeNet as trained on MNIST, on {len(val_set)} held-out digits: {before}")

    print("4. fine-tuning: new last layer ip2_digits, conv layers kept trainable")
    settings = FineTune(epochs=args.epochs, batch_size=32, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                        new_head="ip2_digits:10", checkpoint=str(out / "checkpoints"), log_dir=str(out / "logs"),
                        app_name="demo", seed=args.seed)
    prepare_model(model, settings, classes=10)
    opt = fine_tuner(model, train_set, val_set, settings, classes=10)
    logging.getLogger("kindling.optim").setLevel(logging.WARNING)  # per-iteration lines: kindling train prints them
    opt.optimize()
    after = model.evaluate(val_set, [Top1Accuracy()], batch_size=128)
    print(f"5. after {args.epochs} epochs of fine-tuning: {after}")
    snaps = snapshots(out / "checkpoints")
    print(f"   validated snapshot: {snaps[-1]}  (kindling info {snaps[-1]})")
    print(f"   TensorBoard: tensorboard --logdir {out / 'logs'}")
    return 0 if after[0][1].result()[0] > before[0][1].result()[0] else 1
