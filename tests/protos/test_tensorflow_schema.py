"""protos/tensorflow.proto is a subset of TensorFlow's schema: every message, field and enum value
it declares has TensorFlow's number and type (checked against TensorFlow's own descriptors), and a
GraphDef written by TensorFlow reads back unchanged."""
import numpy as np
import pytest

from kindling.protos import tensorflow_pb2 as ours


@pytest.fixture(scope="module")
def tf_protos():
    from tensorflow.core.framework import (attr_value_pb2, graph_pb2, node_def_pb2, tensor_pb2,
                                           tensor_shape_pb2, types_pb2, versions_pb2)
    return {"GraphDef": graph_pb2.GraphDef, "NodeDef": node_def_pb2.NodeDef, "AttrValue": attr_value_pb2.AttrValue,
            "AttrValue.ListValue": attr_value_pb2.AttrValue.ListValue, "NameAttrList": attr_value_pb2.NameAttrList,
            "TensorProto": tensor_pb2.TensorProto, "TensorShapeProto": tensor_shape_pb2.TensorShapeProto,
            "TensorShapeProto.Dim": tensor_shape_pb2.TensorShapeProto.Dim, "VersionDef": versions_pb2.VersionDef,
            "DataType": types_pb2.DataType}


def _ours(path: str):
    cls = ours
    for part in path.split("."):
        cls = getattr(cls, part)
    return cls


MESSAGES = ["GraphDef", "NodeDef", "AttrValue", "AttrValue.ListValue", "NameAttrList", "TensorProto",
            "TensorShapeProto", "TensorShapeProto.Dim", "VersionDef"]


@pytest.mark.parametrize("message", MESSAGES)
def test_fields_have_tensorflows_numbers_and_types(tf_protos, message):
    theirs = {f.name: f for f in tf_protos[message].DESCRIPTOR.fields}
    mine = _ours(message).DESCRIPTOR.fields
    assert mine, message
    for f in mine:
        assert f.name in theirs, f"{message}.{f.name} is not in TensorFlow's schema"
        t = theirs[f.name]
        assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), f"{message}.{f.name}"
        assert (f.containing_oneof is None) == (t.containing_oneof is None), f"{message}.{f.name} oneof"
        if f.message_type is not None:
            assert f.message_type.name == t.message_type.name, f"{message}.{f.name}"


def test_data_types_have_tensorflows_values(tf_protos):
    theirs = {v.name: v.number for v in tf_protos["DataType"].DESCRIPTOR.values}
    for v in ours.DataType.DESCRIPTOR.values:
        assert theirs.get(v.name) == v.number, v.name


def test_a_graph_written_by_tensorflow_reads_back_unchanged(tf_protos):
    import tensorflow as tf
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 3], name="x")
        w = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 3, 2)).astype(np.float32))
        y = tf.nn.conv2d(x, w, strides=[1, 2, 2, 1], padding="SAME", name="conv")
        tf.reduce_mean(y, axis=[1, 2], keepdims=True, name="mean")
        tf.identity(tf.constant([1, 2], tf.int64), name="ints")
    written = g.as_graph_def().SerializeToString(deterministic=True)
    parsed = ours.GraphDef.FromString(written)
    assert [n.op for n in parsed.node][:4] == ["Placeholder", "Const", "Conv2D", "Const"]
    assert parsed.SerializeToString(deterministic=True) == written
