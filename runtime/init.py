"""Weight initialisation (PyTorch's defaults, so fresh layers train alike).

The generator starts from a fixed seed, as PyTorch's does, so a program that builds the same
layers in the same order gets the same weights every run; ``seed(n)`` restarts it, and
``with seeded(n):`` draws a block's layers from their own generator (a new head fixed by a run's
``--seed`` whatever was built before it)."""
from __future__ import annotations

import contextlib
import math

import numpy as np

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


def kaiming_uniform(shape, fan_in: int) -> np.ndarray:
    """PyTorch's default for Linear/Conv weights: U(-b, b), b = 1/sqrt(fan_in) (kaiming, a=sqrt(5))."""
    if _deferred:
        return np.empty(shape, np.float32)
    return _uniform(shape, 1.0 / math.sqrt(max(fan_in, 1)))


def _uniform(shape, bound: float) -> np.ndarray:
    """U(-bound, bound) drawn directly in float32 (no float64 intermediate twice the size)."""
    a = _rng.random(shape, dtype=np.float32)
    a *= np.float32(2 * bound)
    a -= np.float32(bound)
    return a


@contextlib.contextmanager
def deferred():
    """Within this block initializers return uninitialised arrays: for modules whose weights are
    about to be loaded (no RNG time, and no second copy of a large model in memory)."""
    global _deferred
    saved, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = saved


def xavier_uniform(shape, fan_in: int, fan_out: int) -> np.ndarray:
    if _deferred:
        return np.empty(shape, np.float32)
    return _uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)))
