import numpy as np
import pytest

from helpers import assert_close, numeric_grad, to_numpy
from kindling.runtime import nn


@pytest.mark.parametrize("shape,bias", [((5, 7), True), ((1, 7), False), ((3, 2, 2, 2), True)])
def test_linear_matches_torch(torch, shape, bias):
    rng = np.random.default_rng(0)
    fin = int(np.prod(shape[1:]))
    layer = nn.Linear(fin, 4, bias=bias)
    x = rng.standard_normal(shape).astype(np.float32)
    tl = torch.nn.Linear(fin, 4, bias=bias)
    with torch.no_grad():
        for k, v in layer.params.items():
            getattr(tl, k).copy_(torch.from_numpy(v))
    tx = torch.from_numpy(x).requires_grad_()
    ty = tl(tx.reshape(shape[0], -1))
    y = layer.forward(x)
    assert_close(y, to_numpy(ty))
    gy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    gx = layer.backward(x, gy)
    assert gx.shape == x.shape
    assert_close(gx, to_numpy(tx.grad))
    assert_close(layer.grads["weight"], to_numpy(tl.weight.grad))
    if bias:
        assert_close(layer.grads["bias"], to_numpy(tl.bias.grad))


def test_linear_weight_grad_finite_differences():
    rng = np.random.default_rng(1)
    layer = nn.Linear(3, 2)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    gy = rng.standard_normal((4, 2)).astype(np.float32)
    layer.forward(x)
    layer.backward(x, gy)
    b = layer.params["bias"].astype(np.float64)
    expected = numeric_grad(lambda w: float(((x @ w.T + b) * gy).sum()), layer.params["weight"].astype(np.float64))
    assert_close(layer.grads["weight"], expected)


def test_linear_rejects_wrong_width():
    with pytest.raises(ValueError, match="fc9.*expects 3"):
        nn.Linear(3, 2, name="fc9").forward(np.zeros((2, 4), np.float32))
