"""Conv2d against torch.nn.functional.conv2d: forward, grad input, grad weight, grad bias."""
import numpy as np
import pytest

from helpers import assert_close, numeric_grad, to_numpy
from kindling.runtime import nn

CASES = {
    # name: (in, out, kernel, stride, padding, dilation, groups, bias, N, H, W)
    "plain_3x3": (3, 4, 3, 1, 0, 1, 1, True, 2, 9, 7),
    "stride2_pad1": (3, 4, 3, 2, 1, 1, 1, True, 2, 9, 7),
    "rect_kernel_dilation_groups": (4, 6, (3, 2), (2, 1), (1, 2), (2, 1), 2, False, 2, 11, 8),
    "depthwise": (4, 4, 3, 1, 1, 1, 4, True, 2, 7, 7),
    "depthwise_multiplier_stride2": (4, 8, 3, 2, 1, 1, 4, True, 2, 9, 6),
    "pointwise": (3, 5, 1, 1, 0, 1, 1, True, 2, 5, 5),
    "pointwise_stride2": (3, 5, 1, 2, 0, 1, 1, True, 2, 7, 5),
    "5x5_pad2_dil2_groups3": (6, 6, 5, 1, 2, 2, 3, True, 2, 13, 12),
    "batch1_odd": (2, 3, 3, 1, 1, 1, 1, True, 1, 5, 6),
    "lenet_conv1": (1, 20, 5, 1, 0, 1, 1, True, 3, 28, 28),
    "row_shift_stride_w2_dil_h2": (3, 4, 3, (1, 2), 1, (2, 1), 1, True, 2, 9, 8),
    "tall_kernel_groups": (4, 4, (3, 1), 1, (1, 0), 1, 2, True, 2, 6, 5),
    "wide_kernel_stride_h2": (3, 2, (1, 3), (2, 1), (0, 1), 1, 1, False, 2, 7, 6),
    # Stride 1: the input gradient is a convolution with the flipped kernel (padding d*(k-1) - p)...
    "pad_beyond_kernel": (3, 4, 3, 1, 3, 1, 1, True, 2, 5, 6),  # ...except where p > d*(k-1)
    "wide_rows_3x3_pad1": (3, 4, 3, 1, 1, 1, 1, True, 3, 18, 17),
    "wide_rows_no_pad_batch1": (3, 4, 3, 1, 0, 1, 1, False, 1, 6, 20),
    "wide_rows_dilation_groups": (4, 6, 3, 1, (2, 1), (2, 1), 2, True, 2, 9, 20),
    "wide_rows_5x5_dil2": (2, 3, 5, 1, 4, 2, 1, True, 2, 8, 64),
}


def _torch_conv(torch, conv, x):
    tc = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.has_bias)
    with torch.no_grad():
        for k, v in conv.params.items():
            getattr(tc, k).copy_(torch.from_numpy(v))
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    return tc, tx


@pytest.mark.parametrize("layout", ["nchw", "nhwc_view"])
@pytest.mark.parametrize("case", CASES)
def test_conv2d_matches_torch(torch, case, layout):
    cin, cout, k, s, p, d, g, bias, n, h, w = CASES[case]
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    if layout == "nhwc_view":  # what a previous Conv2d hands on: NCHW view of NHWC memory
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    tc, tx = _torch_conv(torch, conv, x)
    ty = tc(tx)
    y = conv.forward(x)
    assert_close(y, to_numpy(ty), what="forward")
    gy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    gx = conv.backward(x, gy)
    assert_close(gx, to_numpy(tx.grad), what="grad input")
    assert_close(conv.grads["weight"], to_numpy(tc.weight.grad), what="grad weight")
    if bias:
        assert_close(conv.grads["bias"], to_numpy(tc.bias.grad), what="grad bias")


PLANE_CASES = {
    # name: (in, out, kernel, stride, padding, dilation, N, H, W): inputs whose columns are gathered
    # from channel planes (NCHW, stride 1 along the width), in evaluate mode, where the batch decides
    # between whole-image blocks (N >= 2 * threads), bands of rows (N = 1) and one shared GEMM
    "lenet_conv1_batch64": (1, 20, 5, 1, 0, 1, 64, 28, 28),
    "lenet_conv1_batch1": (1, 20, 5, 1, 0, 1, 1, 28, 28),
    "rgb_3x3_pad1_batch17": (3, 8, 3, 1, 1, 1, 17, 15, 13),
    "rgb_3x3_pad1_batch1_large": (3, 8, 3, 1, 1, 1, 1, 70, 33),
    "stride_h2_dil_pad_odd": (2, 5, (3, 2), (2, 1), (1, 2), (1, 2), 3, 13, 11),
    "tiny_map_batch2": (3, 4, 3, 1, 0, 1, 2, 4, 5),
}


