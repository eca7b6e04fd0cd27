"""Bad graphs get one clear error naming the file and the node, before anything is written:
truncated or foreign files, cycles, missing inputs, unsupported ops (all listed at once, before
any weight is read), dtype and shape mismatches."""
import subprocess
import sys

import numpy as np
import pytest

from kindling.converters import tensorflow as tfc
from kindling.converters.tensorflow import tensors
from kindling.converters.tensorflow.errors import TensorFlowError
from kindling.protos import tensorflow_pb2 as tfpb
from tf_graphs import FIXTURES, GraphWriter


def _conv_net(g: GraphWriter, weight=None) -> str:
    x = g.placeholder()
    w = g.const("w", weight if weight is not None else np.ones((3, 3, 3, 2), np.float32))
    return g.node("Conv2D", "conv", [x, w], strides=[1, 1, 1, 1], padding="SAME")


def test_truncated_file_names_the_file(tmp_path):
    data = (FIXTURES / "keras_blocks.pb").read_bytes()
    path = tmp_path / "cut.pb"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(TensorFlowError, match=r"cut\.pb: truncated or corrupt GraphDef"):
        tfc.convert(path)


@pytest.mark.parametrize("content,message", [
    (b"", "no nodes"),
    (b"name: 'a'\nop: 'Relu'\n", "truncated or corrupt GraphDef|not a TensorFlow GraphDef|no nodes"),
    (bytes(range(256)) * 4, "truncated or corrupt GraphDef"),
])
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "model.pb"
    path.write_bytes(content)
    with pytest.raises(TensorFlowError, match=message):
        tfc.convert(path)


