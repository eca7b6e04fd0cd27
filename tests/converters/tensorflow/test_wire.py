"""The GraphDef reader: large tensors stay in the file (StoredTensor) and are read a band at a time
straight into a module's layout; typed TensorProto values (one value filling a shape, float16,
bfloat16) decode as TensorFlow defines them."""
import numpy as np
import pytest

from kindling.converters import tensorflow as tfc
from kindling.converters.tensorflow import parse, tensors, wire
from kindling.protos import tensorflow_pb2 as tfpb
from tf_graphs import GraphWriter


def _dense_graph(tmp_path, w: np.ndarray, b: np.ndarray):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 7, 5, 8))
    flat = g.node("Reshape", "flat", [x, g.const("shape", np.array([-1, 280], np.int32), tfpb.DT_INT32)])
    mm = g.node("MatMul", "dense", [flat, g.const("w", w)])
    g.node("BiasAdd", "logits", [mm, g.const("b", b)])
    return g.write(tmp_path / "dense.pb")


def test_a_large_weight_stays_in_the_file_and_the_rest_parses_as_protobuf_does(tmp_path):
    w = np.random.default_rng(0).standard_normal((280, 1200)).astype(np.float32)  # 1.3 MB
    path = _dense_graph(tmp_path, w, np.zeros(1200, np.float32))
    raw = wire.read_graph(path)
    whole = tfpb.GraphDef.FromString(path.read_bytes())
    index = [n.name for n in whole.node].index("w")
    offset, nbytes = raw.stored[(index, "value")]
    assert nbytes == w.nbytes and path.read_bytes()[offset:offset + nbytes] == w.tobytes()
    expected = tfpb.NodeDef()
    expected.CopyFrom(whole.node[index])
    expected.attr["value"].tensor.ClearField("tensor_content")
    assert raw.nodes[index] == expected
    assert [n for i, n in enumerate(raw.nodes) if i != index] == [n for i, n in enumerate(whole.node) if i != index]
    value = parse.read(path).by_name["w"].attrs["value"]
    assert isinstance(value, tensors.StoredTensor) and value.shape == (280, 1200)


def test_large_dense_after_an_nhwc_flatten_matches_numpy(tmp_path, monkeypatch):
    monkeypatch.setattr(tensors, "_CHUNK", 4096)  # many bands
    rng = np.random.default_rng(1)
    w = rng.standard_normal((280, 1200)).astype(np.float32)
    b = rng.standard_normal(1200).astype(np.float32)
    model = tfc.convert(_dense_graph(tmp_path, w, b)).evaluate()
    x_nhwc = rng.standard_normal((3, 7, 5, 8)).astype(np.float32)
    y = model.forward(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    assert np.abs(y - (x_nhwc.reshape(3, -1) @ w + b)).max() <= 1e-4


@pytest.mark.parametrize("dtype,proto", [(np.float32, tfpb.DT_FLOAT), (np.float16, tfpb.DT_HALF)])
def test_stored_tensor_reads_transposed_in_bands_with_rows_moved(tmp_path, monkeypatch, dtype, proto):
    monkeypatch.setattr(tensors, "_CHUNK", 64)
    a = np.random.default_rng(2).standard_normal((5, 4, 3, 2)).astype(dtype)
    path = tmp_path / "t.bin"
    path.write_bytes(b"junk" + a.tobytes())
    stored = tensors.StoredTensor(path, 4, a.nbytes, proto, a.shape)
    got = stored.read_transposed((3, 2, 0, 1))
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, a.astype(np.float32).transpose(3, 2, 0, 1))
    rows = np.array([3, 0, 4, 1, 2])
    moved = np.empty_like(a)
    moved[rows] = a
    assert np.array_equal(stored.read_transposed((1, 0, 2, 3), rows=rows), moved.astype(np.float32).transpose(1, 0, 2, 3))
    assert np.array_equal(np.asarray(stored), a)


def test_a_truncated_stored_tensor_is_an_error(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="truncated"):
        tensors.StoredTensor(path, 0, 16, tfpb.DT_FLOAT, (4,)).read()


def test_typed_values_decode_as_tensorflow_defines_them():
    t = tfpb.TensorProto(dtype=tfpb.DT_FLOAT, float_val=[1.5])
    t.tensor_shape.dim.add(size=2)
    t.tensor_shape.dim.add(size=3)
    assert np.array_equal(tensors.to_numpy(t, "t"), np.full((2, 3), 1.5, np.float32))  # one value fills
    t = tfpb.TensorProto(dtype=tfpb.DT_INT32, int_val=[1, 2])
    t.tensor_shape.dim.add(size=4)
    assert tensors.to_numpy(t, "t").tolist() == [1, 2, 2, 2]  # the last value repeats
    halves = np.array([0.5, -2.0, 3.25], np.float16)
    t = tfpb.TensorProto(dtype=tfpb.DT_HALF, half_val=halves.view(np.uint16).astype(int).tolist())
    t.tensor_shape.dim.add(size=3)
    assert np.array_equal(tensors.to_numpy(t, "t"), halves)
    floats = np.array([1.0, -0.375, 256.0], np.float32)  # exact in bfloat16: the high half of float32
    t = tfpb.TensorProto(dtype=tfpb.DT_BFLOAT16, half_val=(floats.view(np.uint32) >> 16).astype(int).tolist())
    t.tensor_shape.dim.add(size=3)
    assert np.array_equal(tensors.to_numpy(t, "t"), floats)
    t = tfpb.TensorProto(dtype=tfpb.DT_BFLOAT16, tensor_content=(floats.view(np.uint32) >> 16).astype("<u2").tobytes())
    t.tensor_shape.dim.add(size=3)
    assert np.array_equal(tensors.to_numpy(t, "t"), floats)
    t = tfpb.TensorProto(dtype=tfpb.DT_FLOAT)
    assert tensors.to_numpy(t, "t").shape == () and tensors.to_numpy(t, "t") == 0  # no values: zeros
