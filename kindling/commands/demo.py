"""kindling demo: the job kindling exists for, end to end on real files, offline, in a few minutes.

1. Convert the Caffe-trained LeNet that ships inside the package (kindling/fixtures/lenet_mnist),
   through ``kindling convert caffe``.
2. Write scikit-learn's 1,797 real handwritten digits as a JPEG class-folder tree (MNIST-style:
   each 8x8 digit centred in a 20x20 box inside 28x28) and measure the LeNet as it came from Caffe
   on the held-out quarter (it was trained on MNIST, not on these).
3. Fine-tune a new last layer through Spark (``kindling train --master local[2]``: DistriOptimizer,
   validation every epoch, checkpoints, TensorBoard logs, the progress bar on a terminal).
4. Serve the checkpoint folder (``kindling serve`` in a child process on a free port of 127.0.0.1),
   wait for health SERVING, classify held-out JPEGs through the client, measure Top-1/Top-5 as
   served, stop the server with SIGTERM.
5. Draw a report (loss and accuracy curves, a grid of served classifications) and say where
   everything is.

Every step goes through the command or API a user would run for it; nothing outside ``--out`` is
written, and nothing is left running, also on Ctrl-C.
"""
from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np

HELP = "end to end: convert the bundled Caffe LeNet, fine-tune it on Spark, serve it, classify through the server"

MODEL = "digits"       # the model's name on the server: its folder under OUT/models
VAL_FRACTION = 0.25    # the held-out quarter: validation while training, then the served measurement
SHOWN = 10             # held-out JPEGs whose served answer is printed (one per digit)


def bundled_lenet() -> Path:
    """The folder of the Caffe LeNet installed with kindling (package data)."""
    from importlib.resources import files
    return Path(str(files("kindling") / "fixtures" / "lenet_mnist"))


def add_arguments(p):
    p.add_argument("--out", type=Path, default=Path("kindling-demo"), help="where to write everything "
                                                                            "(default ./kindling-demo)")
    p.add_argument("--master", default="local[2]", help="the Spark master to fine-tune on (default local[2])")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="the held-out split, the new head and the data order")
    p.add_argument("--lenet", type=Path, default=None,
                   help="another folder with lenet.prototxt and lenet_iter_10000.caffemodel (default: the copy "
                        "installed with kindling)")


def write_digits(root: Path) -> int:
    """scikit-learn's digits as JPEGs under root/<digit>/, white on black, centred in a 20x20 box
    of a 28x28 frame (how MNIST, which the LeNet learnt from, frames its digits)."""
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


def _command(*argv: str):
    """The parsed command line of another kindling command (the same parser the shell uses)."""
    from kindling.cli import build_parser
    return build_parser().parse_args([str(a) for a in argv])


def _accuracy(evaluation) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in evaluation.as_dict().items())


class _OnlyEpochLines(logging.Filter):
    """Drops the per-iteration lines of the training loop (the progress bar shows them on a
    terminal); validation and checkpoint lines stay."""

    def filter(self, record):
        return not str(record.msg).startswith("[Epoch %d %d/%d]")


def _stop_on_sigterm(signum, frame):
    # `kill PID` cleans up as Ctrl-C does (Spark stopped, the server stopped), through the SIGINT
    # handler in place: Spark's session puts one there that waits for py4j calls to end
    signal.raise_signal(signal.SIGINT)


