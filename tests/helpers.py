"""Shared test helpers: comparisons against reference frameworks and finite differences."""
from __future__ import annotations

import numpy as np


def rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the issue's 'relative error')."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def assert_close(actual, expected, rtol: float = 1e-4, what: str = "") -> None:
    err = rel_error(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}"


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function f at x (float64), one coordinate at a time."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        hi = f(x)
        x[i] = old - eps
        lo = f(x)
        x[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g
