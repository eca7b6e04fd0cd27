"""Activations, PReLU, Softmax/LogSoftmax and Dropout against PyTorch and finite differences."""
import numpy as np
import pytest

from helpers import assert_close, check_module, nhwc_view, numeric_grad
from kindling.runtime import nn

SHAPES = [(2, 3, 5, 7), (1, 4, 1, 1), (3, 5)]

ACTIVATIONS = {
    "relu": (lambda: nn.ReLU(), lambda t: t.nn.ReLU()),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda t: t.nn.LeakyReLU(0.2)),
    "elu": (lambda: nn.ELU(0.7), lambda t: t.nn.ELU(0.7)),
    "sigmoid": (lambda: nn.Sigmoid(), lambda t: t.nn.Sigmoid()),
    "tanh": (lambda: nn.Tanh(), lambda t: t.nn.Tanh()),
    "selu": (lambda: nn.SELU(), lambda t: t.nn.SELU()),
    "relu6": (lambda: nn.ReLU6(), lambda t: t.nn.ReLU6()),
    "clip": (lambda: nn.Clip(-0.5, 2.0), lambda t: t.nn.Hardtanh(-0.5, 2.0)),
    "clip_low": (lambda: nn.Clip(low=-0.5), lambda t: t.nn.Hardtanh(-0.5, float("inf"))),
    "clip_high": (lambda: nn.Clip(high=0.5), lambda t: t.nn.Hardtanh(-float("inf"), 0.5)),
    "swish": (lambda: nn.Swish(), lambda t: t.nn.SiLU()),
    "hard_sigmoid": (lambda: nn.HardSigmoid(), lambda t: t.nn.Hardsigmoid()),
    "hard_swish": (lambda: nn.HardSwish(), lambda t: t.nn.Hardswish()),
    "softmax_axis1": (lambda: nn.Softmax(1), lambda t: t.nn.Softmax(1)),
    "log_softmax_axis1": (lambda: nn.LogSoftmax(1), lambda t: t.nn.LogSoftmax(1)),
    "softmax_last_axis": (lambda: nn.Softmax(-1), lambda t: t.nn.Softmax(-1)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_matches_torch(torch, kind, shape):
    make, tmake = ACTIVATIONS[kind]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    check_module(torch, make(), tmake(torch), x)


@pytest.mark.parametrize("kind", ["relu", "elu", "sigmoid", "log_softmax_axis1", "relu6", "swish", "hard_swish"])
def test_activation_on_nhwc_view_keeps_memory_order(torch, kind):
    make, tmake = ACTIVATIONS[kind]
    x = nhwc_view(np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32))
    y, _ = check_module(torch, make(), tmake(torch), x)
    if kind != "log_softmax_axis1":
        assert y.transpose(0, 2, 3, 1).flags.c_contiguous, "elementwise output should stay NHWC in memory"


def test_swish_with_beta_matches_torch(torch):
    from helpers import check_function
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32) * 3
    check_function(torch, nn.Swish(1.7), lambda t: t * torch.sigmoid(1.7 * t), x)


def test_clip_needs_a_bound_in_order():
    with pytest.raises(ValueError, match="give low, high or both"):
        nn.Clip(name="c")
    with pytest.raises(ValueError, match="low 2.0 is above high 1.0"):
        nn.Clip(2, 1, name="c")


@pytest.mark.parametrize("channels", [1, 3])
def test_prelu_matches_torch(torch, channels):
    m = nn.PReLU(channels)
    m.params["weight"][...] = np.linspace(0.1, 0.5, channels)
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    check_module(torch, m, torch.nn.PReLU(channels), x)


def test_elu_and_log_softmax_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    gy = rng.standard_normal((2, 4)).astype(np.float32)
    for module, f in ((nn.ELU(0.5), lambda z: np.where(z > 0, z, 0.5 * np.expm1(z))),
                      (nn.LogSoftmax(1), lambda z: z - np.log(np.exp(z).sum(1, keepdims=True)))):
        module.forward(x)
        gx = module.backward(x, gy)
        assert_close(gx, numeric_grad(lambda z: float((f(z) * gy).sum()), x.astype(np.float64)), 1e-4,
                     type(module).__name__)


def test_sigmoid_saturates_without_overflow():
    y = nn.Sigmoid().forward(np.array([-1000.0, 0.0, 1000.0], np.float32))
    assert np.all(np.isfinite(y)) and y[0] == 0 and y[1] == 0.5 and y[2] == 1


def test_dropout_train_and_evaluate():
    x = np.ones((200, 50), np.float32)
    d = nn.Dropout(0.3, seed=7)
    y = d.forward(x).copy()
    dropped = float((y == 0).mean())
    assert 0.25 < dropped < 0.35, dropped
    assert np.allclose(y[y != 0], 1 / 0.7), "kept values are scaled by 1/(1-p)"
    gy = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    gx = d.backward(x, gy)
    assert np.array_equal(gx == 0, y == 0) and np.allclose(gx[y != 0], gy[y != 0] / 0.7)
    again = nn.Dropout(0.3, seed=7).forward(x)
    assert np.array_equal(again, y), "same seed, same mask"
    d.evaluate()
    assert d.forward(x) is x and d.backward(x, gy) is gy
