"""Inference-time fusion of a convolution with the per-channel affine layers and ReLU after it.

In evaluate mode, Conv2d -> BatchNorm2d -> Scale -> ReLU (any of the last three optional, in that
order) is one pass: the BatchNorm and Scale collapse into a per-channel (scale, shift) that the
convolution applies, with the ReLU, to each block of its output while that block is still in cache,
instead of three more passes over memory. Training never fuses (each layer keeps its input for
backward), and a backward after a fused forward recomputes the forward unfused first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import ReLU
from .batchnorm import BatchNorm2d
from .conv2d import Conv2d
from .scale import Scale


@dataclass
class Epilogue:
    scale: np.ndarray | None   # per output channel, or None
    shift: np.ndarray | None   # per output channel (the conv's bias folded in), or None
    relu: bool


def leads_chain(module) -> bool:
    """True for a module that a fused chain can start with (a Conv2d, not a subclass)."""
    return type(module) is Conv2d


def plan(modules: list, i: int) -> tuple[Epilogue, int] | None:
    """The epilogue for the Conv2d at ``modules[i]`` and how many modules it absorbs (itself
    included), or None when nothing follows it that can be fused."""
    conv = modules[i]
    if not leads_chain(conv):
        return None
    c = conv.out_channels
    scale = np.ones(c, np.float64)
    shift = conv.params["bias"].astype(np.float64) if conv.has_bias else np.zeros(c, np.float64)
    j = i + 1
    if j < len(modules) and type(modules[j]) is BatchNorm2d and modules[j].num_features == c:
        bn = modules[j]
        s = 1.0 / np.sqrt(bn.buffers["running_var"].astype(np.float64) + bn.eps)
        if bn.affine:
            s = s * bn.params["weight"]
        t = -bn.buffers["running_mean"] * s + (bn.params["bias"] if bn.affine else 0.0)
        scale, shift = scale * s, shift * s + t
        j += 1
    if j < len(modules) and type(modules[j]) is Scale and modules[j].shape == [c] and modules[j].axis == 1:
        sc = modules[j]
        w = sc.params["weight"].astype(np.float64)
        scale, shift = scale * w, shift * w + (sc.params["bias"] if sc.has_bias else 0.0)
        j += 1
    relu = j < len(modules) and type(modules[j]) is ReLU
    j += relu
    if j == i + 1:
        return None
    affine = j - (i + 1) - relu > 0
    return Epilogue(scale.astype(np.float32) if affine else None, shift.astype(np.float32), relu), j - i
