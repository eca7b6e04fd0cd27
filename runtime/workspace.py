"""Scratch memory that lives only inside one call of a layer (column blocks, padded copies of
the input, weight layouts and gradient partial sums), shared by every layer that runs on the same
thread instead of kept by each layer: a model then holds one set of them, the size of its
largest layer's, not one per layer (ResNet-18 training kept 680 MB of them at batch 16).

What outlives a call (outputs, and input gradients the next backward reads) stays with the
layer (``Module._buffer``). A layer takes its workspace once per call on the calling thread
(``for_this_thread``) and passes it to the pieces it hands to kindling's threads, so the pieces of
one call share the caller's buffers by piece index, as they shared the layer's before; two
threads running two models (serving replicas) never share a workspace."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_local = threading.local()


class Workspace:
    """Named flat buffers, each kept at the largest size asked for."""

    def __init__(self):
        self._flat: dict[tuple[str, np.dtype], np.ndarray] = {}

    def array(self, key: str, shape, dtype=np.float32) -> np.ndarray:
        """A C-contiguous ``shape`` view at the start of buffer ``key``; its contents are whatever
        the last user left (the caller fills it)."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape))
        buf = self._flat.get((key, dtype))
        if buf is None or buf.size < size:
            buf = self._flat[(key, dtype)] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def elements(self, key: str, dtype=np.float32) -> int:
        """How many elements buffer ``key`` holds now (0 before its first use)."""
        buf = self._flat.get((key, np.dtype(dtype)))
        return 0 if buf is None else buf.size

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._flat.values())


def for_this_thread() -> Workspace:
    ws = getattr(_local, "workspace", None)
    if ws is None:
        ws = _local.workspace = Workspace()
    return ws


@contextmanager
def using(ws: Workspace) -> Iterator[Workspace]:
    """Layers called on this thread inside the block use ``ws`` (a benchmark reading one layer's
    block sizes; a test starting from an empty workspace)."""
    before = getattr(_local, "workspace", None)
    _local.workspace = ws
    try:
        yield ws
    finally:
        _local.workspace = before


def fill_border(a: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], value: float) -> None:
    """Fills everything of NHWC ``a`` outside rows ``rows[0]:rows[1]`` and columns
    ``cols[0]:cols[1]`` with ``value``: the border of a padded copy whose inside is then written."""
    (r0, r1), (c0, c1) = rows, cols
    a[:, :r0] = value
    a[:, r1:] = value
    a[:, r0:r1, :c0] = value
    a[:, r0:r1, c1:] = value
