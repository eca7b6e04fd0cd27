"""MaxPool2d / AvgPool2d against PyTorch: padding, ceil mode, count_include_pad, global pooling."""
import numpy as np
import pytest

from helpers import check_module, nhwc_view
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
