"""The layers ONNX models need beyond Caffe's: BinaryOp (with a constant or two inputs), Min/Max
with broadcasting, Clip, HardSigmoid, HardSwish, SELU, Pad, InstanceNorm, Resize, StridedSlice,
Gather and Constant, against PyTorch (forward and gradients) and a save/load round trip."""
import numpy as np
import pytest

import kindling
from helpers import assert_close, check_function, check_module, to_numpy
from kindling.runtime import nn

RNG = np.random.default_rng(0)


def _x(*shape, scale=2.0):
    return np.asarray(RNG.standard_normal(shape) * scale, np.float32)


# ---- BinaryOp ---------------------------------------------------------------------------------
TORCH_OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
             "div": lambda a, b: a / b, "max": lambda a, b: a.maximum(b), "min": lambda a, b: a.minimum(b),
             "pow": lambda a, b: a.pow(b), "matmul": lambda a, b: a @ b,
             "prelu": lambda a, b: a.where(a > 0, a * b)}
BCAST = [((2, 3, 4, 5), (3, 1, 1)), ((2, 3, 4, 5), (2, 3, 4, 5)), ((4, 5), (5,)), ((3, 1), (1, 4))]
MATMUL = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
          ((4,), (4,))]


def _operands(op, sa, sb):
    a, b = _x(*sa), _x(*sb)
    if op == "div":
        b = np.where(np.abs(b) < 0.5, 1.5, b).astype(np.float32)
    if op == "pow":
        a = np.abs(a) + 0.5
    return a, b


def _check_two(torch, op, sa, sb):
    a, b = _operands(op, sa, sb)
    m = nn.BinaryOp(op)
    y = m.forward([a, b])
    ta, tb = (torch.from_numpy(v.copy()).requires_grad_() for v in (a, b))
    ty = TORCH_OPS[op](ta, tb)
    assert_close(y, to_numpy(ty), 1e-5, f"{op} forward")
    g = _x(*y.shape)
    ty.backward(torch.from_numpy(g))
    ga, gb = m.backward([a, b], g)
    assert_close(ga, to_numpy(ta.grad), 1e-4, f"{op} grad a")
    assert_close(gb, to_numpy(tb.grad), 1e-4, f"{op} grad b")


@pytest.mark.parametrize("shapes", BCAST, ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "max", "min", "pow", "prelu"])
def test_binary_op_two_inputs_matches_torch(torch, op, shapes):
    _check_two(torch, op, *shapes)


@pytest.mark.parametrize("shapes", MATMUL, ids=str)
def test_binary_matmul_matches_torch(torch, shapes):
    _check_two(torch, "matmul", *shapes)


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("op", ["sub", "div", "matmul", "max"])
def test_binary_op_with_constant_matches_torch(torch, op, first):
    shape, cshape = ((2, 4), (3, 2) if first else (4, 3)) if op == "matmul" else ((2, 3, 4, 4), (3, 1, 1))
    x, c = _x(*shape), _x(*cshape)
    if op == "div":  # keep divisors away from 0
        x, c = (np.sign(v) * (np.abs(v) + 0.5) for v in (x, c))
    m = nn.BinaryOp(op, constant=c, constant_first=first)

    def fn(t):
        tc = torch.from_numpy(c.astype(np.float32))
        return TORCH_OPS[op](tc, t) if first else TORCH_OPS[op](t, tc)
    check_function(torch, m, fn, x.astype(np.float32))


def test_max_min_joins_broadcast_and_tie_to_first(torch):
    a, b = _x(2, 3, 4), _x(3, 1)
    for cls, f in ((nn.Max, np.maximum), (nn.Min, np.minimum)):
        m = cls()
        y = m.forward([a, b])
        np.testing.assert_array_equal(y, f(a, b))
        g = np.ones_like(y)
        ga, gb = m.backward([a, b], g)
        assert ga.shape == a.shape and gb.shape == b.shape
        assert float(ga.sum() + gb.sum()) == g.size  # every element's gradient goes to exactly one input


# ---- activations ---------------------------------------------------------------------------------
ACTIVATIONS = {
    "clip": (lambda: nn.Clip(-1.0, 2.0), lambda t, x: x.clamp(-1.0, 2.0)),
    "clip_low_only": (lambda: nn.Clip(low=0.5), lambda t, x: x.clamp(min=0.5)),
    "hardsigmoid_torch": (lambda: nn.HardSigmoid(), lambda t, x: t.nn.functional.hardsigmoid(x)),
    "hardsigmoid_onnx": (lambda: nn.HardSigmoid(0.2, 0.5), lambda t, x: (0.2 * x + 0.5).clamp(0, 1)),
    "hardswish": (lambda: nn.HardSwish(), lambda t, x: t.nn.functional.hardswish(x)),
    "selu": (lambda: nn.SELU(), lambda t, x: t.nn.functional.selu(x)),
    "selu_onnx_attributes": (lambda: nn.SELU(2.0, 3.0), lambda t, x: 3.0 * t.where(x > 0, x, 2.0 * t.expm1(x))),
}


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_new_activations_match_torch(torch, kind):
    make, fn = ACTIVATIONS[kind]
    x = _x(2, 3, 5, 7, scale=4)
    x[0, 0, 0, :3] = [-3.0, 3.0, 0.0]  # kinks
    check_function(torch, make(), lambda t: fn(torch, t), x)