@pytest.mark.parametrize("case", PLANE_CASES)
def test_conv2d_columns_from_planes_match_torch(torch, case):
    cin, cout, k, s, p, d, n, h, w = PLANE_CASES[case]
    conv = nn.Conv2d(cin, cout, k, s, p, d, name=case).evaluate()
    x = np.random.default_rng(1).standard_normal((n, cin, h, w)).astype(np.float32)
    assert conv._reads_planes(x)
    tc, tx = _torch_conv(torch, conv, x)
    expected = to_numpy(tc(tx))
    assert_close(conv.forward(x), expected, what="forward from planes")
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert conv._reads_planes(nhwc) == (cin == 1)  # one channel: the same memory either way
    assert_close(conv.forward(nhwc), expected, what="forward from NHWC")


def test_conv2d_planes_only_where_rows_are_runs():
    x = np.zeros((2, 3, 9, 9), np.float32)
    assert not nn.Conv2d(3, 4, 3, (1, 2))._reads_planes(x)  # strided along the width
    assert not nn.Conv2d(3, 3, 3, groups=3)._reads_planes(x)  # depthwise has its own path
    assert not nn.Conv2d(3, 4, 1)._reads_planes(x)  # pointwise reads its input as the columns


def test_conv2d_repeated_calls_reuse_buffers_and_accumulate(torch):
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x1, x2 = (rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for _ in range(2))
    y1 = conv.forward(x1).copy()
    out_buffer = conv._scratch["out"]
    y2 = conv.forward(x2)
    assert conv._scratch["out"] is out_buffer, "steady state must not reallocate the output"
    tc, tx = _torch_conv(torch, conv, x2)
    assert_close(y2, to_numpy(tc(tx)))
    assert not np.allclose(y1, y2)
    gy = np.ones(y2.shape, np.float32)
    conv.backward(x2, gy)
    once = conv.grads["weight"].copy()
    conv.forward(x2)
    conv.backward(x2, gy)
    assert_close(conv.grads["weight"], 2 * once, rtol=1e-6)
    conv.zero_grad()
    assert not conv.grads["weight"].any()


def test_conv2d_frozen_accumulates_nothing():
    conv = nn.Conv2d(2, 3, 3)
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 5)).astype(np.float32)
    conv.freeze()
    gx = conv.backward(x, conv.forward(x))
    assert gx.shape == x.shape and "weight" not in conv.grads


def test_conv2d_finite_differences_float64():
    """Gradient wrt input checked by central differences on a double-precision copy of the math."""
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, groups=1)
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    gy = rng.standard_normal(conv.forward(x).shape).astype(np.float32)
    gx = conv.backward(x, gy)
    w = conv.params["weight"].astype(np.float64)

    def loss(xd):
        xp = np.pad(xd, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros(gy.shape)
        for i in range(gy.shape[2]):
            for j in range(gy.shape[3]):
                patch = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
        return float((out * gy).sum())

    assert_close(gx, numeric_grad(loss, x.astype(np.float64)), rtol=1e-4)


def test_conv2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2, name="c")
    conv = nn.Conv2d(3, 4, 5, name="c5")
    with pytest.raises(ValueError, match="c5"):
        conv.forward(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv.forward(np.zeros((1, 3, 3, 3), np.float32))


def test_conv2d_without_input_gradient_still_gives_weight_gradients(torch):
    rng = np.random.default_rng(4)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    tc, tx = _torch_conv(torch, conv, x)
    ty = tc(tx)
    gy = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    conv.propagate_down = False
    conv.forward(x)
    assert conv.backward(x, gy) is None
    assert_close(conv.grads["weight"], to_numpy(tc.weight.grad))


def test_evaluate_mode_weight_cache_follows_weight_changes(torch):
    rng = np.random.default_rng(5)
    conv = nn.Conv2d(3, 4, 3).evaluate()
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    conv.forward(x)
    conv.params["weight"][...] = rng.standard_normal(conv.params["weight"].shape)  # edited in place
    tc, tx = _torch_conv(torch, conv, x)
    assert_close(conv.forward(x), to_numpy(tc(tx)))
    conv.params["weight"] = rng.standard_normal(conv.params["weight"].shape).astype(np.float32)  # replaced
    tc, tx = _torch_conv(torch, conv, x)
    assert_close(conv.forward(x), to_numpy(tc(tx)))
