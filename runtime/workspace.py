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


# ---- input gradients along a chain ---------------------------------------------------------------
# In a Sequential's backward each module's input gradient is read by the module before it and then
# never again, so two buffers per level of nesting serve the whole chain: a module writes into the
# one that does not hold the gradient it reads. The buffers belong to the outermost Sequential (so
# a gradient a model returns stays valid until that model's next backward, as before); a module
# takes one only while it is the child its Sequential is running now (``scope.current``), so a
# module inside a Graph, whose gradients may be read much later, keeps its own.


class _Scope:
    """One level of the chain: the owner's slots, this level's depth, and the child running now.
    ``chain`` is False for the branches of a join: they read the same gradient, and each branch's
    result is added up before the next branch runs, so a Sequential in a branch opens the next
    level but a module there takes no slot of this one."""

    def __init__(self, slots: Workspace, depth: int, chain: bool):
        self.slots, self.depth, self.chain = slots, depth, chain
        self.current = None


def _stack() -> list:
    stack = getattr(_local, "gradient_scopes", None)
    if stack is None:
        stack = _local.gradient_scopes = []
    return stack


def _enclosing(module):
    """The scope ``module`` runs in as its container's current child, or None."""
    stack = _stack()
    return stack[-1] if stack and stack[-1].current is module else None


@contextmanager
def gradient_scope(container, chain: bool) -> Iterator[_Scope]:
    """Opened by a Sequential (``chain=True``) or a join with branches around its children's
    backward; the container sets ``scope.current`` to the child it runs."""
    outer = _enclosing(container)
    if outer is None:
        slots = container.__dict__.get("_gradient_slots")
        if slots is None:
            slots = container._gradient_slots = Workspace()
        scope = _Scope(slots, 0, chain)
    else:  # a join's branches take no buffer of a level: the Sequentials in them open the next one
        scope = _Scope(outer.slots, outer.depth + 1 if chain else outer.depth, chain)
    stack = _stack()
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.pop()


def gradient_buffer(module, key: str, like_or_shape, avoid=None) -> np.ndarray:
    """The array ``module`` writes its input gradient into: one of its chain's two buffers of this
    level (the one not sharing memory with ``avoid``, the gradient it reads) while its Sequential
    runs it, else its own reused buffer ``key``. With an array for ``like_or_shape`` the buffer has
    that array's memory order (an NCHW view of NHWC memory stays one)."""
    like = like_or_shape if isinstance(like_or_shape, np.ndarray) else None
    shape = tuple(like.shape if like is not None else like_or_shape)
    scope = _enclosing(module)
    if scope is None or not scope.chain:
        return module._buffer_like(key, like) if like is not None else module._buffer(key, shape)
    order = sorted(range(len(shape)), key=lambda a: -like.strides[a]) if like is not None else list(range(len(shape)))
    flat_shape = tuple(shape[a] for a in order)
    avoid = [a for a in (avoid if isinstance(avoid, (list, tuple)) else [avoid]) if isinstance(a, np.ndarray)]
    for i in (0, 1):
        buf = scope.slots.array(f"grad{scope.depth}.{i}", flat_shape)
        if not any(np.may_share_memory(buf, a) for a in avoid):
            return buf.transpose(np.argsort(order))
    raise AssertionError("both gradient buffers of a chain level hold live gradients")
