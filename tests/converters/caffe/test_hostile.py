"""Hostile and careless Caffe files (issue 15; many found by tests/fuzz): one CaffeError naming the
file and the layer, nothing allocated that the file cannot back, and no output file left behind."""
import os
import subprocess
import sys

import numpy as np
import pytest

from caffe_nets import LENET, inputs_header, write_net
from kindling.converters import caffe
from kindling.protos import caffe_pb2

HEAD = inputs_header({"data": (1, 3, 6, 6)})


def _proto(tmp_path, body, head=HEAD):
    p = tmp_path / "net.prototxt"
    p.write_text(head + body)
    return p


def _cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_a_layer_that_lost_its_bottom_is_named(tmp_path):
    # one flipped bit turns "  bottom:" into " 0bottom:", which protobuf skips as an unknown field
    p = tmp_path / "lenet.prototxt"
    p.write_text((LENET / "lenet.prototxt").read_text().replace('  bottom: "pool2"', ' 0bottom: "pool2"'))
    with pytest.raises(caffe.CaffeError, match=rf"{p}: layer 'ip1' \(InnerProduct\) has no bottom"):
        caffe.convert(p)


def test_zero_stride_is_refused_naming_file_and_layer(tmp_path):
    p = _proto(tmp_path, 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                         'pooling_param { kernel_size: 2 stride_h: 0 stride_w: 1 } }')
    with pytest.raises(caffe.CaffeError, match=rf"{p}: layer 'p' \(Pooling\): .*stride \(0, 1\) must be positive"):
        caffe.convert(p)


def test_deep_nesting_and_long_lines_are_bounded(tmp_path):
    p = _proto(tmp_path, "foo { " * 400 + "}" * 400)  # protobuf's parser would recurse past Python's limit
    with pytest.raises(caffe.CaffeError, match=rf"{p}: line 3: blocks nest more than 32 levels deep"):
        caffe.convert(p)
    p = _proto(tmp_path, "# " + "x" * (2 << 20) + "\n")
    with pytest.raises(caffe.CaffeError, match=rf"{p}: line 3 is 2,097,154 characters long"):
        caffe.convert(p)


def test_unknown_field_scan_is_linear_in_a_long_word(tmp_path):
    """A 20,000-character word took 5 s (each start position retried the whole word); a million
    now takes milliseconds. The bound is loose on purpose: quadratic would take hours."""
    import time
    p = _proto(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\nfoo: ' + "a" * 1_000_000 + "\n")
    start = time.process_time()
    net, notes = caffe.parse.read_prototxt(p)
    assert time.process_time() - start < 10 and notes == ["net.prototxt: ignored fields this converter does not use: foo"]


def test_unterminated_strings_do_not_make_the_scan_quadratic(tmp_path):
    import time
    p = _proto(tmp_path, 'name: "' + '\\"' * 500_000 + "\n")
    start = time.process_time()
    with pytest.raises(caffe.CaffeError, match="syntax error"):
        caffe.convert(p)
    assert time.process_time() - start < 10


def test_a_layer_larger_than_memory_is_refused_with_its_size_before_allocating(tmp_path):
    p = _proto(tmp_path, 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                         'inner_product_param { num_output: 2147483648 } }')
    with pytest.raises(caffe.CaffeError, match=rf"{p}: layer 'fc' \(InnerProduct\): a parameter of shape "
                                               r"\[2147483648, 108\] \(float32\) needs 927.7 GB of memory, but only"):
        caffe.convert(p)


def test_a_huge_num_output_with_weights_is_compared_with_the_blob_not_allocated(tmp_path):
    body = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }'
    proto, weights = write_net(tmp_path, HEAD + body, {"fc": [(2, 108), (2,)]})
    proto.write_text(proto.read_text().replace("num_output: 2", "num_output: 2147483647"))
    with pytest.raises(caffe.CaffeError, match=r"layer 'fc' \(InnerProduct\): weight blob has shape \[2, 108\].*"
                                               r"needs \[2147483647, 108\]"):
        caffe.convert(proto, weights)


