"""kindling train: fine-tune a kindling model on a folder of class sub-folders of images."""
from __future__ import annotations

import logging
from pathlib import Path

HELP = "fine-tune a model on image folders (class sub-folders), with validation and checkpoints"


def add_arguments(p):
    p.add_argument("--model", help="the base model (.kdl), e.g. from `kindling convert`")
    p.add_argument("--resume", help="continue from a checkpoint DIR/model.N (and DIR/optimMethod.N)")
    p.add_argument("--train", required=True, help="folder of class sub-folders of training images")
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


def run(args) -> int:
    import kindling
    from kindling.runtime import nn
    from kindling.runtime.data import ImageFolder, Pipeline, read_labels, write_labels
    from kindling.runtime.head import classifier, new_head
    from kindling.runtime.optim import (SGD, Adam, Loss, Optimizer, Top1Accuracy, Top5Accuracy, Trigger,
                                        TrainSummary, ValidationSummary)
    from kindling.runtime.optim.checkpoint import load_checkpoint
    from kindling.runtime.optim.schedules import parse

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if bool(args.model) == bool(args.resume):
        raise ValueError("give exactly one of --model and --resume")
    method = None
    if args.resume:
        model, method = load_checkpoint(args.resume)
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
    train_pipe = Pipeline.from_metadata(pre, train=args.augment)
    data = ImageFolder(args.train, train_pipe, labels=labels)
    if args.val:
        train_set = data
        val_set = ImageFolder(args.val, Pipeline.from_metadata(pre), labels=data.labels)
    else:
        train_set, val_set = data.split(args.val_fraction, seed=args.seed)
        val_set = val_set.with_pipeline(Pipeline.from_metadata(pre))
    if args.new_head and not args.resume:
        name, _, classes = args.new_head.partition(":")
        classes = int(classes or len(data.labels))
        if classes != len(data.labels):
            raise ValueError(f"--new-head {args.new_head}: the training folder has {len(data.labels)} classes")
        old, _ = new_head(model, name, classes)
        print(f"replaced {old.name} ({_outputs(old)} outputs) by a new {name} with {classes} outputs")
    if args.freeze:
        model.freeze(*[n.strip() for n in args.freeze.split(",") if n.strip()])
    if method is None:
        schedule = parse(args.schedule) if args.schedule else None
        if args.optim == "adam":
            method = Adam(learningrate=args.lr, weightdecay=args.weight_decay, learningrate_schedule=schedule)
        else:
            method = SGD(learningrate=args.lr, weightdecay=args.weight_decay, momentum=args.momentum,
                         dampening=0.0 if args.nesterov and args.dampening is None else args.dampening,
                         nesterov=args.nesterov, learningrate_schedule=schedule)
    model.metadata = {**model.metadata, "labels": data.labels, "preprocessing": pre}
    last = list(model.modules())[-1]
    if isinstance(last, nn.Softmax):
        # Caffe deploy nets end in Softmax (Caffe trained them through SoftmaxWithLoss): train
        # through LogSoftmax + ClassNLL instead, which is the same loss, computed stably.
        model.replace(last.name, nn.LogSoftmax(last.axis, name=last.name))
        print(f"{last.name}: Softmax trained as LogSoftmax (outputs are log-probabilities)")
    out = classifier(model)
    criterion = nn.ClassNLLCriterion() if _ends_in_log_softmax(model) else nn.CrossEntropyCriterion()
    opt = Optimizer(model, train_set, criterion, method, Trigger.max_epoch(args.epochs), args.batch_size,
                    seed=args.seed, workers=args.workers)
    metrics = [Top1Accuracy()] + ([Top5Accuracy()] if len(data.labels) > 5 else []) + [Loss(criterion)]
    opt.set_validation(Trigger.every_epoch(), val_set, metrics)
    every = Trigger.several_iteration(args.checkpoint_every) if args.checkpoint_every else Trigger.every_epoch()
    opt.set_checkpoint(args.checkpoint, every)
    if args.log_dir:
        opt.set_train_summary(TrainSummary(args.log_dir, args.app_name))
        opt.set_val_summary(ValidationSummary(args.log_dir, args.app_name))
    print(f"training {type(model).__name__} on {len(train_set)} images of {len(data.labels)} classes, "
          f"validating on {len(val_set)}; head {out.name}")
    Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
    labels_file = write_labels(Path(args.checkpoint) / "labels.txt", data.labels)
    opt.optimize()
    snaps = sorted(Path(args.checkpoint).glob("model.*"), key=lambda p: int(p.name.split(".")[1]))
    print(f"snapshots: {args.checkpoint} (latest {snaps[-1].name if snaps else 'none'}; classes in {labels_file.name})")
    if args.log_dir:
        print(f"TensorBoard logs: {Path(args.log_dir) / args.app_name} (tensorboard --logdir {args.log_dir})")
    if opt.last_validation:
        print("final validation: " + ", ".join(f"{k} {v:.4f}" for k, v in opt.last_validation["results"].items()))
    return 0


def _outputs(layer) -> int:
    return getattr(layer, "out_features", None) or layer.out_channels


def _ends_in_log_softmax(model) -> bool:
    from kindling.runtime import nn
    last = list(model.modules())[-1]
    return isinstance(last, nn.LogSoftmax)
