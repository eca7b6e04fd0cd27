"""Hostile .kdl files (issue 15): a header rewritten with a valid checksum, as an attacker would,
gets a FormatError naming the file and the module; nothing is allocated that the file's tensors
do not back."""
import hashlib
import tracemalloc

import numpy as np
import pytest

import kindling
from kindling.protos import kindling_pb2 as pb
from kindling.runtime import nn
from kindling.runtime.format import FormatError

PREFIX = 47  # magic, major, minor, header length, header SHA-256


def _saved(tmp_path, model=None):
    model = model or nn.Sequential(nn.Linear(4, 3, name="fc"), nn.ReLU(name="relu"), name="net")
    return kindling.save(model, tmp_path / "m.kdl", metadata={"input_shape": [-1, 4]})


def _rewrite(path, edit):
    """The file with its header changed by ``edit`` and framed and signed anew."""
    data = path.read_bytes()
    n = int.from_bytes(data[7:15], "little")
    header = pb.ModelFile.FromString(data[PREFIX:PREFIX + n])
    edit(header)
    blob = header.SerializeToString()
    tensors = data[PREFIX + n + (-(PREFIX + n) % 64):]
    path.write_bytes(data[:7] + len(blob).to_bytes(8, "little") + hashlib.sha256(blob).digest() + blob
                     + b"\0" * (-(PREFIX + len(blob)) % 64) + tensors)
    return path


def _module(header, name):
    stack = [header.graph]
    while stack:
        d = stack.pop()
        if d.name == name:
            return d
        stack.extend(d.children)


def test_deeply_nested_json_attribute(tmp_path):
    path = _rewrite(_saved(tmp_path), lambda h: _module(h, "fc").attrs["bias"].__setattr__("json", "[" * 100_000))
    with pytest.raises(FormatError, match=rf"^{path}: module 'fc' \(Linear\) cannot be rebuilt: JSON nests more "
                                          r"than 32 levels deep"):
        kindling.load(path)


def test_infinite_number_where_an_int_belongs(tmp_path):
    path = _rewrite(_saved(tmp_path), lambda h: _module(h, "fc").attrs["out_features"].__setattr__("f", 1e999))
    with pytest.raises(FormatError, match=rf"^{path}: module 'fc' \(Linear\) cannot be rebuilt: a parameter of shape "
                                          r"\[inf, 4\]: dimensions must be non-negative integers"):
        kindling.load(path)
    model = nn.Sequential(nn.Tile(1, 2, name="tile"), name="net")
    path = _rewrite(_saved(tmp_path, model), lambda h: _module(h, "tile").attrs["tiles"].__setattr__("f", 1e999))
    with pytest.raises(FormatError, match=rf"^{path}: module 'tile' \(Tile\) cannot be rebuilt: cannot convert float "
                                          r"infinity to integer"):  # an OverflowError, not a ValueError
        kindling.load(path)


def test_a_huge_config_is_compared_with_the_tensors_before_anything_is_allocated(tmp_path):
    path = _rewrite(_saved(tmp_path), lambda h: _module(h, "fc").attrs["out_features"].__setattr__("i", 2**31 - 1))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=rf"^{path}: tensor fc.weight has shape \(3, 4\), the module expects "
                                              r"\(2147483647, 4\)"):
            kindling.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20, f"{peak / 1e6:.0f} MB traced while loading a 1 KB file"


def test_a_tensor_shape_whose_product_wraps(tmp_path):
    def edit(h):
        t = h.tensors[0]
        del t.shape[:]
        t.shape.extend([2**32, 2**32, 2**32])  # 2^96 elements: 0 in int64
    path = _rewrite(_saved(tmp_path), edit)
    with pytest.raises(FormatError, match=rf"^{path}: tensor fc.weight: 48 bytes do not hold shape"):
        kindling.load(path)


def test_a_graph_that_reads_a_two_output_node_as_one(tmp_path):
    g = nn.Graph(inputs=["x"], outputs=["relu"], name="g")
    g.add(nn.Slice(1, [2], num_outputs=2, name="split"), ["x"])
    g.add(nn.ReLU(name="relu"), ["split:0"])
    path = _rewrite(_saved(tmp_path, g), lambda h: _module(h, "relu").inputs.__setitem__(0, "split"))
    with pytest.raises(FormatError, match=rf"^{path}: module 'g' \(Graph\) cannot be rebuilt: .*'split' does not "
                                          r"name an output of 'split', which has 2 \(read them as 'split:0' .. 'split:1'\)"):
        kindling.load(path)
    path = _rewrite(path, lambda h: _module(h, "relu").inputs.__setitem__(0, "split:2"))
    with pytest.raises(FormatError, match="'split:2' does not name an output of 'split'"):
        kindling.load(path)


def test_info_names_the_file_when_its_input_shape_does_not_fit(tmp_path, capsys):
    from kindling import cli
    path = _rewrite(_saved(tmp_path), lambda h: h.metadata.input_shape.__setitem__(1, 5))
    assert cli.main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kindling info: error: {path}: tracing the input shape [1, 5]: 'fc' (Linear) does not fit")
    assert err.count("\n") == 1


def test_a_loaded_model_still_runs(tmp_path):
    """The placeholders are all replaced: the model computes and trains like the saved one."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, name="c"), nn.BatchNorm2d(3, name="bn"), nn.Flatten(),
                          nn.Linear(12, 2, name="fc"), name="net")
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4)).astype(np.float32)
    back = kindling.load(kindling.save(model.evaluate(), tmp_path / "m.kdl"))
    np.testing.assert_array_equal(back.evaluate().forward(x), model.forward(x))
    assert all(a.flags.writeable for _, a, _ in back.named_parameters())


def test_a_tensor_with_a_zero_in_its_shape_saves_and_loads(tmp_path):
    """Found by tests/fuzz: save took a memoryview cast of an empty tensor (a TypeError)."""
    model = nn.Sequential(nn.Scale([0], name="empty"), name="net")
    back = kindling.load(kindling.save(model, tmp_path / "m.kdl"))
    assert back.find("empty").params["weight"].shape == (0,)
