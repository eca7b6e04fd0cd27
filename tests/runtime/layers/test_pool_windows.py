"""Max pooling's forward and backward bit for bit against PyTorch (pool_windows.py): ties, padding,
ceil mode, -inf windows, NCHW views of NHWC memory and plain NCHW inputs, batch 1, images large
enough to be cut into bands of rows; average pooling on the same blocks; and no padded copy."""
import numpy as np
import pytest

from helpers import assert_close, nhwc_view
from kindling.runtime import nn
from kindling.runtime.layers import pool_windows
from kindling.runtime.workspace import Workspace, using

# (kernel, stride, padding, ceil_mode): ResNet's stem, VGG/LeNet, Caffe's AlexNet/GoogLeNet, and odd ones
GEOMETRIES = {
    "3x3_s2_pad1_resnet": (3, 2, 1, False),
    "2x2_s2_vgg": (2, 2, 0, False),
    "3x3_s2_ceil_caffe": (3, 2, 0, True),
    "3x3_s2_pad1_ceil": (3, 2, 1, True),
    "3x3_s1_pad1": (3, 1, 1, False),
    "2x2_s3_gaps": (2, 3, 0, False),
    "rect_3x2_s_2x1_pad_1x0": ((3, 2), (2, 1), (1, 0), True),
}
# (N, C, H, W): batch 1 and a batch; odd and even sizes; the last two are cut into bands of rows
SHAPES = [(1, 3, 9, 8), (4, 5, 11, 10), (2, 32, 97, 101), (1, 64, 70, 70)]
INPUTS = {
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "ties": lambda rng, shape: rng.integers(0, 3, shape),      # most windows hold a tie
    "all_equal": lambda rng, shape: np.full(shape, 0.5),       # every window ties everywhere
}


def _torch_pool(torch, x, gy, k, s, p, ceil):
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    ty = torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=ceil)
    ty.backward(torch.from_numpy(np.ascontiguousarray(gy)))
    return ty.detach().numpy(), tx.grad.numpy()


def _exactly(torch, m, x, k, s, p, ceil, seed=1):
    y = m.forward(x)
    gy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    ty, tgx = _torch_pool(torch, x, gy, k, s, p, ceil)
    np.testing.assert_array_equal(y, ty)
    gx = m.backward(x, nhwc_view(gy))
    # bit for bit: the same winners, their gradients added in PyTorch's order, +0.0 elsewhere
    np.testing.assert_array_equal(gx.view(np.int32), tgx.view(np.int32))


@pytest.mark.parametrize("layout", ["nhwc_view", "nchw"])
@pytest.mark.parametrize("values", INPUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_max_pool_is_bit_identical_to_torch(torch, geometry, shape, values, layout):
    k, s, p, ceil = GEOMETRIES[geometry]
    x = INPUTS[values](np.random.default_rng(0), shape).astype(np.float32)
    _exactly(torch, nn.MaxPool2d(k, s, p, ceil_mode=ceil), nhwc_view(x) if layout == "nhwc_view" else x,
             k, s, p, ceil)


def test_max_pool_sums_a_shared_maximum_in_torch_order(torch):
    """One large value every window around it picks: its gradient is the sum of four (3x3 stride 2)
    or nine (3x3 stride 1) gradients, whose rounding depends on the order they are added in."""
    x = np.random.default_rng(2).standard_normal((2, 3, 13, 13)).astype(np.float32)
    x[:, :, 5, 5] = x[:, :, 7, 3] = 9.0
    for k, s, p in ((3, 2, 1), (3, 1, 1), (3, 2, 0)):
        _exactly(torch, nn.MaxPool2d(k, s, p), nhwc_view(x), k, s, p, False, seed=k * s + p)


def test_max_pool_of_all_minus_infinity_routes_to_the_first_element_inside(torch):
    x = np.full((2, 3, 7, 8), -np.inf, np.float32)
    x[1, :, 3:] = np.random.default_rng(3).standard_normal((3, 4, 8))
    _exactly(torch, nn.MaxPool2d(3, 2, 1, ceil_mode=True), x, 3, 2, 1, True)


def test_max_pool_backward_after_an_evaluate_forward_finds_the_winners_again(torch):
    x = nhwc_view(np.random.default_rng(4).integers(0, 4, (3, 8, 15, 14)).astype(np.float32))
    m = nn.MaxPool2d(3, 2, 1)
    m.evaluate()
    _exactly(torch, m, x, 3, 2, 1, False)


@pytest.mark.parametrize("geometry", ["3x3_s2_pad1_resnet", "3x3_s2_ceil_caffe", "rect_3x2_s_2x1_pad_1x0"])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_in_bands_of_rows_matches_torch(torch, geometry, count_include_pad):
    k, s, p, ceil = GEOMETRIES[geometry]
    x = np.random.default_rng(5).standard_normal((2, 32, 97, 101)).astype(np.float32)
    m = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad)
    y = m.forward(nhwc_view(x))
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad)
    assert_close(y, ty.detach().numpy(), 1e-6, "forward")
    gy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    assert_close(m.backward(nhwc_view(x), gy), tx.grad.numpy(), 1e-6, "grad input")


@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
def test_pooling_keeps_no_padded_copy_of_its_input(cls):
    """Scratch for a training step is a few cache-sized blocks per thread, where a padded copy of
    the input took more than the input itself."""
    x = nhwc_view(np.random.default_rng(7).standard_normal((8, 64, 56, 56)).astype(np.float32))
    m = cls(3, 2, 1)
    with using(Workspace()) as ws:
        y = m.forward(x)
        m.backward(x, nhwc_view(np.ones(y.shape, np.float32)))
    assert ws.nbytes < x.nbytes / 4, ws.nbytes
    own = sum(a.nbytes for a in m._scratch.values())  # output, winners' offsets, input gradient
    assert own <= y.nbytes * 1.25 + x.nbytes


def test_blocks_cover_every_image_and_row_once():
    for n, rows, image_bytes in ((16, 56, 112 * 112 * 64 * 4), (64, 16, 32 * 32 * 64 * 4), (1, 7, 80 << 20), (3, 1, 1)):
        seen = np.zeros((n, rows), int)
        for images, (r0, r1) in pool_windows.blocks(n, rows, image_bytes):
            seen[images, r0:r1] += 1
        assert (seen == 1).all()
