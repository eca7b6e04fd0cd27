"""The native .kdl format: bit-exact round trips, and every kind of damage refused clearly."""
import os
import struct

import numpy as np
import pytest

import kindling
from kindling.runtime import nn
from kindling.runtime.format import FormatError, read_header


def _graph_model():
    g = nn.Graph(inputs=["data"], outputs=["prob", "aux"], name="net")
    g.add(nn.Conv2d(3, 4, 3, padding=1, groups=1, name="conv1"), ["data"])
    g.add(nn.BatchNorm2d(4, name="bn1"), ["conv1"])
    g.add(nn.ReLU(name="relu1"), ["bn1"])
    g.add(nn.MaxPool2d(3, 2, ceil_mode=True, name="pool1"), ["relu1"])
    g.add(nn.AvgPool2d(global_pooling=True, name="gap"), ["pool1"])
    g.add(nn.Flatten(name="flat"), ["gap"])
    g.add(nn.Linear(4, 5, name="fc"), ["flat"])
    g.add(nn.Add(coeffs=[1.0, 0.5], name="add"), ["fc", "fc"])
    g.add(nn.LogSoftmax(name="prob"), ["add"])
    g.add(nn.Reshape([0, -1, 1], name="aux"), ["fc"])
    return g


METADATA = {
    "source": {"framework": "caffe", "files": [{"path": "deploy.prototxt", "sha256": "ab" * 32, "size": 123}]},
    "input_shape": [-1, 3, 8, 8], "input_names": ["data"], "output_names": ["prob", "aux"],
    "labels": ["n01440764 tench", "goldfish"],
    "preprocessing": {"mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0], "scale": 0.5, "channel_order": "bgr",
                      "input_size": [8, 8], "resize": 10},
    "training": {"iteration": 1301, "epoch": 2, "loss": 0.25,
                 "validation": {"dataset": "val", "count": 60, "results": {"Top1Accuracy": 0.75}}},
    "extra": {"note": "x"},
}


