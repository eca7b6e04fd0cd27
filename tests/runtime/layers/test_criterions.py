import numpy as np
import pytest

from helpers import assert_close, to_numpy
from kindling.runtime import nn


def _torch_loss(torch, loss, x, target):
    tx = torch.from_numpy(x).requires_grad_()
    value = loss(tx, torch.from_numpy(target))
    value.backward()
    return float(value.detach()), to_numpy(tx.grad)


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 0.1]])
@pytest.mark.parametrize("size_average", [True, False])
def test_nll_and_cross_entropy_match_torch(torch, weights, size_average):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 4)).astype(np.float32)
    target = rng.integers(0, 4, 6)
    reduction = "mean" if size_average else "sum"
    tw = None if weights is None else torch.tensor(weights)
    logp = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    for ours, theirs, x in ((nn.ClassNLLCriterion(weights, size_average), torch.nn.NLLLoss(tw, reduction=reduction), logp),
                            (nn.CrossEntropyCriterion(weights, size_average),
                             torch.nn.CrossEntropyLoss(tw, reduction=reduction), scores)):
        x = x.astype(np.float32)
        loss, grad = _torch_loss(torch, theirs, x, target)
        assert abs(ours.forward(x, target) - loss) <= 1e-5 * max(1, abs(loss))
        assert_close(ours.backward(x, target), grad)


def test_nll_on_spatial_outputs(torch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    target = rng.integers(0, 3, (2, 4, 5))
    loss, grad = _torch_loss(torch, torch.nn.NLLLoss(), x, target)
    c = nn.ClassNLLCriterion()
    assert abs(c.forward(x, target) - loss) < 1e-5
    assert_close(c.backward(x, target), grad)


def test_mse_matches_torch(torch):
    rng = np.random.default_rng(2)
    x, y = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    loss, grad = _torch_loss(torch, torch.nn.MSELoss(), x, y)
    c = nn.MSECriterion()
    assert abs(c.forward(x, y) - loss) < 1e-5
    assert_close(c.backward(x, y), grad)


def test_nll_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        nn.ClassNLLCriterion().forward(np.zeros((2, 3), np.float32), np.array([0, 3]))
