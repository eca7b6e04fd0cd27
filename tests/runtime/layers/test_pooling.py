"""MaxPool2d / AvgPool2d against PyTorch: padding, ceil mode, count_include_pad, global pooling; max pooling
with indices and MaxUnpool2d (SegNet)."""
import numpy as np
import pytest

from helpers import assert_close, check_module, nhwc_view
from kindling.runtime import nn
from kindling.runtime.layers.pooling import pooled_size

# (kernel, stride, padding, ceil_mode)
GEOMETRIES = {
    "2x2_s2": (2, 2, 0, False),
    "3x3_s2_alexnet": (3, 2, 0, False),
    "3x3_s2_pad1_resnet": (3, 2, 1, False),
    "3x3_s2_ceil_caffe": (3, 2, 0, True),
    "3x3_s2_pad1_ceil": (3, 2, 1, True),
    "2x2_s1_overlap": (2, 1, 0, False),
    "3x3_s3_pad1_ceil": (3, 3, 1, True),
    "rect_2x3_s_1x2": ((2, 3), (1, 2), (1, 1), False),
}
SHAPES = [(2, 3, 7, 9), (1, 2, 8, 8), (2, 2, 6, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_max_pool_matches_torch(torch, geometry, shape):
    k, s, p, ceil = GEOMETRIES[geometry]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    check_module(torch, nn.MaxPool2d(k, s, p, ceil_mode=ceil), torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil), x)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_avg_pool_matches_torch(torch, geometry, shape, count_include_pad):
    k, s, p, ceil = GEOMETRIES[geometry]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    check_module(torch, nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad),
                 torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad), x)


def test_ceil_mode_changes_output_size_like_caffe():
    # Caffe's rounding: ceil((H + 2p - k) / s) + 1 -> 6x6 input, 3x3 window, stride 2: 3, not floor's 2.
    assert pooled_size(6, 3, 2, 0, ceil_mode=True) == 3
    assert pooled_size(6, 3, 2, 0, ceil_mode=False) == 2
    # ... but the last window must start inside the input or its left padding.
    assert pooled_size(5, 2, 2, 1, ceil_mode=True) == 3
    y = nn.MaxPool2d(3, 2, ceil_mode=True).forward(np.zeros((1, 1, 6, 6), np.float32))
    assert y.shape == (1, 1, 3, 3)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_global_pooling_and_nhwc_views(torch, kind):
    x = nhwc_view(np.random.default_rng(2).standard_normal((2, 4, 5, 7)).astype(np.float32))
    ours = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(global_pooling=True)
    theirs = (torch.nn.AdaptiveMaxPool2d if kind == "max" else torch.nn.AdaptiveAvgPool2d)(1)
    y, _ = check_module(torch, ours, theirs, x)
    assert y.shape == (2, 4, 1, 1)


def test_max_pool_ties_route_to_first_maximum(torch):
    x = np.ones((1, 1, 4, 4), np.float32)
    check_module(torch, nn.MaxPool2d(2, 2), torch.nn.MaxPool2d(2, 2), x)
    check_module(torch, nn.MaxPool2d(3, 1, 1), torch.nn.MaxPool2d(3, 1, 1), x)


def test_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size is required"):
        nn.MaxPool2d()
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.AvgPool2d(2, padding=2, name="p")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.MaxPool2d(5, name="p5").forward(np.zeros((1, 1, 3, 3), np.float32))


# ---- max pooling with indices and max-unpooling (SegNet's Pooling mask top and Upsample) ----------------
# (kernel, stride, padding, ceil_mode, input shape)
WITH_INDICES = {
    "2x2_s2_even": (2, 2, 0, False, (2, 3, 8, 6)),
    "2x2_s2_odd_ceil_segnet_pool5": (2, 2, 0, True, (2, 3, 23, 15)),
    "2x2_s2_odd_ceil_batch1": (2, 2, 0, True, (1, 4, 5, 7)),
    "3x3_s2_pad1_ceil": (3, 2, 1, True, (2, 2, 7, 9)),
    "3x3_s1_overlap": (3, 1, 1, False, (1, 2, 5, 6)),
}


def _pool_with_indices(torch, x, k, s, p, ceil):
    tx = torch.from_numpy(x).requires_grad_()
    ty, ti = torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=ceil, return_indices=True)
    return tx, ty, ti


@pytest.mark.parametrize("case", WITH_INDICES)
def test_max_pool_indices_match_torch(torch, case):
    k, s, p, ceil, shape = WITH_INDICES[case]
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    m = nn.MaxPool2d(k, s, p, ceil_mode=ceil, return_indices=True)
    y, idx = m.forward(nhwc_view(x) if shape[0] > 1 else x)
    tx, ty, ti = _pool_with_indices(torch, x, k, s, p, ceil)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    assert idx.dtype == np.float32  # Caffe's mask is a float blob
    np.testing.assert_array_equal(idx, ti.numpy())
    assert m.output_shape(shape) == [y.shape, y.shape] and m.num_outputs == 2
    gy = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    gx = m.backward(x, [gy, np.zeros_like(idx)])  # the indices' gradient is ignored
    assert_close(gx, tx.grad.numpy(), 1e-6, "grad input")


