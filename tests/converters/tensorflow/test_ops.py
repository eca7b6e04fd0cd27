"""Ops beyond the committed graphs, on graphs written with kindling's own schema, against numpy
written from TensorFlow's definitions (NHWC) and torch for an NCHW graph."""
import numpy as np

from kindling.converters import tensorflow as tfc
from kindling.protos import tensorflow_pb2 as tfpb
from tf_graphs import GraphWriter

rng = np.random.default_rng(5)
X = rng.standard_normal((2, 6, 7, 4)).astype(np.float32)  # NHWC


def _run(g: GraphWriter, tmp_path, x=X, layout_in=True):
    model = tfc.convert(g.write(tmp_path / "g.pb")).evaluate()
    y = model.forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout_in else x)
    return [np.asarray(o) for o in y] if isinstance(y, list) else np.asarray(y)


def _nhwc(y):
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


def _ints(*v):
    return np.array(v, np.int32)


def test_strided_slice_with_steps_and_a_shrunk_axis(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    c = [g.const(n, v, tfpb.DT_INT32) for n, v in (("b", _ints(0, 1, 0, 2)), ("e", _ints(0, 6, -1, 3)),
                                                   ("st", _ints(1, 2, 3, 1)))]
    g.node("StridedSlice", "s", [x, *c], begin_mask=1, end_mask=1, shrink_axis_mask=8)
    assert np.array_equal(_run(g, tmp_path), X[:, 1:6:2, 0:-1:3, 2])


def test_slice_of_channels_and_of_rows(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    s = g.node("Slice", "s", [x, g.const("b", _ints(0, 2, 0, 1), tfpb.DT_INT32),
                              g.const("n", _ints(-1, 3, -1, 2), tfpb.DT_INT32)])
    g.node("Relu", "out", [s])
    assert np.array_equal(_nhwc(_run(g, tmp_path)), np.maximum(X[:, 2:5, :, 1:3], 0))


def test_constants_on_either_side(tmp_path):
    v = rng.uniform(0.5, 2, 4).astype(np.float32)
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    a = g.node("Sub", "a", [g.const("three", np.float32(3)), x])          # 3 - x
    b = g.node("Sub", "b", [g.const("v", v), a])                          # v - (3 - x)
    c = g.node("RealDiv", "c", [b, g.const("v2", v)])                     # ... / v
    d = g.node("Minimum", "d", [c, g.const("one", np.float32(1))])
    e = g.node("Maximum", "e", [d, x])                                    # of two activations
    g.node("AddN", "out", [e, x, a])
    want = np.maximum(np.minimum((v - (3 - X)) / v, 1), X) + X + (3 - X)
    assert np.abs(_nhwc(_run(g, tmp_path)) - want).max() <= 1e-5


def test_dense_with_transposed_weight_after_an_nhwc_flatten(tmp_path):
    w = rng.standard_normal((5, 6 * 7 * 4)).astype(np.float32)
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    flat = g.node("Reshape", "flat", [x, g.const("shape", _ints(-1, 168), tfpb.DT_INT32)])
    g.node("MatMul", "dense", [flat, g.const("w", w)], transpose_b=True)
    assert np.abs(_run(g, tmp_path) - X.reshape(2, -1) @ w.T).max() <= 1e-4


def test_flatten_into_something_else_than_dense_keeps_tensorflows_order(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    flat = g.node("Reshape", "flat", [x, g.const("shape", _ints(-1, 168), tfpb.DT_INT32)])
    g.node("Softmax", "out", [flat])
    z = X.reshape(2, -1)
    want = np.exp(z - z.max(1, keepdims=True))
    assert np.abs(_run(g, tmp_path) - want / want.sum(1, keepdims=True)).max() <= 1e-6


def test_squeeze_excite_reshape_and_broadcast_multiply(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    m = g.node("Mean", "m", [x, g.const("axes", _ints(1, 2), tfpb.DT_INT32)])
    r = g.node("Reshape", "r", [g.node("Sigmoid", "s", [m]), g.const("shape", _ints(-1, 1, 1, 4), tfpb.DT_INT32)])
    cat = g.node("ConcatV2", "cat", [g.node("Mul", "mul", [x, r]), x, g.const("axis", np.int32(-1), tfpb.DT_INT32)])
    g.node("Softmax", "out", [cat])
    s = 1 / (1 + np.exp(-X.mean(axis=(1, 2))))
    z = np.concatenate([X * s[:, None, None, :], X], axis=-1)
    e = np.exp(z - z.max(-1, keepdims=True))
    assert np.abs(_nhwc(_run(g, tmp_path)) - e / e.sum(-1, keepdims=True)).max() <= 1e-6


def test_mean_over_trailing_axes_of_a_matrix(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 6, 7, 4))
    flat = g.node("Reshape", "flat", [x, g.const("shape", _ints(-1, 42, 4), tfpb.DT_INT32)])
    g.node("Mean", "out", [flat, g.const("axes", _ints(2), tfpb.DT_INT32)], keep_dims=True)
    assert np.abs(_run(g, tmp_path) - X.reshape(2, 42, 4).mean(axis=2, keepdims=True)).max() <= 1e-6


def test_an_nchw_graph_keeps_its_layout(tmp_path, torch):
    import torch.nn.functional as F
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 4, 6, 7))
    conv = g.node("Conv2D", "conv", [x, g.const("w", w)], strides=[1, 1, 2, 2], padding="SAME", data_format="NCHW")
    bias = g.node("BiasAdd", "bias", [conv, g.const("b", b)], data_format="NCHW")
    g.node("MaxPool", "pool", [g.node("Relu", "relu", [bias])], ksize=[1, 1, 2, 2], strides=[1, 1, 1, 1],
           padding="VALID", data_format="NCHW")
    x_nchw = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    model = tfc.convert(g.write(tmp_path / "g.pb"))
    assert model.metadata["extra"]["source_layout"] == "NCHW" and model.metadata["input_shape"] == [-1, 4, 6, 7]
    t = F.conv2d(F.pad(torch.from_numpy(x_nchw), [1, 1, 0, 1]), torch.from_numpy(w.transpose(3, 2, 0, 1).copy()),
                 torch.from_numpy(b), stride=2)  # SAME at stride 2: 6 rows pad 0 above, 1 below; 7 columns 1 and 1
    want = F.max_pool2d(F.relu(t), 2, 1).numpy()
    got = model.evaluate().forward(x_nchw)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