# ---- Pad, InstanceNorm -------------------------------------------------------------------------------
PADS = {  # nn.Pad's (before, after) per axis -> F.pad's amounts, last axis first
    "constant": ([0, 0, 0, 0, 1, 3, 2, 0], "constant", 1.5, lambda t, x: t.nn.functional.pad(x, (2, 0, 1, 3), value=1.5)),
    "reflect": ([0, 0, 0, 0, 1, 2, 2, 1], "reflect", 0.0, lambda t, x: t.nn.functional.pad(x, (2, 1, 1, 2), mode="reflect")),
    "edge": ([0, 0, 0, 0, 2, 1, 0, 3], "edge", 0.0, lambda t, x: t.nn.functional.pad(x, (0, 3, 2, 1), mode="replicate")),
    "wrap": ([0, 0, 0, 0, 1, 2, 1, 2], "wrap", 0.0, lambda t, x: t.nn.functional.pad(x, (1, 2, 1, 2), mode="circular")),
    "edge_and_crop": ([0, 0, 0, 0, -1, 0, 1, -2], "edge", 0.0,
                      lambda t, x: t.nn.functional.pad(x[:, :, 1:, :-2], (1, 0, 0, 0), mode="replicate")),
}


@pytest.mark.parametrize("kind", PADS)
def test_pad_modes_match_torch(torch, kind):
    pads, mode, value, fn = PADS[kind]
    m = nn.Pad(pads, value, mode)
    x = _x(2, 3, 5, 6)
    y, _ = check_function(torch, m, lambda t: fn(torch, t), x)
    from kindling.runtime.shapes import probe
    assert probe(m, [x.shape]) == y.shape


def test_pad_refuses_reflecting_past_the_edge():
    with pytest.raises(ValueError, match="reflect padding of 3"):
        nn.Pad([0, 0, 3, 0], mode="reflect").forward(_x(1, 3))


def test_instance_norm_matches_torch(torch):
    m = nn.InstanceNorm(3, eps=1e-3)
    m.params["weight"][...] = [0.5, 1.0, 2.0]
    m.params["bias"][...] = [0.1, -0.2, 0.3]
    t = torch.nn.InstanceNorm2d(3, eps=1e-3, affine=True)
    check_module(torch, m, t, _x(2, 3, 4, 5))


# ---- Resize ---------------------------------------------------------------------------------------
RESIZES = {
    "nearest_x2": (dict(scales=[2, 2], axes=[2, 3], mode="nearest", coordinate_transformation_mode="asymmetric",
                        nearest_mode="floor"), dict(scale_factor=2, mode="nearest")),
    "nearest_size": (dict(sizes=[0, 0, 7, 9], mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor"), dict(size=(7, 9), mode="nearest")),
    "bilinear_half_pixel": (dict(sizes=[7, 11], axes=[2, 3], mode="linear",
                                 coordinate_transformation_mode="pytorch_half_pixel"),
                            dict(size=(7, 11), mode="bilinear", align_corners=False)),
    "bilinear_align_corners": (dict(scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="align_corners"),
                               dict(scale_factor=2, mode="bilinear", align_corners=True)),
    "bilinear_down": (dict(sizes=[3, 4], axes=[2, 3], mode="linear", coordinate_transformation_mode="half_pixel"),
                      dict(size=(3, 4), mode="bilinear", align_corners=False)),
    # (antialiasing: ONNX clamps its wider filter at the borders where PyTorch renormalises; the
    # ONNX backend suite in tests/converters/onnx checks it against ONNX's own expected outputs)
    "bicubic": (dict(scales=[2.0, 2.0], axes=[2, 3], mode="cubic", cubic_coeff_a=-0.75,
                     coordinate_transformation_mode="half_pixel"),
                dict(scale_factor=2, mode="bicubic", align_corners=False)),
}


@pytest.mark.parametrize("kind", RESIZES)
def test_resize_matches_torch_interpolate(torch, kind):
    ours, theirs = RESIZES[kind]
    m = nn.Resize(**ours)
    x = _x(2, 3, 5, 6)
    check_function(torch, m, lambda t: torch.nn.functional.interpolate(t, **theirs), x)


def test_resize_crop_and_resize_extrapolates():
    m = nn.Resize(sizes=[3, 3], axes=[2, 3], mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
                  roi=[0.4, 0.6, 1.2, 1.7], extrapolation_value=10.0)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = m.forward(x)
    assert y.shape == (1, 1, 3, 3)
    assert (y[0, 0, 2, :] == 10).all() and (y[0, 0, :, 2] == 10).all()  # past the input's far edges
    assert y[0, 0, 0, 0] == pytest.approx(0.4 * 3 * 4 + 0.6 * 3)  # (1.2, 1.8) interpolated


# ---- StridedSlice, Gather, Constant ---------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    ([1, 0], [3, -1], [1, 3], [1, 2]),
    ([-1], [-10**9], [2], [-1]),            # reversed, past the start
    ([10], [-10], [3], [-2]),                # start past the end with a negative step
    ([0, 2], [10**9, 4], [0, 2], [1, 1]),
], ids=str)
def test_strided_slice_follows_python_slicing(spec):
    starts, ends, axes, steps = spec
    x = _x(2, 3, 4, 5)
    m = nn.StridedSlice(starts, ends, axes, steps)
    index = [slice(None)] * 4
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(s, e if not (st < 0 and e < -x.shape[a]) else None, st)
    y = m.forward(x)
    np.testing.assert_array_equal(y, x[tuple(index)])
    g = _x(*y.shape)
    expected = np.zeros_like(x)
    expected[tuple(index)] = g
    np.testing.assert_array_equal(m.backward(x, g), expected)


