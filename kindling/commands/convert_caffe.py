"""kindling convert caffe: a prototxt (current or V1 format, deploy or train_val) + caffemodel."""
from __future__ import annotations

HELP = "a Caffe prototxt + caffemodel (current or V1 format)"


def add_arguments(p):
    p.add_argument("--prototxt", required=True, help="net definition (deploy.prototxt or train_val.prototxt)")
    p.add_argument("--caffemodel", help="trained weights (omit to convert the structure only)")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="select layers by their include/exclude stage rules, as Caffe's NetState (DIGITS nets: "
                        "--stage deploy); repeat for several")
    p.add_argument("--phase", choices=["test", "train"], default="test",
                   help="which phase's layers to keep in a train_val net (default: test)")
    p.add_argument("--mean-file", help="a Caffe mean image (mean.binaryproto, or .npy), reduced to per-channel means "
                                       "(instead of --mean)")
    p.add_argument("--softmax-loss-as-softmax", action="store_true",
                   help="turn a train_val file's SoftmaxWithLoss into a Softmax output")
    p.add_argument("--proto", metavar="FORK.proto",
                   help="a Caffe fork's caffe.proto: its parameter fields and V1 layer types are read by name "
                        "(merged into kindling's schema; needs grpcio-tools: pip install 'kindling[caffe-fork]')")
    p.add_argument("--outputs", type=lambda text: [b.strip() for b in text.split(",") if b.strip()],
                   metavar="BLOB1,BLOB2",
                   help="cut the net at these blobs: keep only the layers they need (a detector's backbone, a "
                        "classifier's features); they become the model's outputs, which `kindling run` writes")


# --reference NAME -> the reference for this framework's files
REFERENCES = {"opencv": lambda args: _opencv(args.prototxt, args.caffemodel)}
DEFAULT_REFERENCE = "opencv"


def _opencv(prototxt, caffemodel):
    from kindling.converters.caffe.reference import OpenCVReference
    return OpenCVReference(prototxt, caffemodel)


def convert(args, *, inputs: dict, labels, preprocessing: dict | None):
    from kindling.converters import caffe
    if args.mean_file:
        if args.mean is not None:
            raise ValueError("give --mean or --mean-file, not both")
        preprocessing = {**(preprocessing or {}), "mean": caffe.read_mean(args.mean_file)}
    return caffe.convert(args.prototxt, args.caffemodel, inputs=inputs, labels=labels, preprocessing=preprocessing,
                         softmax_loss_as_softmax=args.softmax_loss_as_softmax, phase=args.phase, stages=args.stage,
                         outputs=args.outputs, proto=args.proto)