def test_round_trip_is_bit_exact_with_metadata_and_training_flags(tmp_path):
    model = _graph_model()
    model.train()
    model.forward(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))  # move running stats
    model.freeze("conv1")
    model.find("fc").set_mult("weight", 10.0, 0.0)
    path = kindling.save(model, tmp_path / "m.kdl", metadata=METADATA)
    loaded = kindling.load(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert loaded.metadata == METADATA
    assert loaded.find("conv1").frozen and not loaded.find("fc").frozen
    assert loaded.find("fc").lr_mult == {"weight": 10.0} and loaded.find("fc").decay_mult == {"weight": 0.0}
    assert loaded.node_inputs == model.node_inputs and loaded.output_names == ["prob", "aux"]
    model.evaluate()
    loaded.evaluate()
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for y1, y2 in zip(model.forward(x), loaded.forward(x)):
        assert np.array_equal(y1, y2)
    mapped = kindling.runtime.format.load(path, mmap=True)
    assert all(np.array_equal(mapped.state_dict()[k], a[k]) for k in a)


def test_layout_is_aligned_and_streamable(tmp_path):
    path = kindling.save(_graph_model(), tmp_path / "m.kdl")
    header, start = read_header(path)
    assert start % 64 == 0
    assert all(t.offset % 64 == 0 for t in header.tensors)
    assert os.path.getsize(path) == start + header.data_size


def _damaged(tmp_path, how):
    path = kindling.save(_graph_model(), tmp_path / "m.kdl")
    data = bytearray(path.read_bytes())
    how(data)
    bad = tmp_path / "bad.kdl"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("how,message", [
    (lambda d: d.__delitem__(slice(len(d) - 10, None)), "truncated"),
    (lambda d: d.__setitem__(len(d) - 70, d[len(d) - 70] ^ 0xFF), "SHA-256 mismatch in tensor|non-zero padding"),
    (lambda d: d.__setitem__(60, d[60] ^ 0xFF), "corrupt header"),
    (lambda d: d.__setitem__(slice(0, 5), b"GIF89"), "not a kindling model"),
    (lambda d: d.__setitem__(5, 2), "newer kindling: format 2.0"),
    (lambda d: d.__delitem__(slice(20, None)), "too short|truncated"),
])
def test_damaged_files_are_refused_naming_file_and_problem(tmp_path, how, message):
    bad = _damaged(tmp_path, how)
    with pytest.raises(FormatError, match=message) as e:
        kindling.load(bad)
    assert str(e.value).startswith(str(bad))


def test_flipped_byte_inside_a_tensor_is_found(tmp_path):
    path = kindling.save(_graph_model(), tmp_path / "m.kdl")
    header, start = read_header(path)
    t = next(t for t in header.tensors if t.key == "fc.weight")
    data = bytearray(path.read_bytes())
    data[start + t.offset + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="SHA-256 mismatch in tensor fc.weight"):
        kindling.load(path)


def test_unknown_layer_type_is_refused(tmp_path):
    class Custom(nn.Identity):
        pass
    m = nn.Sequential(Custom(name="mine"), name="s")
    path = kindling.save(m, tmp_path / "c.kdl")
    with pytest.raises(FormatError, match="module 'mine' has unknown layer type 'Custom'"):
        kindling.load(path)


def test_duplicate_names_and_unsavable_attributes_leave_nothing_behind(tmp_path):
    good = kindling.save(nn.Sequential(nn.Linear(2, 2, name="fc"), name="s"), tmp_path / "good.kdl")
    before = good.read_bytes()
    with pytest.raises(FormatError, match="repeated: fc"):
        kindling.save(nn.Sequential(nn.Linear(2, 2, name="fc"), nn.Linear(2, 2, name="fc"), name="s"), good)
    odd = nn.Reshape([1, 2], name="r")
    odd.config = lambda: {"shape": object()}
    with pytest.raises(FormatError, match="attribute 'shape'"):
        kindling.save(nn.Sequential(odd, name="s"), good)
    assert good.read_bytes() == before, "a failed save must not touch the existing file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.kdl"], "no temp files left behind"


def test_unknown_metadata_key_is_refused(tmp_path):
    with pytest.raises(FormatError, match="unknown metadata keys"):
        kindling.save(nn.Identity(name="i"), tmp_path / "m.kdl", metadata={"lables": ["a"]})


def test_save_permissions_follow_umask(tmp_path):
    path = kindling.save(nn.Identity(name="i"), tmp_path / "m.kdl")
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_header_prefix_layout(tmp_path):
    path = kindling.save(nn.Identity(name="i"), tmp_path / "m.kdl")
    magic, major, minor, hlen = struct.unpack("<5sBBQ", path.read_bytes()[:15])
    assert (magic, major, minor) == (b"\x93KNDL", 1, 0) and hlen > 0


def test_caffe_extra_layers_round_trip_with_their_settings(tmp_path):
    """Exp, Log, Threshold, MVN, Tile, Reduction and ArgMax rebuild from their saved config."""
    layers = [nn.Exp(2.0, 0.5, 0.25, name="exp"), nn.Log(10.0, 0.5, 8.0, name="log"),
              nn.Threshold(1.5, name="th"), nn.MVN(True, True, 0.125, name="mvn"), nn.Tile(2, 3, name="tile"),
              nn.Reduction("sumsq", 3, 0.5, name="red")]
    heads = [nn.ArgMax(2, 1, True, name="top2"), nn.ArgMax(3, None, False, name="flat")]
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for head in heads:
        model = nn.Sequential(*layers, head, name="s")
        loaded = kindling.load(kindling.save(model, tmp_path / "m.kdl"))
        for a, b in zip(model.modules(), loaded.modules()):
            assert type(a) is type(b) and a.name == b.name and a.config() == b.config(), a.name
        assert np.array_equal(model.forward(x), loaded.forward(x))
