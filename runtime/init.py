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
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return _rng.uniform(-bound, bound, size=shape).astype(np.float32)


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
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return _rng.uniform(-bound, bound, size=shape).astype(np.float32)
