"""Bad ONNX files: one clear error naming the file and the node, before any weight is read where it
can be, and nothing written by the command line."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kindling.cli import main
from kindling.converters import onnx as konnx


def _model(nodes, inputs=(("x", [1, 3, 8, 8]),), outputs=("y",), initializers=(), opset=13, elem=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_model():
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                   helper.make_node("Relu", ["c"], ["y"], name="relu")], initializers=[w])


def _save(model, path):
    onnx.save(model, str(path))
    return path


def test_a_good_model_converts(tmp_path):
    model = konnx.convert(_save(_conv_model(), tmp_path / "ok.onnx"))
    assert [m.name for m in model.children()] == ["conv", "relu"]


def test_truncated_file_names_the_file_and_writes_nothing(tmp_path, capsys):
    data = _conv_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(konnx.OnnxError, match=r"cut\.onnx: truncated or not an ONNX model"):
        konnx.convert(path)
    out = tmp_path / "cut.kdl"
    assert main(["convert", "onnx", str(path), "-o", str(out)]) == 1
    assert "cut.onnx" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_missing_initializer_names_the_node(tmp_path):
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")])
    with pytest.raises(konnx.OnnxError, match=r"m\.onnx: node 'conv1' \(Conv\) reads 'w', which no initializer"):
        konnx.convert(_save(model, tmp_path / "m.onnx"))


def test_cycle_names_its_nodes(tmp_path):
    model = _model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                    helper.make_node("Relu", ["a"], ["b"], name="second"),
                    helper.make_node("Relu", ["a"], ["y"], name="out")])
    with pytest.raises(konnx.OnnxError, match=r"cyc\.onnx: the graph has a cycle: .*first \(Add\) -> second \(Relu\)"):
        konnx.convert(_save(model, tmp_path / "cyc.onnx"))


def test_unsupported_ops_listed_with_opset_before_any_weight_is_read(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("Erf", ["c"], ["e1"], name="erf_a"),
                    helper.make_node("Erf", ["e1"], ["e2"], name="erf_b"),
                    helper.make_node("Celu", ["e2"], ["y"], name="celu")], initializers=[w])
    onnx.save(model, str(tmp_path / "u.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()  # were weights read first, this would be the error
    with pytest.raises(konnx.OnnxError) as e:
        konnx.convert(tmp_path / "u.onnx")
    assert "unsupported ops: Erf (opset 13) x2 (erf_a, erf_b); Celu (opset 13) x1 (celu)" in str(e.value)


def test_external_data_loads_and_stays_in_the_models_folder(tmp_path):
    model = _conv_model()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.bin", size_threshold=0)
    converted = konnx.convert(tmp_path / "ext.onnx")
    np.testing.assert_array_equal(converted.find("conv").params["weight"], np.ones((4, 3, 3, 3), np.float32))
    assert {f["path"] for f in converted.metadata["source"]["files"]} == {"ext.onnx", "ext.bin"}
    for location in ("../outside.bin", "/etc/passwd"):
        for e in model.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = location
        onnx.save(model, str(tmp_path / "evil.onnx"))
        with pytest.raises(konnx.OnnxError, match=r"evil\.onnx: initializer 'w' keeps its data at .*outside the model's"):
            konnx.convert(tmp_path / "evil.onnx")


def test_truncated_external_data(tmp_path):
    onnx.save(_conv_model(), str(tmp_path / "t.onnx"), save_as_external_data=True, location="t.bin", size_threshold=0)
    (tmp_path / "t.bin").write_bytes(b"\0" * 10)
    with pytest.raises(konnx.OnnxError, match=r"initializer 'w': external data 't.bin' holds 10 bytes"):
        konnx.convert(tmp_path / "t.onnx")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(konnx.OnnxError, match="zip archive .*torch.onnx.export"):
        konnx.convert(path)


def test_integer_input_and_free_dimensions_are_explained(tmp_path):
    ids = _model([helper.make_node("Relu", ["x"], ["y"])], elem=TensorProto.INT64)
    with pytest.raises(konnx.OnnxError, match="input 'x' is INT64"):
        konnx.convert(_save(ids, tmp_path / "ids.onnx"))
    free = _model([helper.make_node("Relu", ["x"], ["y"])], inputs=(("x", ["n", 3, "h", "w"]),))
    with pytest.raises(konnx.OnnxError, match=r"free dimension 'w' at axis 3; give its size, e.g. --input x="):
        konnx.convert(_save(free, tmp_path / "free.onnx"))
    model = konnx.convert(tmp_path / "free.onnx", inputs={"x": [1, 3, 5, 5]})
    assert model.evaluate().forward(-np.ones((2, 3, 5, 5), np.float32)).max() == 0


def test_a_computed_weight_is_refused_by_name(tmp_path):
    model = _model([helper.make_node("Relu", ["w"], ["w2"], name="wr"), helper.make_node("Conv", ["x", "w2"], ["y"],
                                                                                          name="conv")],
                   inputs=(("x", [1, 3, 8, 8]), ("w", [4, 3, 3, 3])))
    with pytest.raises(konnx.OnnxError, match=r"node 'conv' \(Conv\): input 'w2' is computed by the graph"):
        konnx.convert(_save(model, tmp_path / "cw.onnx"))


@pytest.mark.parametrize("kind", ["missing_initializer", "cycle", "unsupported"])
def test_cli_names_file_and_node_and_writes_nothing(tmp_path, capsys, kind):
    nodes = {
        "missing_initializer": [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")],
        "cycle": [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                  helper.make_node("Relu", ["a"], ["b"], name="second"), helper.make_node("Relu", ["a"], ["y"], name="out")],
        "unsupported": [helper.make_node("Erf", ["x"], ["y"], name="erf")],
    }[kind]
    path = _save(_model(nodes), tmp_path / f"{kind}.onnx")
    out = tmp_path / "out.kdl"
    assert main(["convert", "onnx", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{kind}.onnx" in err and {"missing_initializer": "'conv1'", "cycle": "first", "unsupported": "erf"}[kind] in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.onnx"]


def test_a_name_that_is_not_utf8_is_named_and_nothing_written(tmp_path, capsys):
    # found by the fuzzer (tests/fuzz, target onnx_model): protobuf returned the name as bytes
    from pathlib import Path
    path = Path(__file__).parents[2] / "fixtures" / "hostile" / "onnx_node_name_not_utf8.onnx"
    with pytest.raises(konnx.OnnxError, match=r"onnx_node_name_not_utf8\.onnx: .* is not UTF-8 text"):
        konnx.convert(path)
    out = tmp_path / "m.kdl"
    assert main(["convert", "onnx", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "onnx_node_name_not_utf8.onnx" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("data_type", [123, 0])
def test_an_initializer_of_no_onnx_data_type_is_named(tmp_path, data_type):
    # found by the fuzzer: onnx's own to_array raised a bare KeyError for an unknown type number
    model = _conv_model()
    model.graph.initializer[0].data_type = data_type
    with pytest.raises(konnx.OnnxError, match=rf"bad\.onnx: initializer 'w' has data type {data_type}, which is not"):
        konnx.convert(_save(model, tmp_path / "bad.onnx"))


def _bn_model(epsilon):
    scale = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")
    bn.attribute.append(epsilon)
    return _model([bn], initializers=scale)


def test_an_attribute_without_a_type_is_named(tmp_path):
    # found by the fuzzer: get_attribute_value gave None for a damaged attribute, and float(None) escaped
    untyped = onnx.AttributeProto(name="epsilon")
    with pytest.raises(konnx.OnnxError, match=r"bad\.onnx: node 'bn' \(BatchNormalization\): attribute 'epsilon' "
                                              r"has no type"):
        konnx.convert(_save(_bn_model(untyped), tmp_path / "bad.onnx"))


def test_an_attribute_of_the_wrong_kind_is_named(tmp_path):
    wrong = helper.make_attribute("epsilon", [1e-5, 1e-3])  # floats where a float belongs
    with pytest.raises(konnx.OnnxError, match=r"bad\.onnx: .*'bn'"):
        konnx.convert(_save(_bn_model(wrong), tmp_path / "bad.onnx"))
