"""Pad against PyTorch's F.pad (constant values, negative amounts crop), forward and gradients."""
import numpy as np
import pytest

from helpers import check_function, nhwc_view
from kindling.runtime import nn
from kindling.runtime.shapes import probe


def _x(shape=(2, 3, 5, 4), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_pad(pads):
    """kindling's (before, after) per axis, batch first -> F.pad's pairs, last axis first."""
    pairs = list(zip(pads[::2], pads[1::2]))
    return [v for b, a in reversed(pairs) for v in (b, a)]


@pytest.mark.parametrize("pads,value", [
    ([0, 0, 0, 0, 0, 1, 0, 1], 0.0),          # TensorFlow's extra row and column of SAME padding
    ([0, 0, 0, 0, 1, 2, 2, 1], 0.0),
    ([0, 0, 1, 1, 0, 0, 0, 0], 0.5),          # channels, with a value
    ([0, 0, 0, 0, -1, -1, -1, 0], 0.0),       # crops
    ([0, 0, -1, 0, 2, -2, 0, 3], -1.5),       # crop and pad at once
])
def test_pad_matches_torch(torch, pads, value):
    import torch.nn.functional as F
    check_function(torch, nn.Pad(pads, value), lambda t: F.pad(t, _torch_pad(pads), value=value), _x())


def test_pad_with_minus_infinity_as_max_pooling_needs(torch):
    import torch.nn.functional as F
    x = _x()
    y = nn.Pad([0, 0, 0, 0, 1, 1, 0, 1], -np.inf).forward(x)
    assert np.array_equal(y, F.pad(torch.from_numpy(x), [0, 1, 1, 1], value=-float("inf")).numpy())


def test_pad_of_a_matrix_matches_torch(torch):
    import torch.nn.functional as F
    check_function(torch, nn.Pad([0, 0, 2, -1]), lambda t: F.pad(t, [2, -1]), _x((3, 6)))


def test_pad_keeps_nhwc_memory_and_knows_its_shape():
    x = nhwc_view(_x())
    m = nn.Pad([0, 0, 0, 0, 1, 2, 0, 1])
    y = m.forward(x)
    assert y.shape == (2, 3, 8, 5) == probe(m, [x.shape])
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    assert np.array_equal(y[:, :, 1:6, :4], x) and not y[:, :, 0].any() and not y[:, :, 6:].any()


def test_pad_refuses_wrong_pairs_and_crops_past_the_size():
    with pytest.raises(ValueError, match="a \\(before, after\\) pair per axis"):
        nn.Pad([1, 2, 3], name="p")
    with pytest.raises(ValueError, match="2 \\(before, after\\) pairs for an input with 4 axes"):
        nn.Pad([0, 0, 1, 1], name="p").forward(_x())
    with pytest.raises(ValueError, match="leaves nothing"):
        nn.Pad([0, 0, 0, 0, -3, -3, 0, 0], name="p").forward(_x())
