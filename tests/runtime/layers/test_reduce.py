"""Caffe's Reduction against torch (autograd for the gradients) and ArgMax against torch.topk,
with Caffe's rule for ties."""
import numpy as np
import pytest

from helpers import check_function, to_numpy
from kindling.runtime import nn

X = (2, 3, 4, 5)
TORCH_OPS = {
    "sum": lambda t: t.sum(-1),
    "asum": lambda t: t.abs().sum(-1),
    "sumsq": lambda t: (t * t).sum(-1),
    "mean": lambda t: t.mean(-1),
}


def _x(seed=0, shape=X):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 3, -2])
@pytest.mark.parametrize("op", TORCH_OPS)
def test_reduction_matches_torch(torch, op, axis):
    a = axis % len(X)
    f = lambda t: 0.7 * TORCH_OPS[op](t.reshape(*X[:a], -1))  # noqa: E731
    y, _ = check_function(torch, nn.Reduction(op, axis, coeff=0.7), f, _x())
    assert y.shape == X[:a]


def test_reduction_refuses_unknown_operation_and_axis():
    with pytest.raises(ValueError, match="unknown operation 'max'"):
        nn.Reduction("max")
    with pytest.raises(ValueError, match="axis 4 is out of range"):
        nn.Reduction("sum", 4).forward(_x())


@pytest.mark.parametrize("axis,top_k", [(1, 1), (1, 2), (-1, 3), (0, 1)])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_along_axis_matches_torch_topk(torch, axis, top_k, out_max_val):
    x = _x(1)
    values, indices = torch.topk(torch.from_numpy(x), top_k, dim=axis)
    y = nn.ArgMax(top_k, axis, out_max_val).forward(x)
    assert y.dtype == np.float32
    assert np.array_equal(y, to_numpy(values) if out_max_val else to_numpy(indices).astype(np.float32))


@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_over_each_item_has_caffes_shape(torch, out_max_val):
    x = _x(2)
    values, indices = torch.topk(torch.from_numpy(x).flatten(1), 4, dim=1)
    y = nn.ArgMax(4, None, out_max_val).forward(x)
    expected = np.stack([to_numpy(indices).astype(np.float32), to_numpy(values)], 1) if out_max_val else \
        to_numpy(indices).astype(np.float32)[:, None]
    assert y.shape == (2, 2 if out_max_val else 1, 4, 1)
    assert np.array_equal(y[..., 0], expected)
    assert nn.ArgMax().forward(_x(3, (2, 6))).shape == (2, 1, 1), "at least 3 axes, as in Caffe"


def test_argmax_ties_go_to_the_larger_index():
    """Caffe sorts (value, index) pairs with std::greater: among equal values the larger index wins."""
    assert np.array_equal(nn.ArgMax(axis=1).forward(np.zeros((1, 3, 2, 2), np.float32)), np.full((1, 1, 2, 2), 2.0))
    x = np.array([[1, 3, 3, 0, 3]], np.float32)
    assert np.array_equal(nn.ArgMax(3, axis=1).forward(x), [[4, 2, 1]])


def test_argmax_refuses_bad_top_k_and_backward():
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        nn.ArgMax(0)
    with pytest.raises(ValueError, match="top_k 4 exceeds the 3 values on axis 1"):
        nn.ArgMax(4, axis=1).forward(_x())
    m = nn.ArgMax(axis=1, name="seg")
    y = m.forward(_x())
    with pytest.raises(RuntimeError, match="ArgMax 'seg' is not differentiable"):
        m.backward(_x(), np.ones_like(y))
