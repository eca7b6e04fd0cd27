"""BatchNorm2d, LocalResponseNorm and Scale against PyTorch and a float64 reference."""
import numpy as np
import pytest

from helpers import assert_close, check_module, nhwc_view, numeric_grad, to_numpy
from kindling.runtime import nn


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (1, 2, 3, 3), (6, 4)], ids=str)
def test_batchnorm_train_matches_torch_including_running_stats(torch, shape):
    rng = np.random.default_rng(0)
    c = shape[1]
    m = nn.BatchNorm2d(c, eps=1e-3, momentum=0.2)
    m.params["weight"][...] = rng.uniform(0.5, 1.5, c)
    m.params["bias"][...] = rng.standard_normal(c)
    t = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(c, eps=1e-3, momentum=0.2)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        if len(shape) == 4 and step == 1:
            x = nhwc_view(x)
        check_module(torch, m, t, x)
    assert_close(m.buffers["running_mean"], to_numpy(t.running_mean), 1e-5, "running_mean")
    assert_close(m.buffers["running_var"], to_numpy(t.running_var), 1e-5, "running_var")
    m.evaluate()
    t.eval()
    check_module(torch, m, t, rng.standard_normal(shape).astype(np.float32))


def test_batchnorm_without_affine(torch):
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)
    m = nn.BatchNorm2d(2, affine=False)
    check_module(torch, m, torch.nn.BatchNorm2d(2, affine=False), x)


def test_batchnorm_train_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    m = nn.BatchNorm2d(2, eps=1e-5)
    m.forward(x)
    gx = m.backward(x, gy)

    def loss(z):
        mu = z.mean(axis=(0, 2, 3), keepdims=True)
        var = z.var(axis=(0, 2, 3), keepdims=True)
        return float((((z - mu) / np.sqrt(var + 1e-5)) * gy).sum())
    assert_close(gx, numeric_grad(loss, x.astype(np.float64)), 1e-3)


@pytest.mark.parametrize("size, beta, batch", [(3, 0.75, 2), (5, 0.75, 2), (4, 0.75, 2), (5, 0.6, 1), (4, 1.3, 5)])
def test_lrn_across_channels_matches_torch(torch, size, beta, batch):
    x = np.random.default_rng(3).standard_normal((batch, 7, 3, 4)).astype(np.float32)
    check_module(torch, nn.LocalResponseNorm(size, 1e-2, beta, 2.0),
                 torch.nn.LocalResponseNorm(size, 1e-2, beta, 2.0), x)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # as a Conv2d hands it on
    check_module(torch, nn.LocalResponseNorm(size, 1e-2, beta, 2.0),
                 torch.nn.LocalResponseNorm(size, 1e-2, beta, 2.0), nhwc)


def _lrn_within_reference(x, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL LRN, directly in float64: x / (1 + alpha/size^2 * window sum x^2)^beta."""
    x = x.astype(np.float64)
    pad = (size - 1) // 2
    sq = np.pad(x * x, ((0, 0), (0, 0), (pad, size - 1 - pad), (pad, size - 1 - pad)))
    s = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            s += sq[:, :, i:i + x.shape[2], j:j + x.shape[3]]
    return x / (1 + alpha / size ** 2 * s) ** beta


def test_lrn_within_channel_forward_and_gradient():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    m = nn.LocalResponseNorm(3, alpha=0.3, beta=0.75, region="within")
    assert_close(m.forward(x), _lrn_within_reference(x, 3, 0.3, 0.75))
    gy = rng.standard_normal(x.shape).astype(np.float32)
    gx = m.backward(x, gy)
    small = x[:1, :1, :3, :4].astype(np.float64)
    m.forward(x[:1, :1, :3, :4])
    gsmall = m.backward(x[:1, :1, :3, :4], gy[:1, :1, :3, :4])
    expected = numeric_grad(lambda z: float((_lrn_within_reference(z, 3, 0.3, 0.75) * gy[:1, :1, :3, :4]).sum()), small)
    assert_close(gsmall, expected, 1e-3)
    assert gx.shape == x.shape


def test_scale_per_channel_and_multi_axis(torch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    m = nn.Scale(3)
    m.params["weight"][...] = rng.standard_normal(3)
    m.params["bias"][...] = rng.standard_normal(3)
    w = torch.nn.Parameter(torch.from_numpy(m.params["weight"].copy()))
    b = torch.nn.Parameter(torch.from_numpy(m.params["bias"].copy()))
    tx = torch.from_numpy(x).requires_grad_()
    ty = tx * w.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1)
    y = m.forward(x)
    assert_close(y, to_numpy(ty))
    gy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    assert_close(m.backward(x, gy), to_numpy(tx.grad))
    assert_close(m.grads["weight"], to_numpy(w.grad))
    assert_close(m.grads["bias"], to_numpy(b.grad))
    m2 = nn.Scale((4, 5), bias=False, axis=2)
    m2.params["weight"][...] = rng.standard_normal((4, 5))
    assert_close(m2.forward(x), x * m2.params["weight"])
    with pytest.raises(ValueError, match="does not match"):
        nn.Scale(7, name="sc").forward(x)
