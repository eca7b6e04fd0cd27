"""Caffe's MVN against its formula written with torch ops, y = (x - mean) / (std + eps) (autograd
for the gradient), and against float64 finite differences."""
import numpy as np
import pytest

from helpers import assert_close, check_function, numeric_grad
from kindling.runtime import nn


def _torch_mvn(torch, normalize_variance, across_channels, eps):
    def f(t):
        g = t.reshape(t.shape[0], -1) if across_channels else t.reshape(t.shape[0] * t.shape[1], -1)
        d = g - g.mean(1, keepdim=True)
        if normalize_variance:
            d = d / ((d * d).mean(1, keepdim=True).sqrt() + eps)
        return d.reshape(t.shape)
    return f


@pytest.mark.parametrize("eps", [1e-9, 0.5])
@pytest.mark.parametrize("across_channels", [False, True])
@pytest.mark.parametrize("normalize_variance", [True, False])
def test_mvn_matches_torch(torch, normalize_variance, across_channels, eps):
    # Not seed 0: check_module draws grad_out with it, and a grad_out that is an affine copy of x
    # has a zero MVN gradient, which would check nothing.
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(np.float32) * 2 + 1
    check_function(torch, nn.MVN(normalize_variance, across_channels, eps),
                   _torch_mvn(torch, normalize_variance, across_channels, eps), x)


def test_mvn_gradient_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 3, 3))
    gy = rng.standard_normal(x.shape).astype(np.float32)
    m = nn.MVN(eps=0.3)

    def f(z):
        g = z.reshape(4, -1)
        d = g - g.mean(1, keepdims=True)
        return float(((d / (d.std(1, keepdims=True) + 0.3)).reshape(z.shape) * gy).sum())
    m.forward(x.astype(np.float32))
    assert_close(m.backward(x.astype(np.float32), gy), numeric_grad(f, x.copy()), 1e-3)


def test_constant_group_gives_zeros_not_nan():
    x = np.ones((1, 2, 3, 3), np.float32)
    m = nn.MVN()
    assert np.array_equal(m.forward(x), np.zeros_like(x))
    assert np.all(np.isfinite(m.backward(x, np.ones_like(x))))