@pytest.mark.parametrize("indices,axis", [(np.array([0, 2, -1]), 1), (np.array([[1, 0], [1, 1]]), 2),
                                          (np.array(1), 0)], ids=["list", "2d", "scalar"])
def test_gather_matches_numpy_take_and_scatters_back(indices, axis):
    x = _x(3, 4, 5)
    m = nn.Gather(indices, axis)
    y = m.forward(x)
    np.testing.assert_array_equal(y, np.take(x, indices, axis=axis))
    g = _x(*y.shape)
    gx = m.backward(x, g)
    expected = np.zeros_like(x)
    flat = np.where(indices < 0, indices + x.shape[axis], indices).ravel()
    moved = np.moveaxis(expected, axis, 0)
    for i, j in enumerate(flat):
        moved[j] += np.moveaxis(g.reshape(*x.shape[:axis], flat.size, *x.shape[axis + 1:]), axis, 0)[i]
    np.testing.assert_allclose(gx, expected, rtol=1e-6)


def test_gather_refuses_indices_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        nn.Gather(np.array([4]), axis=0).forward(_x(3, 2))


def test_new_layers_save_and_load(tmp_path):
    g = nn.Graph(inputs=["x"], outputs=["out"])
    g.add(nn.BinaryOp("sub", constant=_x(1, 3, 1, 1), name="center"), ["x"])
    g.add(nn.Pad([0, 0, 0, 0, 1, 1, 1, 1], mode="reflect", name="pad"), ["center"])
    g.add(nn.InstanceNorm(3, name="inorm"), ["pad"])
    g.add(nn.Resize(scales=[2.0, 2.0], axes=[2, 3], mode="linear", name="up"), ["inorm"])
    g.add(nn.StridedSlice([1], [-1], [3], name="crop"), ["up"])
    g.add(nn.Gather(np.array([2, 0]), axis=1, name="pick"), ["crop"])
    g.add(nn.Constant(value=_x(1, 2, 1, 1), name="offset"), [])
    g.add(nn.BinaryOp("min", name="lower"), ["pick", "offset"])
    g.add(nn.HardSwish(name="hswish"), ["lower"])
    g.add(nn.Clip(-0.5, None, name="out"), ["hswish"])
    x = _x(2, 3, 4, 5)
    y = g.evaluate().forward(x).copy()
    back = kindling.load(kindling.save(g, tmp_path / "m.kdl")).evaluate()
    np.testing.assert_array_equal(back.forward(x), y)
    assert back.find("pick").buffers["indices"].dtype == np.int64


@pytest.mark.parametrize("op,axes,keep", [("mean", [2, 3], True), ("sum", [1], False), ("max", [0, 2], True),
                                          ("min", None, False), ("max", [-1], False)])
def test_reduce_axes_matches_torch(torch, op, axes, keep):
    x = _x(2, 3, 4, 5)
    x[0, 0, 0, :2] = 9.0  # a tie for max
    dims = tuple(range(4)) if axes is None else tuple(axes)
    fn = {"mean": lambda t: t.mean(dims, keepdim=keep), "sum": lambda t: t.sum(dims, keepdim=keep),
          "max": lambda t: t.amax(dims, keepdim=keep), "min": lambda t: t.amin(dims, keepdim=keep)}[op]
    check_function(torch, nn.ReduceAxes(op, axes, keep), fn, x)
