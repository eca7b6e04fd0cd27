"""kindling convert torch: PyTorch weights (.pt/.pth or .safetensors) into a kindling model you define."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

HELP = "PyTorch weights (.pt/.pth state_dict or checkpoint, .safetensors) into a kindling model factory"


def _rename(text: str) -> tuple[str, str]:
    source, sep, target = text.partition("=")
    if not sep or not source or not target:
        raise ValueError(f"--rename {text!r}: expected FILE_NAME=MODEL_NAME, e.g. fc=fc_new")
    return source, target


def add_arguments(p):
    p.add_argument("--weights", required=True, help="the .pt/.pth (torch.save) or .safetensors file")
    p.add_argument("--model-def", required=True, metavar="MODULE:FACTORY",
                   help="a callable returning the kindling model whose layer names are the PyTorch module names: "
                        "package.module:factory, or path/to/file.py:factory")
    p.add_argument("--key", help="the checkpoint entry holding the state_dict, when it is not one of state_dict, "
                                 "model_state_dict, model, net, ...")
    p.add_argument("--rename", action="append", default=[], metavar="FILE_NAME=MODEL_NAME",
                   help="load the file's module FILE_NAME into the model's MODEL_NAME; repeat for several")
    p.add_argument("--partial", action="store_true",
                   help="allow modules the file has no weights for (they keep their initialisation; noted)")


def load_factory(spec: str):
    """The callable named by ``package.module:name`` or ``path/to/file.py:name``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"--model-def {spec!r}: expected MODULE:FACTORY, e.g. mymodels.resnet:resnet18")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ValueError(f"--model-def {spec!r}: no file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules.setdefault(path.stem, module)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # as `python -m`: modules in the current directory are found
            module = importlib.import_module(target)
    except ImportError as e:
        raise ValueError(f"--model-def {spec!r}: cannot import {target}: {e}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--model-def {spec!r}: {target} has no callable {name!r}")
    return factory


# --verify compares with stored outputs only (--reference FILE.npz, made where PyTorch runs with
# kindling.converters.pytorch.reference_outputs): the file holds weights, not a model torch could run.
REFERENCES: dict = {}


def convert(args, *, inputs: dict, labels, preprocessing: dict | None):
    from kindling.converters import pytorch
    factory = load_factory(args.model_def)
    try:
        model = factory()
    except TypeError as e:  # most often a factory that needs arguments
        raise ValueError(f"--model-def {args.model_def!r}: calling it with no arguments failed: {e}") from e
    return pytorch.convert(args.weights, model, match_all=not args.partial, rename=dict(map(_rename, args.rename)),
                           key=args.key, inputs=inputs, labels=labels, preprocessing=preprocessing)