def test_max_pool_indices_keep_the_first_maximum_in_scan_order(torch):
    x = np.array([[[[1, 3, 3, 0], [3, 2, 0, 0], [5, 5, 1, 1], [5, 5, 1, 1]]]], np.float32)
    _, idx = nn.MaxPool2d(2, 2, return_indices=True).forward(x)
    np.testing.assert_array_equal(idx, [[[[1, 2], [8, 10]]]])  # ties: first in h, then w
    _, _, ti = _pool_with_indices(torch, x, 2, 2, 0, False)
    np.testing.assert_array_equal(idx, ti.numpy())


@pytest.mark.parametrize("case", WITH_INDICES)
def test_max_unpool_matches_torch_with_explicit_output_size(torch, case):
    k, s, p, ceil, shape = WITH_INDICES[case]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    _, ty, ti = _pool_with_indices(torch, x, k, s, p, ceil)
    v = np.random.default_rng(6).standard_normal(ty.shape).astype(np.float32)  # e.g. a decoder's features
    mask = ti.numpy().astype(np.float32)
    u = nn.MaxUnpool2d(output_size=shape[2:])
    out = u.forward([nhwc_view(v), nhwc_view(mask)])
    tv = torch.from_numpy(v).requires_grad_()
    tout = torch.nn.functional.max_unpool2d(tv, ti, k, s, p, output_size=shape[2:])
    np.testing.assert_array_equal(out, tout.detach().numpy())
    g = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
    tout.backward(torch.from_numpy(g))
    gv, gmask = u.backward([v, mask], g)
    np.testing.assert_array_equal(gv, tv.grad.numpy())
    assert not gmask.any() and gmask.shape == mask.shape


def test_max_unpool_size_from_scale_and_pad_out(torch):
    x = np.random.default_rng(8).standard_normal((1, 3, 9, 8)).astype(np.float32)
    _, ty, ti = _pool_with_indices(torch, x, 2, 2, 0, True)  # 5x4
    v, mask = ty.detach().numpy(), ti.numpy().astype(np.float32)
    assert nn.MaxUnpool2d(2).forward([v, mask]).shape == (1, 3, 10, 8)  # Caffe: scale x input
    out = nn.MaxUnpool2d(2, pad_out=(1, 0)).forward([v, mask])  # Caffe's pad_out_h: one row less
    expect = torch.nn.functional.max_unpool2d(ty, ti, 2, 2, output_size=(9, 8)).detach().numpy()
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(out[x == out], x[x == out])  # each maximum back where it was


def test_max_unpool_refuses_indices_outside_the_output():
    v = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="u.*outside the 3x3 output"):
        nn.MaxUnpool2d(output_size=(3, 3), name="u").forward([v, np.full_like(v, 9)])
    with pytest.raises(ValueError, match="same shape"):
        nn.MaxUnpool2d(name="u").forward([v, np.zeros((1, 1, 2, 3), np.float32)])


def test_pool_unpool_graph_trains_and_round_trips(torch, tmp_path):
    """SegNet's shape: pooling's mask feeds an unpooling further on, in a Graph; forward and the
    input gradient against torch, then save and load."""
    import kindling
    g = nn.Graph(inputs=["x"], outputs=["up"], name="g")
    g.add(nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True, name="pool"), ["x"])
    g.add(nn.Scale([3], name="mid"), ["pool:0"])
    g.add(nn.MaxUnpool2d(output_size=(7, 5), name="up"), ["mid", "pool:1"])
    g.find("mid").params["weight"][...] = [2, -1, 0.5]
    x = np.random.default_rng(9).standard_normal((2, 3, 7, 5)).astype(np.float32)
    y = g.forward(x)
    tx = torch.from_numpy(x).requires_grad_()
    tp, ti = torch.nn.functional.max_pool2d(tx, 2, 2, ceil_mode=True, return_indices=True)
    ty = torch.nn.functional.max_unpool2d(tp * torch.tensor([2, -1, 0.5]).view(1, 3, 1, 1), ti, 2, 2,
                                          output_size=(7, 5))
    assert_close(y, ty.detach().numpy(), 1e-6, "forward")
    gy = np.random.default_rng(10).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    assert_close(g.backward(x, gy), tx.grad.numpy(), 1e-6, "grad input")
    loaded = kindling.load(kindling.save(g, tmp_path / "segnet_like.kdl"))
    assert loaded.find("pool").return_indices and loaded.find("up").output_size == (7, 5)
    np.testing.assert_array_equal(loaded.forward(x), y)


@pytest.mark.parametrize("geometry", ["2x2_s2", "3x3_s2_pad1_ceil", "rect_2x3_s_1x2"])
def test_max_pool_of_one_large_image_in_bands_of_rows(torch, geometry):
    """Batch-1 max pooling shares bands of output rows among the threads (in pieces when the
    image is large enough): every band edge must see the rows its windows reach."""
    k, s, p, ceil = GEOMETRIES[geometry]
    x = np.random.default_rng(1).standard_normal((1, 16, 261, 259)).astype(np.float32)
    y = nn.MaxPool2d(k, s, p, ceil_mode=ceil).forward(nhwc_view(x))
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=ceil).numpy()
    np.testing.assert_array_equal(y, expected)
