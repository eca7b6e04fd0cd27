"""Weight initialisation (PyTorch's defaults, so fresh layers train alike).

The generator starts from a fixed seed, as PyTorch's does, so a program that builds the same
layers in the same order gets the same weights every run; ``seed(n)`` restarts it, and
``with seeded(n):`` draws a block's layers from their own generator (a new head fixed by a run's
``--seed`` whatever was built before it).

Every parameter and buffer a module makes comes from here, so its shape is checked in one place
before anything is allocated: dimensions are non-negative integers, and the bytes fit the memory
this process has (runtime.memory), else a TooLarge error with the size in GB."""
from __future__ import annotations

import contextlib
import math

import numpy as np

from . import memory
from .errors import TooLarge

DEFAULT_SEED = 0
_rng = np.random.default_rng(DEFAULT_SEED)
_deferred = False


def seed(n: int) -> None:
    global _rng
    _rng = np.random.default_rng(n)


@contextlib.contextmanager
def seeded(*key: int):
    """Within this block, initializers draw from a generator seeded by ``key`` (e.g. the run's
    seed and a purpose); the global generator is left where it was."""
    global _rng
    saved, _rng = _rng, np.random.default_rng(list(key))
    try:
        yield
    finally:
        _rng = saved


def rng() -> np.random.Generator:
    return _rng


# Elements an array may have at most, whatever the memory: numpy's sizes are signed 64-bit.
_MAX_ELEMENTS = 1 << 60


def _checked(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, checked: no negative or non-integer dimension, and (unless
    deferred) bytes that fit the memory this process has."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"a parameter of shape {list(dims)}: dimensions must be non-negative integers")
    dims = tuple(int(d) for d in dims)
    elements = math.prod(dims)
    if elements > _MAX_ELEMENTS:
        raise TooLarge(f"a parameter of shape {list(dims)} has {elements:.3g} elements, too many for any machine")
    if not _deferred:
        memory.check(elements * 4, f"a parameter of shape {list(dims)} (float32)")
    return dims


def placeholder(shape) -> np.ndarray:
    """A read-only float32 array of ``shape`` that holds no memory (a zero-strided view), for a
    parameter that is about to be replaced: its shape is all that is read."""
    return np.broadcast_to(np.float32(0), shape)


def kaiming_uniform(shape, fan_in: int) -> np.ndarray:
    """PyTorch's default for Linear/Conv weights: U(-b, b), b = 1/sqrt(fan_in) (kaiming, a=sqrt(5))."""
    shape = _checked(shape)
    if _deferred:
        return placeholder(shape)
    return _uniform(shape, 1.0 / math.sqrt(max(fan_in, 1)))


def constant(shape, value: float) -> np.ndarray:
    """A float32 array of ``shape`` filled with ``value`` (BatchNorm's ones and zeros, biases)."""
    shape = _checked(shape)
    if _deferred:
        return placeholder(shape)
    return np.full(shape, value, np.float32)


def _uniform(shape, bound: float) -> np.ndarray:
    """U(-bound, bound) drawn directly in float32 (no float64 intermediate twice the size)."""
    a = _rng.random(shape, dtype=np.float32)
    a *= np.float32(2 * bound)
    a -= np.float32(bound)
    return a


@contextlib.contextmanager
def deferred():
    """Within this block initializers return placeholders that hold no memory (``placeholder``):
    for modules whose weights are about to be loaded. No RNG time, no second copy of a large model
    in memory, and a shape that a hostile file's config makes huge costs nothing before the
    loader compares it with the tensors the file really holds."""
    global _deferred
    saved, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = saved


def xavier_uniform(shape, fan_in: int, fan_out: int) -> np.ndarray:
    shape = _checked(shape)
    if _deferred:
        return placeholder(shape)
    return _uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)))
