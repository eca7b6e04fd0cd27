"""kindling train: fine-tune a kindling model on a folder of class sub-folders of images."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from kindling.runtime.spark.optimizer import DEFAULT_EXCHANGE, EXCHANGES

HELP = "fine-tune a model on image folders (class sub-folders), with validation and checkpoints"


def add_arguments(p):
    p.add_argument("--model", help="the base model (.kdl), e.g. from `kindling convert`")
    p.add_argument("--resume", help="continue from a checkpoint DIR/model.N (and DIR/optimMethod.N)")
    p.add_argument("--train", required=True, help="folder of class sub-folders of training images (with --master: "
                                                  "any URI Spark reads: a path, file://, hdfs://, s3a://)")
    p.add_argument("--val", help="folder of validation images (default: --val-fraction of --train)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="stratified split when no --val (default 0.2)")
    p.add_argument("--labels", help="the classes in index order, one per line (default: the --train sub-folders, "
                                    "sorted); each sub-folder must be one of them")
    p.add_argument("--new-head", metavar="NAME:CLASSES",
                   help="replace the classifier (the last Linear, or 1x1-style Conv2d as in SqueezeNet) by a fresh "
                        "one with this name and class count")
    p.add_argument("--freeze", help="comma-separated modules to freeze, e.g. conv1,conv2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--dampening", type=float, help="default: the momentum (BigDL); 0 for PyTorch's SGD")
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--optim", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--schedule", help="epochstep:20:0.1, step:N:g, multistep:a,b:g, poly:p:max, exponential:s:r")
    p.add_argument("--checkpoint", required=True, help="folder for model.N and optimMethod.N snapshots")
    p.add_argument("--checkpoint-every", type=int, help="iterations between snapshots (default: every epoch)")
    p.add_argument("--log-dir", help="TensorBoard logs go to LOG_DIR/APP_NAME/{train,validation}")
    p.add_argument("--app-name", default="kindling")
    p.add_argument("--input-size", help="H,W (default: the model's preprocessing)")
    p.add_argument("--resize", type=int, help="shorter side before cropping")
    p.add_argument("--mean", help="per-channel mean, e.g. 104,117,123")
    p.add_argument("--std", help="per-channel std")
    p.add_argument("--scale", type=float, help="multiplier after subtracting the mean")
    p.add_argument("--channel-order", choices=["rgb", "bgr", "gray"])
    p.add_argument("--augment", action="store_true", help="random crops and flips for training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    spark = p.add_argument_group("on Apache Spark (pip install kindling[spark]; Java 17 or 21)")
    spark.add_argument("--master", help="train on Spark: local[N], spark://HOST:7077, yarn (or what spark-submit set)")
    spark.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                       help="a Spark setting, e.g. spark.executor.memory=4g (repeatable)")
    spark.add_argument("--num-tasks", type=int, help="barrier tasks (default: every free task slot)")
    spark.add_argument("--exchange", default=DEFAULT_EXCHANGE, choices=sorted(EXCHANGES),
                       help="how the tasks combine gradients (default socket: point to point, sharded)")


def _floats(text):
    return [float(v) for v in text.split(",")] if text else None


def _preprocessing(args, model) -> dict:
    from kindling.runtime.predict import image_preprocessing
    pre = dict(model.metadata.get("preprocessing") or {})
    given = {"mean": _floats(args.mean), "std": _floats(args.std), "scale": args.scale,
             "channel_order": args.channel_order, "resize": args.resize,
             "input_size": [int(v) for v in args.input_size.split(",")] if args.input_size else None}
    pre.update({k: v for k, v in given.items() if v is not None})
    pre = image_preprocessing({**model.metadata, "preprocessing": pre})  # the size and gray from the input shape
    if not (pre or {}).get("input_size"):
        free = " (the model takes any size that fits, but a batch needs one)" if pre is not None else ""
        raise ValueError(f"the input size is unknown{free}: give --input-size H,W")
    _check_size(model, pre["input_size"])
    return pre


def _check_size(model, size) -> None:
    """A size the model does not fit is refused before any image is read, naming the layer."""
    from kindling.runtime.shapes import ShapeError, check
    shape = model.metadata.get("input_shape")
    if not shape or len(shape) != 4:
        return
    sample = model.metadata.get("sample_shape") or shape
    channels = shape[1] if shape[1] > 0 else sample[1]
    if any(0 < d != s for d, s in zip(shape[2:], size)):
        raise ValueError(f"input size {size[0]}x{size[1]}: the model's input shape is {shape}")
    try:
        check(model, [(1, channels, *size)])
    except ShapeError as e:
        raise ValueError(f"input size {size[0]}x{size[1]}: {e}") from e


def settings(args):
    """The command line as fine-tuning settings (``kindling.runtime.finetune.FineTune``)."""
    from kindling.runtime.finetune import FineTune
    return FineTune(epochs=args.epochs, batch_size=args.batch_size, optim=args.optim, lr=args.lr,
                    momentum=args.momentum, dampening=args.dampening, nesterov=args.nesterov,
                    weight_decay=args.weight_decay, schedule=args.schedule, new_head=args.new_head,
                    freeze=[n.strip() for n in (args.freeze or "").split(",") if n.strip()],
                    checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, log_dir=args.log_dir,
                    app_name=args.app_name, seed=args.seed, workers=args.workers)


def run(args) -> int:
    fit(args)
    return 0


def fit(args):
    """Trains as the command line says and returns the Optimizer, trained (``kindling demo`` reads
    its summaries and last validation)."""
    import kindling
    from kindling.runtime.data import read_labels
    from kindling.runtime.optim.checkpoint import load_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if bool(args.model) == bool(args.resume):
        raise ValueError("give exactly one of --model and --resume")
    s = settings(args)
    method = None
    if args.resume:
        model, method = load_checkpoint(args.resume)
        s.new_head, s.freeze = None, []  # the snapshot has its head and frozen layers already
    else:
        model = kindling.load(args.model)
    pre = _preprocessing(args, model)
    labels = read_labels(args.labels) if args.labels else None
    if args.resume:
        trained = model.metadata.get("labels")
        if labels and trained and labels != trained:
            raise ValueError(f"--labels {args.labels} differs from the classes {args.resume} was trained on "
                             f"({len(trained)}: {', '.join(trained[:5])}{', ...' if len(trained) > 5 else ''})")
        labels = labels or trained
    if not args.master:
        train_set, val_set, classes = _local_data(args, pre, labels)
        return _train(args, s, model, method, pre, train_set, val_set, classes, (len(train_set), len(val_set)))
    with _spark_session(args) as spark:
        s.spark = {"num_tasks": args.num_tasks, "exchange": args.exchange,
                   "pipeline": _pipeline(pre, args.augment), "val_pipeline": _pipeline(pre, False)}
        return _train(args, s, model, method, pre, *_spark_data(spark, args, labels))


def _pipeline(pre, train):
    from kindling.runtime.data import Pipeline
    return Pipeline.from_metadata(pre, train=train)


def _local_data(args, pre, labels):
    """(train set, validation set, classes) from local folders."""
    from kindling.runtime.data import ImageFolder
    data = ImageFolder(args.train, _pipeline(pre, args.augment), labels=labels)
    if args.val:
        return data, ImageFolder(args.val, _pipeline(pre, False), labels=data.labels), data.labels
    train_set, val_set = data.split(args.val_fraction, seed=args.seed)
    return train_set, val_set.with_pipeline(_pipeline(pre, False)), data.labels


def _spark_session(args):
    from kindling.runtime.spark.session import running
    # the log lines say how far training is
    return running(args.master, args.app_name, args.conf, **{"spark.ui.showConsoleProgress": "false"})


def _spark_data(spark, args, labels):
    """(train DataFrame, validation DataFrame, classes): images read by Spark on the executors;
    without --val the same stratified split as a local run (only the labels come to the driver)."""
    from kindling.runtime.data.dataset import stratified_split
    from kindling.runtime.spark.data import image_folder_dataframe, labels_of, subset
    data = image_folder_dataframe(spark, args.train, labels)
    classes = labels_of(data)
    if args.val:
        val = image_folder_dataframe(spark, args.val, classes)
        return data, val, classes, (data.count(), val.count())
    ys = [r[1] for r in data.select("index", "label").orderBy("index").collect()]
    train, val = stratified_split(ys, args.val_fraction, args.seed)
    return subset(spark, data, train), subset(spark, data, val), classes, (len(train), len(val))


def _train(args, s, model, method, pre, train_set, val_set, classes, sizes=None):
    from kindling.runtime.data import write_labels
    from kindling.runtime.finetune import fine_tuner, prepare_model
    from kindling.runtime.head import classifier
    from kindling.runtime.optim.checkpoint import snapshots

    for note in prepare_model(model, s, len(classes)):
        print(note)
    model.metadata = {**model.metadata, "labels": classes, "preprocessing": pre}
    opt = fine_tuner(model, train_set, val_set, s, len(classes), method)
    where = f" on Spark ({args.master})" if args.master else ""
    print(f"training {type(model).__name__}{where} on {sizes[0]} images of {len(classes)} classes, "
          f"validating on {sizes[1]}; head {classifier(model).name}")
    Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
    labels_file = write_labels(Path(args.checkpoint) / "labels.txt", classes)
    opt.optimize()
    snaps = snapshots(args.checkpoint)
    print(f"snapshots: {args.checkpoint} (latest {snaps[-1].name if snaps else 'none'}; classes in {labels_file.name})")
    if args.log_dir:
        print(f"TensorBoard logs: {Path(args.log_dir) / args.app_name} (tensorboard --logdir {args.log_dir})")
    if opt.last_validation:
        print("final validation: " + ", ".join(f"{k} {v:.4f}" for k, v in opt.last_validation["results"].items()))
    return opt