def run(args) -> int:
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from kindling.commands import convert, train
    from kindling.runtime.data import ImageFolder, Pipeline, write_labels
    from kindling.runtime.optim import Top1Accuracy, Top5Accuracy
    import kindling

    from .demo_report import draw_report
    from .demo_serving import ServerProcess, served_accuracy

    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    src = args.lenet or bundled_lenet()
    prototxt, weights = src / "lenet.prototxt", src / "lenet_iter_10000.caffemodel"
    missing = [str(p) for p in (prototxt, weights) if not p.is_file()]
    if missing:
        raise ValueError(f"{src}: the LeNet is not there ({', '.join(missing)} missing; give --lenet DIR)")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    classes = [str(i) for i in range(10)]
    labels_file = write_labels(out / "labels.txt", classes)
    lenet, images, repository, logs = out / "lenet.kdl", out / "digits", out / "models", out / "logs"
    checkpoints = repository / MODEL
    for earlier in (checkpoints, logs / "demo"):  # an earlier run's snapshots would be served beside this one's
        if earlier.exists():
            print(f"   replacing {earlier} from an earlier run")
            shutil.rmtree(earlier)

    print(f"1. kindling convert caffe --prototxt {prototxt} --caffemodel {weights} -o {lenet}")
    convert.run(_command("convert", "caffe", "--prototxt", prototxt, "--caffemodel", weights, "-o", lenet,
                         "--labels", labels_file, "--scale", 1 / 256, "--channel-order", "gray",
                         "--input-size", "28,28"))

    if not images.exists():
        print(f"2. writing {write_digits(images)} real handwritten digits (scikit-learn) as JPEGs under {images}")
    else:
        print(f"2. the digits are already under {images}")
    model = kindling.load(lenet)
    data = ImageFolder(images, Pipeline.from_metadata(model.metadata["preprocessing"]), labels=classes)
    train_part, held_out = data.split(VAL_FRACTION, seed=args.seed)
    before = model.evaluate(held_out, [Top1Accuracy(), Top5Accuracy()], batch_size=128)
    print(f"   the LeNet as it came from Caffe (trained on MNIST), on {len(held_out)} held-out digits: "
          f"{_accuracy(before)}")

    print(f"3. kindling train on Spark ({args.master}): a new last layer ip2_digits, {args.epochs} epochs on "
          f"{len(train_part)} digits, validating on the {len(held_out)} held out")
    logging.getLogger("kindling.optim").addFilter(_OnlyEpochLines())
    opt = train.fit(_command(
        "train", "--model", lenet, "--train", images, "--val-fraction", VAL_FRACTION, "--labels", labels_file,
        "--new-head", "ip2_digits:10", "--epochs", args.epochs, "--batch-size", 32, "--lr", 0.01,
        "--momentum", 0.9, "--nesterov", "--weight-decay", 1e-4, "--checkpoint", checkpoints, "--log-dir", logs,
        "--app-name", "demo", "--seed", args.seed, "--master", args.master,
        "--conf", "spark.ui.enabled=false"))

    print(f"4. kindling serve --repository {repository} (port 0: a free one), then kindling classify")
    with ServerProcess(repository, logs / "serve.log") as server:
        print(f"   listening on {server.target}; waiting for health SERVING of {MODEL!r}")
        server.wait_serving(MODEL)
        served = served_accuracy(server.client, MODEL, held_out)
        for path, truth, (label, score) in served.shown(SHOWN):
            print(f"   {path.relative_to(out)}: {label} {score:.4f}  (truth {truth})")
        print(f"   held-out as served (version {served.version}): Top-1 {served.top1:.4f}, "
              f"Top-5 {served.top5:.4f} on {len(served.truth)} digits")
    print(f"   server stopped with SIGTERM (exit {server.returncode})")

    report = draw_report(out / "report.png", opt, served, before.as_dict())
    print(f"5. report: {report}")
    print(f"   snapshots: {checkpoints}  (kindling info {checkpoints}/model.N; kindling serve --repository "
          f"{repository})")
    print(f"   TensorBoard logs: {logs / 'demo'}  (tensorboard --logdir {logs})")
    print(f"   server log: {server.log}")
    print(f"done in {time.monotonic() - started:.0f} s: held-out Top-1 {before.score():.4f} as converted, "
          f"{served.top1:.4f} fine-tuned and served")
    return 0 if served.top1 > before.score() else 1
