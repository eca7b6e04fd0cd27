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


def _layouts(x):
    """x as contiguous NCHW and as an NCHW view of NHWC memory (what Conv2d hands on)."""
    return {"nchw": x, "nhwc": nhwc_view(x)} if x.ndim == 4 else {"plain": x}


@pytest.mark.parametrize("shape", [(2, 64, 56, 56), (4, 128, 28, 28), (3, 512, 7, 7), (5, 6, 24, 24), (2, 3, 4, 5, 6),
                                   (7, 5, 1, 1)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_resnet_shapes_both_layouts_match_torch(torch, shape, training):
    rng = np.random.default_rng(5)
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, c) + (1,) * (len(shape) - 2))
         + rng.uniform(-2, 2, (1, c) + (1,) * (len(shape) - 2))).astype(np.float32)
    for layout, xl in _layouts(x).items():
        m = nn.BatchNorm2d(c, momentum=0.3, name=f"bn_{layout}")
        m.params["weight"][...] = rng.uniform(0.5, 1.5, c)
        m.params["bias"][...] = rng.standard_normal(c)
        m.buffers["running_mean"][...] = rng.standard_normal(c)
        m.buffers["running_var"][...] = rng.uniform(0.5, 2, c)
        t = torch.nn.BatchNorm3d(c, momentum=0.3) if len(shape) == 5 else torch.nn.BatchNorm2d(c, momentum=0.3)
        with torch.no_grad():
            t.running_mean.copy_(torch.from_numpy(m.buffers["running_mean"]))
            t.running_var.copy_(torch.from_numpy(m.buffers["running_var"]))
        if not training:
            m.evaluate()
            t.eval()
        check_module(torch, m, t, xl)
        assert_close(m.buffers["running_mean"], to_numpy(t.running_mean), 1e-5, f"{layout} running_mean")
        assert_close(m.buffers["running_var"], to_numpy(t.running_var), 1e-5, f"{layout} running_var")


@pytest.mark.parametrize("shape", [(3, 3, 1, 1), (5, 3, 1, 1), (1, 4, 3, 5), (3, 1, 4, 4), (3, 7), (3, 1), (4, 3, 97, 1)],
                         ids=str)
def test_batchnorm_degenerate_shapes_both_layouts(torch, shape):
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    for layout, xl in _layouts(x).items():
        t = torch.nn.BatchNorm2d(shape[1]) if len(shape) == 4 else torch.nn.BatchNorm1d(shape[1])
        check_module(torch, nn.BatchNorm2d(shape[1]), t, xl)


def test_batchnorm_gradient_in_other_layout_than_input(torch):
    """grad_out in NCHW memory for an input in NHWC memory (and back): read in the input's order."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 8, 5, 7)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    t = torch.nn.BatchNorm2d(8)
    tx = torch.from_numpy(x).requires_grad_()
    t(tx).backward(torch.from_numpy(gy))
    for xl, gl in ((nhwc_view(x), gy), (x, nhwc_view(gy)), (x[:, :, :, ::-1].copy()[:, :, :, ::-1], gy)):
        m = nn.BatchNorm2d(8)
        m.forward(xl)
        assert_close(m.backward(xl, gl), to_numpy(tx.grad), 1e-4, "grad input")
        assert_close(m.grads["weight"], to_numpy(t.weight.grad), 1e-4, "grad weight")


def test_batchnorm_strided_input_is_copied_not_misread(torch):
    rng = np.random.default_rng(7)
    big = rng.standard_normal((4, 6, 10, 12)).astype(np.float32)
    x = big[:, :, ::2, 1::3]  # neither memory order
    check_module(torch, nn.BatchNorm2d(6), torch.nn.BatchNorm2d(6), x)


def test_batchnorm_large_mean_small_variance_against_float64():
    """A channel with mean 1000 and spread 0.01: E[x^2] - E[x]^2 in float32 would return noise (or a
    negative variance) here; the statistics, output and gradients must match a float64 reference."""
    rng = np.random.default_rng(8)
    shape = (8, 3, 16, 16)
    x = rng.standard_normal(shape)
    x[:, 0] = 1000 + 0.01 * x[:, 0]
    x[:, 1] = -300 + 0.5 * x[:, 1]
    x = x.astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=(0, 2, 3), keepdims=True)
    var = x64.var(axis=(0, 2, 3), keepdims=True)
    xhat = (x64 - mu) / np.sqrt(var + 1e-5)
    n = x.size // 3
    g64 = gy.astype(np.float64)
    gx = (g64 - g64.mean(axis=(0, 2, 3), keepdims=True)
          - xhat * (g64 * xhat).mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(var + 1e-5)
    for layout, xl in _layouts(x).items():
        m = nn.BatchNorm2d(3, momentum=1.0)
        y = m.forward(xl)
        assert_close(m.buffers["running_var"], var.ravel() * n / (n - 1), 1e-4, f"{layout} running_var")
        assert_close(m.buffers["running_mean"], mu.ravel(), 1e-6, f"{layout} running_mean")
        for c in range(3):  # per channel: each is normalised to unit spread
            assert_close(y[:, c], xhat[:, c], 5e-3, f"{layout} output channel {c}")
        got = m.backward(xl, gy)
        for c in range(3):
            assert_close(got[:, c], gx[:, c], 5e-3, f"{layout} grad input channel {c}")
        assert_close(m.grads["weight"], (g64 * xhat).sum(axis=(0, 2, 3)), 5e-3, f"{layout} grad weight")


def _float64_batchnorm(x, gy):
    """Output (gamma 1, beta 0), input gradient and weight gradient of training-mode batch norm, in float64."""
    x64, g64 = x.astype(np.float64), gy.astype(np.float64)
    axes = (0, *range(2, x.ndim))
    mu, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    xhat = (x64 - mu) / np.sqrt(var + 1e-5)
    gx = (g64 - g64.mean(axis=axes, keepdims=True)
          - xhat * (g64 * xhat).mean(axis=axes, keepdims=True)) / np.sqrt(var + 1e-5)
    return xhat, gx, (g64 * xhat).sum(axis=axes)


@pytest.mark.parametrize("offset, centred", [(7.5, False), (9.0, True), (3e3, True)], ids=str)
@pytest.mark.parametrize("shape", [(1, 5, 9, 7), (3, 5, 33, 31), (10, 5, 208, 208)], ids=str)
def test_batchnorm_mean_far_from_or_near_zero_against_float64(shape, offset, centred):
    """One channel's mean ``offset`` standard deviations from zero: up to NEAR the passes use
    PyTorch's x * scale + shift, beyond it they subtract the centre first; both agree with float64
    to float32's rounding (batch 1, odd sizes, a batch whose passes are shared among threads)."""
    from kindling.runtime.layers.batchnorm import NEAR
    assert (offset > NEAR) == centred
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2, (1, shape[1], 1, 1))
    x[:, 2] = offset * 0.25 + 0.25 * (x[:, 2] - x[:, 2].mean()) / x[:, 2].std()  # mean exactly offset std
    x = x.astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    xhat, gx, gw = _float64_batchnorm(x, gy)
    for layout, xl in _layouts(x).items():
        m = nn.BatchNorm2d(shape[1])
        y = m.forward(xl)
        assert (m._center is not None) == centred, f"{layout}: the {'centred' if centred else 'direct'} path"
        assert_close(y, xhat, 2e-5, f"{layout} output")
        assert_close(m.backward(xl, gy), gx, 5e-5, f"{layout} grad input")
        assert_close(m.grads["weight"], gw, 5e-5, f"{layout} grad weight")


