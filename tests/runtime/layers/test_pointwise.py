"""Caffe's Exp, Log and Threshold against their formulas written with torch ops (autograd for the
gradients)."""
import math

import numpy as np
import pytest

from helpers import assert_close, check_function, nhwc_view
from kindling.runtime import nn

X = (2, 3, 5, 4)


def _x(seed=0, shape=X):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("base,scale,shift", [(-1, 1, 0), (2, 0.5, 1), (10, -0.3, -2), (-1, 2, 0.5)])
def test_exp_matches_torch(torch, base, scale, shift):
    ln_base = 1.0 if base == -1 else math.log(base)
    check_function(torch, nn.Exp(base, scale, shift), lambda t: torch.exp(ln_base * (shift + scale * t)), _x())


@pytest.mark.parametrize("base,scale,shift", [(-1, 1, 0), (2, 0.5, 4), (10, -0.3, 5)])
def test_log_matches_torch(torch, base, scale, shift):
    ln_base = 1.0 if base == -1 else math.log(base)
    x = _x(1)
    if (base, scale, shift) == (-1, 1, 0):
        x = np.abs(x) + 0.1  # the plain log needs positive inputs
    check_function(torch, nn.Log(base, scale, shift), lambda t: torch.log(shift + scale * t) / ln_base, x)


def test_exp_and_log_keep_nhwc_views():
    x = nhwc_view(np.abs(_x(2)) + 0.5)
    for m, f in ((nn.Exp(2, 0.5, 1), lambda z: 2 ** (1 + 0.5 * z)),
                 (nn.Log(3, 2, 0), lambda z: np.log(2 * z) / np.log(3))):
        assert_close(m.forward(x), f(x), 1e-5, type(m).__name__)


@pytest.mark.parametrize("cls", [nn.Exp, nn.Log])
@pytest.mark.parametrize("base", [0.0, -2.0])
def test_bad_base_is_refused(cls, base):
    with pytest.raises(ValueError, match="base must be positive"):
        cls(base, name="e")


def test_threshold_forward_and_no_backward(torch):
    x = _x(3)
    x[0, 0, 0, :2] = 0.25  # equal to the threshold: 0, as x > t is strict
    m = nn.Threshold(0.25, name="th")
    y = m.forward(x)
    assert y.dtype == np.float32 and np.array_equal(y, (torch.from_numpy(x) > 0.25).float().numpy())
    assert not y[0, 0, 0, :2].any()
    with pytest.raises(RuntimeError, match="Threshold 'th' is not differentiable"):
        m.backward(x, np.ones_like(y))
