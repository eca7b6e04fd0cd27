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


def nhwc_view(x: np.ndarray) -> np.ndarray:
    """The same values as an NCHW view of NHWC memory: what a Conv2d hands to the next layer."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def check_module(torch, module, tmodule, x, rtol=1e-4, params=None, seed=0):
    """Forward, grad input and grad of every parameter of ``module`` against ``tmodule``.

    ``params`` maps kindling parameter names to torch attribute names (default: same names);
    kindling's values are copied into torch first, so both start from the same weights."""
    params = params if params is not None else {k: k for k in module.params}
    with torch.no_grad():
        for k, tk in params.items():
            getattr(tmodule, tk).copy_(torch.from_numpy(np.asarray(module.params[k])))
    for p in tmodule.parameters():
        p.grad = None
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    ty = tmodule(tx)
    y = module.forward(x)
    assert_close(y, to_numpy(ty), rtol, "forward")
    gy = np.random.default_rng(seed).standard_normal(np.shape(y)).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    module.zero_grad()
    gx = module.backward(x, gy)
    assert_close(gx, to_numpy(tx.grad), rtol, "grad input")
    for k, tk in params.items():
        assert_close(module.grads[k], to_numpy(getattr(tmodule, tk).grad), rtol, f"grad {k}")
    return y, gx


def check_function(torch, module, fn, x, rtol=1e-4, seed=0):
    """``check_module`` for a module without parameters against a torch expression ``fn(t)``
    (a Caffe formula written with torch ops, differentiated by autograd)."""
    class Fn(torch.nn.Module):
        def forward(self, t):
            return fn(t)
    return check_module(torch, module, Fn(), x, rtol, params={}, seed=seed)
