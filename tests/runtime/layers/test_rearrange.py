"""Caffe's Tile against torch's repeat (autograd for the gradient)."""
import numpy as np
import pytest

from helpers import check_function
from kindling.runtime import nn


@pytest.mark.parametrize("axis,tiles", [(1, 3), (0, 2), (-1, 2), (2, 1)])
def test_tile_matches_torch_repeat(torch, axis, tiles):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    reps = [1] * 4
    reps[axis % 4] = tiles
    y, _ = check_function(torch, nn.Tile(axis, tiles), lambda t: t.repeat(*reps), x)
    assert y.shape[axis % 4] == x.shape[axis % 4] * tiles


def test_tile_refuses_bad_arguments():
    with pytest.raises(ValueError, match="tiles must be positive"):
        nn.Tile(1, 0)
    with pytest.raises(ValueError, match="axis 4 is out of range"):
        nn.Tile(4, 2).forward(np.zeros((1, 2, 3, 4), np.float32))
