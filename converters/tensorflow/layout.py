"""TensorFlow's NHWC next to kindling's NCHW: a 4-D activation of an NHWC graph is held with its
channels second, so axes, shapes and constants that meet it are moved to match. Other ranks (and
NCHW graphs) keep TensorFlow's axis order."""
from __future__ import annotations

import numpy as np

# kindling axis i holds TensorFlow axis TO_KINDLING[i] (N, C, H, W from N, H, W, C)
TO_KINDLING = (0, 3, 1, 2)
TO_TF = (0, 2, 3, 1)


def permuted(layout: str, rank: int) -> bool:
    return layout == "NHWC" and rank == 4


def axis(layout: str, tf_axis: int, rank: int) -> int:
    """The kindling axis of TensorFlow axis ``tf_axis`` of a rank-``rank`` activation."""
    a = int(tf_axis) % rank
    return TO_TF[a] if permuted(layout, rank) else a


def tf_shape(layout: str, shape) -> list[int]:
    """An activation's shape in TensorFlow's axis order, from kindling's."""
    return [shape[i] for i in TO_TF] if permuted(layout, len(shape)) else list(shape)


def kindling_order(layout: str, values) -> list:
    """Per-axis values (a shape, paddings) of a 4-D tensor, from TensorFlow's order to kindling's."""
    return [values[i] for i in TO_KINDLING] if permuted(layout, len(values)) else list(values)


def align(layout: str, c: np.ndarray, rank: int) -> np.ndarray:
    """A constant that broadcasts against a rank-``rank`` activation, as it must look to broadcast
    the same way against kindling's layout."""
    c = np.asarray(c)
    if c.ndim > rank:
        raise ValueError(f"a constant of shape {list(c.shape)} against an activation of rank {rank}")
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return c.transpose(TO_KINDLING) if permuted(layout, rank) else c


def same_order(shape, perm) -> bool:
    """True when permuting ``shape`` by ``perm`` keeps the elements in memory order (only axes of
    size 1 move), so a reshape does it."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)
