"""Weight initialisation (PyTorch's defaults, so fresh layers train alike), seeded by
``kindling.runtime.init.seed(n)``."""
from __future__ import annotations

import contextlib
import math

import numpy as np

_rng = np.random.default_rng()
_deferred = False


def seed(n: int) -> None:
    global _rng
    _rng = np.random.default_rng(n)


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
