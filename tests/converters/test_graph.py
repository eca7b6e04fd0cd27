"""The assembly every converter shares: wiring by tensor name, constants, aliases, simplification,
the one report of unsupported nodes, and weights by name."""
import numpy as np
import pytest

from helpers import assert_close
from kindling.converters.graph import ALIAS, ConversionError, Node, Terms, assemble, check_supported
from kindling.converters.weights import load_by_name
from kindling.runtime import nn

TABLE = {
    "Conv": lambda n, s: nn.Conv2d(s[0][1], n.attrs["out"], 3, padding=1, name=n.name),
    "Relu": lambda n, s: nn.ReLU(name=n.name),
    "Identity": lambda n, s: ALIAS,
    "Add": lambda n, s: nn.Add(name=n.name),
}


def _translate(node, shapes):
    return TABLE[node.type](node, shapes)


def test_a_chain_becomes_a_sequential_and_identities_vanish():
    nodes = [Node("c", "Conv", ["x", "w_const"], ["c:0"], {"out": 4}), Node("id", "Identity", ["c:0"], ["id:0"]),
             Node("r", "Relu", ["id:0"], ["r:0"])]
    built = assemble(nodes, {"x": [1, 2, 5, 5]}, _translate, "m.pb", constants={"w_const"})
    assert isinstance(built.model, nn.Sequential) and [m.name for m in built.model.children()] == ["c", "r"]
    assert built.outputs == ["r:0"] and {k: (n.name, i) for k, (n, i) in built.producers.items()} == {"c": ("c", 0), "r": ("r", 0)}


def test_a_residual_join_stays_a_graph_and_computes_the_sum():
    nodes = [Node("c", "Conv", ["x"], ["c"], {"out": 2}), Node("r", "Relu", ["c"], ["r"]),
             Node("sum", "Add", ["x", "r"], ["sum"])]
    built = assemble(nodes, {"x": [1, 2, 4, 4]}, _translate, "m.onnx")
    model, outputs = built.model, built.outputs
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    conv = model.find("c")
    ref = nn.Sequential(conv, nn.ReLU(name="rr"), name="ref")
    expected = x + np.array(ref.forward(x))
    assert isinstance(model, nn.Graph) and outputs == ["sum"]
    assert_close(model.forward(x), expected)


def test_wiring_errors_use_the_formats_words():
    nodes = [Node("fc", "Relu", ["missing"], ["fc"])]
    with pytest.raises(ConversionError, match=r"net.prototxt: layer 'fc' \(Relu\): bottom 'missing' names no earlier top"):
        assemble(nodes, {"x": [1, 3]}, _translate, "net.prototxt", terms=Terms("layer", "bottom", "top"))
    with pytest.raises(ConversionError, match=r"g.pb: node 'c' \(Conv\) does not fit its input shapes \[\(1, 3\)\]"):
        assemble([Node("c", "Conv", ["x"], ["c"], {"out": 2})], {"x": [1, 3]}, _translate, "g.pb")


def test_every_unsupported_node_is_listed_once_grouped_by_type():
    nodes = [Node(f"n{i}", t, [], []) for i, t in enumerate(["Relu", "Erf", "Erf", "TopK", "Relu"])]
    with pytest.raises(ConversionError) as e:
        check_supported(nodes, lambda n: n.type in TABLE, "model.onnx", what="ops", known=TABLE)
    message = str(e.value)
    assert message.startswith("model.onnx: unsupported ops: Erf x2 (n1, n2); TopK x1 (n3). Supported types: Add, Conv")
    check_supported(nodes[:1], lambda n: n.type in TABLE, "model.onnx")  # nothing to report: no error


def test_load_by_name_renames_reports_and_checks_shapes():
    model = nn.Sequential(nn.Linear(3, 4, name="features"), nn.Linear(4, 2, name="head"), name="m")
    w = np.arange(12, dtype=np.float32).reshape(4, 3)

    def assign(module, payload, where):
        if payload.shape != module.params["weight"].shape:
            raise ValueError(f"{where}: shape {payload.shape} differs from {module.params['weight'].shape}")
        module.params["weight"] = payload

    report = load_by_name(model, {"fc6": w, "fc8": np.zeros((9, 4), np.float32)}, assign, source="w.pt",
                          rename={"fc6": "features"})
    assert report == {"loaded": ["features"], "skipped": ["head"], "unused": ["fc8"]}
    assert np.array_equal(model.find("features").params["weight"], w)
    with pytest.raises(ConversionError, match=r"w.pt: no weights for modules head \(match_all=True\)"):
        load_by_name(model, {"features": w}, assign, source="w.pt", match_all=True)
    with pytest.raises(ConversionError, match=r"w.pt: layer 'fc8' \(as 'head'\): shape \(9, 4\) differs"):
        load_by_name(model, {"fc8": np.zeros((9, 4), np.float32)}, assign, source="w.pt", rename={"fc8": "head"})
    with pytest.raises(ConversionError, match=r"rename names 'nope'"):
        load_by_name(model, {}, assign, source="w.pt", rename={"nope": "head"})