def test_cycle_is_named(tmp_path):
    g = GraphWriter()
    x = g.placeholder()
    g.node("AddV2", "a", [x, "b"])
    g.node("Relu", "b", ["a"])
    g.node("Relu", "out", ["b"])
    with pytest.raises(TensorFlowError, match=r"g\.pb: node '[ab]' \(\w+\): the graph has a cycle: (a -> b -> a|b -> a -> b)"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_missing_input_is_named(tmp_path):
    g = GraphWriter()
    g.node("Relu", "out", [g.placeholder(), ][:0] + ["ghost:0"])
    with pytest.raises(TensorFlowError, match=r"node 'out' \(Relu\): input 'ghost' names no node"):
        tfc.convert(g.write(tmp_path / "g.pb"), inputs=["x"], outputs=["out"])


def test_duplicate_names_are_refused(tmp_path):
    g = GraphWriter()
    x = g.placeholder()
    g.node("Relu", "r", [x])
    g.node("Sigmoid", "r", [x])
    with pytest.raises(TensorFlowError, match=r"node 'r' \(Sigmoid\): a second node has this name"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_every_unsupported_op_is_listed_before_any_weight_is_read(tmp_path, monkeypatch):
    g = GraphWriter()
    conv = _conv_net(g, np.ones((3, 3, 3, 40000), np.float32))  # 4 MB: left in the file until read
    e1 = g.node("Erf", "erf1", [conv])
    e2 = g.node("Erf", "erf2", [e1])
    g.node("Cumsum", "cum", [e2, g.const("axis", np.int32(1), tfpb.DT_INT32)])
    path = g.write(tmp_path / "g.pb")

    def no_reading(*args, **kwargs):
        raise AssertionError("a weight was read before the unsupported ops were reported")
    monkeypatch.setattr(tensors.StoredTensor, "read_transposed", no_reading)
    with pytest.raises(TensorFlowError) as e:
        tfc.convert(path)
    assert "unsupported ops: Erf x2 (erf1, erf2); Cumsum x1 (cum)" in str(e.value)
    assert "Supported types:" in str(e.value) and "Conv2D" in str(e.value)


def test_cli_writes_nothing_for_an_unsupported_graph(tmp_path):
    g = GraphWriter()
    g.node("Erf", "erf", [_conv_net(g)])
    out = tmp_path / "m.kdl"
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "tf", "--graph", g.write(tmp_path / "g.pb"),
                        "-o", out], capture_output=True, text=True)
    assert r.returncode == 1 and "unsupported ops: Erf x1 (erf)" in r.stderr and not out.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_input_of_another_dtype_is_refused(tmp_path):
    g = GraphWriter()
    g.node("Relu", "r", [g.placeholder(dtype=tfpb.DT_INT32)])
    with pytest.raises(TensorFlowError, match=r"g\.pb: input 'x' is DT_INT32; kindling models take float32"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_weight_of_an_unreadable_dtype_names_the_node(tmp_path):
    g = GraphWriter()
    x = g.placeholder()
    w = g.graph.node.add(name="w", op="Const")
    w.attr["value"].tensor.dtype = tfpb.DT_STRING
    w.attr["value"].tensor.tensor_shape.dim.add(size=1)
    g.node("Conv2D", "conv", [x, "w"], strides=[1, 1, 1, 1], padding="SAME")
    with pytest.raises(TensorFlowError, match=r"node 'w' \(Const\) attr 'value': tensors of DT_STRING are not supported"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_tensor_content_of_the_wrong_size_names_the_node(tmp_path):
    g = GraphWriter()
    x = g.placeholder()
    w = g.const("w", np.ones((3, 3, 3, 2), np.float32))
    g.graph.node[-1].attr["value"].tensor.tensor_content = b"\0" * 12
    g.node("Conv2D", "conv", [x, w], strides=[1, 1, 1, 1], padding="SAME")
    with pytest.raises(TensorFlowError, match=r"node 'w' \(Const\) attr 'value': tensor_content holds 12 bytes, but shape "
                                              r"\[3, 3, 3, 2\] of DT_FLOAT needs 216"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_weight_that_does_not_fit_names_the_node(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 4, 4, 3))
    flat = g.node("Reshape", "flat", [x, g.const("shape", np.array([-1, 48], np.int32), tfpb.DT_INT32)])
    g.node("MatMul", "dense", [flat, g.const("w", np.ones((10, 3), np.float32))])
    with pytest.raises(TensorFlowError, match=r"node 'dense' \(MatMul\): not converted: the weight \[10, 3\] takes 10 "
                                              r"input features, the input has 48"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_join_of_shapes_that_do_not_broadcast_names_the_node(tmp_path):
    g = GraphWriter()
    x = g.placeholder(shape=(-1, 4, 4, 3))
    pooled = g.node("MaxPool", "pool", [x], ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID")
    g.node("AddV2", "sum", [x, pooled])
    with pytest.raises(TensorFlowError, match=r"node 'sum' \(AddV2\) does not fit its input shapes "
                                              r"\[\(1, 3, 4, 4\), \(1, 3, 2, 2\)\]"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_channels_that_do_not_fit_the_filter_name_the_node(tmp_path):
    g = GraphWriter()
    _conv_net(g, np.ones((3, 3, 5, 2), np.float32))
    with pytest.raises(TensorFlowError, match=r"node 'conv' \(Conv2D\): not converted: the filter takes 5 input channels, "
                                              r"the input has 3"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_unknown_input_size_asks_for_it(tmp_path):
    g = GraphWriter()
    g.node("Relu", "r", [g.placeholder(shape=(-1, -1, -1, 3))])
    path = g.write(tmp_path / "g.pb")
    with pytest.raises(TensorFlowError, match=r"input 'x' has shape \[-1, -1, -1, 3\] .*--input x=1,3,224,224"):
        tfc.convert(path)
    model = tfc.convert(path, input_shapes={"x": [1, 3, 5, 6]})
    assert model.metadata["input_shape"] == [-1, 3, 5, 6]


def test_average_pooling_that_ceil_mode_cannot_express_is_refused(tmp_path):
    g = GraphWriter()
    g.node("AvgPool", "pool", [g.placeholder()], ksize=[1, 2, 2, 1], strides=[1, 1, 1, 1], padding="SAME")
    with pytest.raises(TensorFlowError, match=r"node 'pool' \(AvgPool\): not converted: average pooling with kernel"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_training_mode_batch_norm_is_refused(tmp_path):
    g = GraphWriter()
    x = g.placeholder()
    c = [g.const(n, np.ones(3, np.float32)) for n in ("scale", "offset", "mean", "var")]
    g.node("FusedBatchNormV3", "bn", [x, *c], epsilon=1e-3, is_training=True)
    with pytest.raises(TensorFlowError, match=r"node 'bn' \(FusedBatchNormV3\): not converted: is_training is set"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_unknown_output_name_suggests_similar_ones():
    with pytest.raises(TensorFlowError, match=r"--outputs 'relu' names no node; similar: Relu"):
        tfc.convert(FIXTURES / "trap_flatten_7x5.pb", outputs=["relu"])


def test_corrupt_version_record_names_the_file_and_nothing_written(tmp_path):
    # found by the fuzzer (tests/fuzz, target tf_graph): a damaged VersionDef escaped as protobuf's DecodeError
    from pathlib import Path
    path = Path(__file__).parents[2] / "fixtures" / "hostile" / "tf_versions_corrupt.pb"
    with pytest.raises(TensorFlowError, match=r"tf_versions_corrupt\.pb: .*versions at offset"):
        tfc.convert(path)
    out = tmp_path / "m.kdl"
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "tf", "--graph", str(path), "-o", out],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "tf_versions_corrupt.pb" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_input_shape_that_is_not_a_shape_names_the_node(tmp_path):
    # found by the fuzzer (seed 8, input 12803): a Placeholder's shape attribute turned into a string
    g = GraphWriter()
    _conv_net(g)
    g.graph.node[0].attr["shape"].s = b"1,2,3"
    with pytest.raises(TensorFlowError, match=r"g\.pb: node 'x' \(Placeholder\): its 'shape' attribute is not a shape"):
        tfc.convert(g.write(tmp_path / "g.pb"))


def test_a_dilated_convolution_with_malformed_paddings_is_refused_by_name(tmp_path):
    # found by the fuzzer (seed 8, inputs 30385 and 51162): paddings of one value broke the pattern's reshape
    graph = tfpb.GraphDef.FromString((FIXTURES / "trap_dilated.pb").read_bytes())
    s2b = next(n for n in graph.node if n.op == "SpaceToBatchND")
    paddings = next(n for n in graph.node if n.name == s2b.input[2].split(":")[0])
    paddings.attr["value"].tensor.CopyFrom(_int_tensor([0]))
    path = tmp_path / "dilated.pb"
    path.write_bytes(graph.SerializeToString())
    with pytest.raises(TensorFlowError, match=rf"dilated\.pb: unsupported ops: SpaceToBatchND x1 \({s2b.name}\)"):
        tfc.convert(path)


def _int_tensor(values):
    t = tfpb.TensorProto(dtype=tfpb.DT_INT32)
    t.tensor_shape.dim.add(size=len(values))
    t.int_val.extend(values)
    return t
