"""The layer namespace: ``from kindling.runtime import nn; nn.Conv2d(...)``.

One table maps each public type name to the file that defines it under ``layers/``; the same
table is what the native format uses to rebuild a saved module by its type name.
"""
from __future__ import annotations

from importlib import import_module

from .module import Container, Module

LAYERS: dict[str, str] = {
    # compute-heavy
    "Linear": "linear",
    "Conv2d": "conv2d",
    "ConvTranspose2d": "conv_transpose2d",
    # pooling
    "MaxPool2d": "pooling",
    "AvgPool2d": "pooling",
    "MaxUnpool2d": "pooling",
    # activations
    "ReLU": "activations",
    "LeakyReLU": "activations",
    "ELU": "activations",
    "Sigmoid": "activations",
    "Tanh": "activations",
    "SELU": "activations",
    "Clip": "activations",
    "ReLU6": "activations",
    "Swish": "activations",
    "HardSigmoid": "activations",
    "HardSwish": "activations",
    "PReLU": "prelu",
    "Softmax": "softmax",
    "LogSoftmax": "softmax",
    "Dropout": "dropout",
    # normalisation
    "BatchNorm2d": "batchnorm",
    "LocalResponseNorm": "lrn",
    "Scale": "scale",
    "InstanceNorm": "instancenorm",
    # Caffe's extra layers
    "Power": "pointwise",
    "AbsVal": "pointwise",
    "BNLL": "pointwise",
    "Bias": "broadcast",
    "ScaleBy": "broadcast",
    "Axpy": "broadcast",
    "Crop": "rearrange",
    "Permute": "rearrange",
    "Slice": "rearrange",
    "ShuffleChannel": "rearrange",
    "Upsample": "rearrange",
    "Normalize": "normalize",
    "MVN": "mvn",
    "Exp": "pointwise",
    "Log": "pointwise",
    "Threshold": "pointwise",
    "Reduction": "reduce",
    "ArgMax": "reduce",
    "ReduceAxes": "reduce",
    "Tile": "rearrange",
    # ONNX's extra layers
    "BinaryOp": "binary",
    "Constant": "binary",
    "Resize": "resize",
    "StridedSlice": "index",
    "Gather": "index",
    # shape
    "Flatten": "shape",
    "Reshape": "shape",
    "Identity": "shape",
    "Pad": "pad",
    # containers and joins
    "Sequential": "sequential",
    "Concat": "merge",
    "Add": "merge",
    "Mul": "merge",
    "Max": "merge",
    "Min": "merge",
    "Graph": "graph",
    # criterions
    "ClassNLLCriterion": "criterions",
    "CrossEntropyCriterion": "criterions",
    "MSECriterion": "criterions",
}

__all__ = ["Module", "Container", "register", *LAYERS]

_extra: dict[str, type] = {}


def register(cls: type) -> type:
    """Makes a user-defined Module type loadable from saved files by its class name."""
    if cls.__name__ in LAYERS:
        raise ValueError(f"{cls.__name__} is a built-in layer type and cannot be replaced")
    _extra[cls.__name__] = cls
    return cls


def layer_type(type_name: str) -> type:
    """The class for a saved type name; a clear error lists the known names."""
    if type_name in _extra:
        return _extra[type_name]
    if type_name not in LAYERS:
        raise KeyError(f"unknown layer type {type_name!r}; known: {', '.join(sorted([*LAYERS, *_extra]))}")
    return getattr(import_module(f".layers.{LAYERS[type_name]}", __package__), type_name)


def __getattr__(name: str):
    if name in LAYERS:
        return layer_type(name)
    raise AttributeError(f"module 'kindling.runtime.nn' has no attribute {name!r}")