def test_an_output_too_large_for_memory_fails_before_anything_is_written(tmp_path):
    p = _proto(tmp_path, 'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { axis: 2 tiles: 1073741824 } }')
    out = tmp_path / "out" / "m.kdl"
    r = _cli("convert", "caffe", "--prototxt", p, "-o", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{p}: layer 't' (Tile) does not fit its input shapes" in r.stderr and "GB of memory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_inputs_with_impossible_shapes_are_refused(tmp_path):
    body = 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
    for dims, problem in (((1, -3, 6, 6), "every dimension after the batch must be positive"),
                          ((1, 3, 0, 6), "every dimension after the batch must be positive"),
                          ((1, 1 << 20, 1 << 20, 1 << 10), "needs 4,503,599.6 GB of memory")):
        p = _proto(tmp_path, body, inputs_header({"data": dims}))
        with pytest.raises(caffe.CaffeError, match=rf"{p}: .*input 'data'.*{problem}"):
            caffe.convert(p)


def test_translator_errors_name_the_file(tmp_path):
    p = _proto(tmp_path, 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { kernel_size: 3 } }')
    with pytest.raises(caffe.CaffeError, match=rf"^{p}: layer 'c' \(Convolution\): convolution_param.num_output is missing"):
        caffe.convert(p)


def test_a_net_named_like_one_of_its_layers_converts_and_saves(tmp_path):
    import kindling
    p = _proto(tmp_path, 'layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }'
                         'layer { name: "fc" type: "InnerProduct" bottom: "r" top: "fc" inner_product_param { num_output: 2 } }',
               head='name: "fc"\n' + HEAD)
    model = caffe.convert(p)
    assert model.name == "fc_net" and [m.name for m in model.children()] == ["relu", "fc"]
    back = kindling.load(kindling.save(model, tmp_path / "m.kdl"))
    x = np.random.default_rng(0).normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _caffemodel_with_blob(tmp_path, blob: caffe_pb2.BlobProto | bytes):
    """The net's fc layer with ``blob`` (raw bytes, written as they are) as its weight."""
    body = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }'
    proto, weights = write_net(tmp_path, HEAD + body, {})
    raw = blob if isinstance(blob, bytes) else blob.SerializeToString()
    bias = caffe_pb2.BlobProto(data=[0.0, 0.0]).SerializeToString()
    layer = (caffe_pb2.LayerParameter(name="fc", type="InnerProduct").SerializeToString()
             + b"\x3a" + _varint(len(raw)) + raw + b"\x3a" + _varint(len(bias)) + bias)  # blobs: field 7
    weights.write_bytes(_varint(100 << 3 | 2) + _varint(len(layer)) + layer)  # NetParameter.layer: field 100
    return proto, weights


def test_a_corrupt_blob_shape_names_file_and_layer(tmp_path):
    # field 7 (shape), length 3, then a key announcing a field that runs past the end
    proto, weights = _caffemodel_with_blob(tmp_path, b"\x3a\x03\x08\xff\xff")
    with pytest.raises(caffe.CaffeError, match=rf"{weights}: truncated or corrupt caffemodel: layer 'fc': blob 0: "
                                               r"corrupt blob shape"):
        caffe.convert(proto, weights)


@pytest.mark.parametrize("dims, held", [([1 << 32, 1 << 32], 0), ([-2, -1], 2), ([3, -4], 0)])
def test_blob_shapes_that_wrap_or_go_negative_are_refused(tmp_path, dims, held):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(dims)
    blob.data.extend([1.0] * held)
    proto, weights = _caffemodel_with_blob(tmp_path, blob)
    with pytest.raises(caffe.CaffeError, match=rf"{weights}: .*layer 'fc': blob 0: blob of shape "
                                               rf"\[{dims[0]}, {dims[1]}\] holds {held} values"):
        caffe.convert(proto, weights)


def test_unpacked_float_data_is_read(tmp_path):
    """Very old writers put each float in a field of its own: read into 4 bytes a value."""
    body = 'layer { name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param { bias_term: false } }'
    proto, weights = write_net(tmp_path, HEAD + body, {"sc": [np.array([0.5, 2.0, -1.0], np.float32)]})
    net = caffe_pb2.NetParameter.FromString(weights.read_bytes())
    shape = net.layer[0].blobs[0].shape.SerializeToString()
    unpacked = b"".join(b"\x2d" + np.float32(v).tobytes() for v in (0.5, 2.0, -1.0))  # field 5, wire type I32
    net.layer[0].blobs[0].Clear()
    net.layer[0].blobs[0].MergeFromString(b"\x3a" + bytes([len(shape)]) + shape + unpacked)
    weights.write_bytes(net.SerializeToString())
    assert caffe.read_blobs(weights)["sc"][0].tolist() == [0.5, 2.0, -1.0]