@pytest.mark.parametrize("spike_at", [0, 1, 777], ids=lambda i: f"spike{i}")
def test_batchnorm_variance_of_spiky_data_against_float64(spike_at):
    """Nearly constant channels with one large value: the mean of a sample of rows (the centre the
    deviations are taken about) may hold the spike or not; either way the statistics are exact."""
    rng = np.random.default_rng(11)
    x = (5 + 1e-3 * rng.standard_normal((16, 4, 32, 32))).astype(np.float32)
    x.reshape(16, 4, -1)[spike_at % 16, :, spike_at] = 5e3
    x64 = x.astype(np.float64)
    n = x.size // 4
    for layout, xl in _layouts(x).items():
        m = nn.BatchNorm2d(4, momentum=1.0)
        m.forward(xl)
        assert_close(m.buffers["running_mean"], x64.mean(axis=(0, 2, 3)), 1e-6, f"{layout} mean")
        assert_close(m.buffers["running_var"], x64.var(axis=(0, 2, 3)) * n / (n - 1), 1e-5, f"{layout} var")


def test_batchnorm_frozen_eval_and_no_input_gradient(torch):
    """Frozen: no parameter gradients; evaluate mode still gives them (fine-tuning on global
    statistics); gradients accumulate across backward calls; propagate_down False skips grad input."""
    rng = np.random.default_rng(9)
    x = nhwc_view(rng.standard_normal((4, 5, 6, 6)).astype(np.float32))
    gy = rng.standard_normal(x.shape).astype(np.float32)
    m = nn.BatchNorm2d(5)
    m.forward(x)
    m.backward(x, gy)
    once = {k: v.copy() for k, v in m.grads.items()}
    m.backward(x, gy)
    for k in once:
        assert_close(m.grads[k], 2 * once[k], 1e-6, f"accumulated {k}")
    m.zero_grad()
    m.freeze()
    gx = m.backward(x, gy)
    assert not any(np.any(v) for v in m.grads.values())
    m.propagate_down = False
    assert m.backward(x, gy) is None
    m.frozen, m.propagate_down = False, True
    m.evaluate()
    t = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        t.running_mean.copy_(torch.from_numpy(m.buffers["running_mean"]))
        t.running_var.copy_(torch.from_numpy(m.buffers["running_var"]))
    check_module(torch, m, t, x)
    assert gx.shape == x.shape


def test_batchnorm_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(10)
    for shape in ((8, 64, 28, 28), (16, 64, 48, 48)):  # the second's passes are shared among threads
        _same_bits_on_any_thread_count(nhwc_view(rng.standard_normal(shape).astype(np.float32)), rng)


def _same_bits_on_any_thread_count(x, rng):
    from kindling.runtime.parallel import pool
    gy = nhwc_view(rng.standard_normal(x.shape).astype(np.float32))
    results = []
    before = pool.max_threads
    try:
        for threads in (1, 2, 3):
            pool.set_threads(threads)
            m = nn.BatchNorm2d(64)
            y = m.forward(x).copy()
            results.append((y, m.backward(x, gy).copy(), m.grads["weight"].copy(), m.buffers["running_var"].copy()))
    finally:
        pool.set_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


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
