"""The same ops in the forms older and newer opsets give them (attributes that became inputs,
Softmax's axis rule before and after 13, Upsample and Resize), in small graphs made with
onnx.helper, against onnxruntime on the same file."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kindling.converters import onnx as konnx


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _f32(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, name=outs[0], **attrs)


# opset -> (nodes, initializers); input x (2, 4, 6, 6), output y
GRAPHS = {
    7: ([_node("Upsample", ["x"], ["u"], scales=[1.0, 1.0, 2.0, 2.0], mode="nearest"),
         _node("Softmax", ["u"], ["y"], axis=1)], []),
    9: ([_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 2, 0, 0, 1, 0], value=0.5),
         _node("Slice", ["p"], ["s"], starts=[1, 0], ends=[7, -1], axes=[2, 3]),
         _node("Split", ["s"], ["a", "b"], axis=1, split=[1, 3]),
         _node("Concat", ["b", "a"], ["c"], axis=1),
         _node("Clip", ["c"], ["k"], min=-0.5, max=0.7),
         _node("Unsqueeze", ["k"], ["k5"], axes=[2]), _node("Squeeze", ["k5"], ["k4"], axes=[2]),
         _node("Upsample", ["k4", "scales"], ["u"], mode="linear"),
         _node("Softmax", ["u"], ["y"], axis=2)],
        [_f32("scales", [1.0, 1.0, 2.0, 1.5])]),
    10: ([_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
          _node("Resize", ["s", "scales"], ["y"], mode="nearest")],
         [_i64("st", [5, 0]), _i64("en", [-100, 6]), _i64("ax", [2, 3]), _i64("sp", [-2, 2]),
          _f32("scales", [1.0, 1.0, 2.0, 3.0])]),
    11: ([_node("Pad", ["x", "pads", "val"], ["p"], mode="reflect"),
          _node("Clip", ["p", "lo", "hi"], ["k"]),
          _node("Resize", ["k", "roi", "scales"], ["r"], mode="linear", coordinate_transformation_mode="align_corners"),
          _node("Softmax", ["r"], ["y"], axis=1)],  # the old rule: over C*H*W together
         [_i64("pads", [0, 0, 2, 1, 0, 0, 1, 2]), _f32("val", 0.0), _f32("lo", -0.3), _f32("hi", 0.8),
          _f32("roi", []), _f32("scales", [1.0, 1.0, 2.0, 3.0])]),  # whole output lengths: see nn.Resize
    13: ([_node("Split", ["x", "split"], ["a", "b"], axis=1),
          _node("Unsqueeze", ["a", "ax0"], ["a5"]), _node("Squeeze", ["a5", "ax0"], ["a4"]),
          _node("Concat", ["a4", "b"], ["c"], axis=1),
          _node("Resize", ["c", "", "", "sizes"], ["r"], mode="nearest", nearest_mode="round_prefer_ceil"),
          _node("Softmax", ["r"], ["y"], axis=1)],  # the new rule: over C alone
         [_i64("split", [3, 1]), _i64("ax0", [0]), _i64("sizes", [2, 4, 9, 7])]),
}


@pytest.mark.parametrize("opset", sorted(GRAPHS))
def test_opset_forms_match_onnxruntime(opset, tmp_path):
    nodes, inits = GRAPHS[opset]
    graph = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset >= 12 else 4  # what exporters of that time wrote
    path = tmp_path / f"forms{opset}.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(opset).standard_normal((2, 4, 6, 6)).astype(np.float32)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = konnx.convert(path, exact=True).evaluate().forward(x)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