def test_the_cli_prints_one_line_and_a_traceback_only_when_asked(tmp_path):
    p = _proto(tmp_path, 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 0 } }')
    r = _cli("convert", "caffe", "--prototxt", p, "-o", tmp_path / "m.kdl")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"kindling convert: error: {p}: layer 'p' (Pooling)")
    r = _cli("convert", "caffe", "--prototxt", p, "-o", tmp_path / "m.kdl", env={"KINDLING_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "CaffeError" in r.stderr
    assert not (tmp_path / "m.kdl").exists()


def test_the_cli_names_an_unexpected_error_as_internal_in_one_line(monkeypatch, capsys):
    from kindling import cli
    from kindling.commands import info

    def broken(args):
        raise TypeError("a bug")
    monkeypatch.setattr(info, "run", broken)
    monkeypatch.delenv("KINDLING_DEBUG", raising=False)
    assert cli.main(["info", "--backend"]) == 1
    err = capsys.readouterr().err
    assert err == "kindling info: error: internal error (TypeError: a bug); KINDLING_DEBUG=1 shows where\n"


def test_a_summary_that_fails_leaves_no_file(tmp_path, monkeypatch, capsys):
    """The summary traces every layer's output shape; it used to run after the save, so a trace
    asking for 800 GiB failed with the .kdl already written. Now every check runs before it."""
    from kindling import cli
    from kindling.runtime import shapes
    from kindling.runtime.errors import TooLarge

    def too_large(model, input_shapes):
        raise TooLarge("its output (1, 65536, 65536, 65536) needs 1,125,899.9 GB of memory")
    monkeypatch.setattr(shapes, "trace", too_large)
    out = tmp_path / "out.kdl"
    assert cli.main(["convert", "caffe", "--prototxt", str(LENET / "lenet.prototxt"), "-o", str(out)]) == 1
    assert capsys.readouterr().err == ("kindling convert: error: lenet.prototxt: tracing the converted model: its output "
                                       "(1, 65536, 65536, 65536) needs 1,125,899.9 GB of memory\n")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_deconvolution_without_num_output_is_named(tmp_path):
    """Found by tests/fuzz: ConvTranspose2d took 0 output channels and kernel 0, and the save failed
    on the empty weight."""
    p = _proto(tmp_path, 'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" }')
    with pytest.raises(caffe.CaffeError, match=rf"^{p}: layer 'up' \(Deconvolution\): convolution_param.num_output"):
        caffe.convert(p)
    from kindling.runtime import nn
    for bad in (dict(out_channels=0, kernel_size=2), dict(out_channels=2, kernel_size=0)):
        with pytest.raises(ValueError, match="must be positive"):
            nn.ConvTranspose2d(in_channels=3, **bad)
        with pytest.raises(ValueError, match="must be positive"):
            nn.Conv2d(in_channels=3, **bad)


def test_degenerate_settings_found_by_fuzzing_are_named(tmp_path):
    """A one-top Slice (a copy in Caffe), a Crop of a 0-d blob, group 0, 0 channels."""
    from kindling.runtime import nn
    p = _proto(tmp_path, 'layer { name: "s" type: "Slice" bottom: "data" top: "s" }')
    model = caffe.convert(p)  # used to give a one-item list, which the next module could not take
    x = np.random.default_rng(0).normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), x)
    p = _proto(tmp_path, 'layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { axis: 0 } }'
                         'layer { name: "c" type: "Crop" bottom: "r" bottom: "data" top: "c" }')
    with pytest.raises(caffe.CaffeError, match=rf"{p}: layer 'c' \(Crop\) does not fit .*axis 2 is out of range "
                                               r"for an input with 0 axes"):  # was a ZeroDivisionError
        caffe.convert(p)
    p = _proto(tmp_path, 'layer { name: "sh" type: "ShuffleChannel" bottom: "data" top: "sh" '
                         'shuffle_channel_param { group: 0 } }')
    with pytest.raises(caffe.CaffeError, match=rf"{p}: layer 'sh' \(ShuffleChannel\): .*group must be positive"):
        caffe.convert(p)
    for make in (lambda: nn.BatchNorm2d(0), lambda: nn.Slice(1, num_outputs=1)):
        with pytest.raises(ValueError, match="must be positive|at least 2 outputs"):
            make()


def test_a_reshape_axis_out_of_range_is_named_not_allocated(tmp_path):
    """Found by tests/fuzz (inputs 52697 and 66486 of the 10^5 campaign): reshape_param axis
    2147483647 built a 2^31-item list of leading zeros, 16 GB, before anything was checked."""
    for axis, num_axes in ((2147483647, -1), (-7, -1), (1, 9), (2, -2)):
        p = _proto(tmp_path, f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param {{ '
                             f'shape {{ dim: -1 }} axis: {axis} num_axes: {num_axes} }} }}')
        with pytest.raises(caffe.CaffeError, match=rf"{p}: layer 'r' \(Reshape\): reshape_param axis {axis} and "
                                                   rf"num_axes {num_axes} do not fit a 4-d input"):
            caffe.convert(p)
    p = _proto(tmp_path, 'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { '
                         'shape { dim: -1 } axis: 1 } }')  # Caffe's flatten-after-the-batch form still converts
    assert caffe.convert(p).forward(np.zeros((1, 3, 6, 6), np.float32)).shape == (1, 108)


def test_a_pooling_with_a_mask_top_and_no_bottom_is_named(tmp_path):
    """Found by tests/fuzz (prototxt, seed 7): SegNet's mask bookkeeping read the bottom of a
    two-top Pooling before the layer's own check that it has one (an IndexError)."""
    p = _proto(tmp_path, 'layer { name: "pool" type: "Pooling" top: "pool" top: "mask" '
                         'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
    with pytest.raises(caffe.CaffeError, match=r"layer 'pool' \(Pooling\) has no bottom"):
        caffe.convert(p)
