"""Bad Caffe files: one clear error naming the file and layer, and no output file left behind."""
import subprocess
import sys

import numpy as np
import pytest

from caffe_nets import LENET, inputs_header, write_net
from kindling.converters import caffe

BODY = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc" inner_product_param { num_output: 2 } }\n')
BLOBS = {"c": [(4, 3, 3, 3), (4,)], "fc": [(2, 64), (2,)]}


def _net(tmp_path, body=BODY, blobs=BLOBS):
    return write_net(tmp_path, inputs_header({"data": (1, 3, 6, 6)}) + body, blobs)


def convert_cli(proto, weights, out):
    return subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", str(proto),
                           "--caffemodel", str(weights), "-o", str(out)], capture_output=True, text=True)


def test_truncated_caffemodel(tmp_path):
    proto, weights = _net(tmp_path)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(caffe.CaffeError, match=f"{weights}: truncated or corrupt caffemodel"):
        caffe.convert(proto, weights)


def test_corrupt_caffemodel(tmp_path):
    proto, weights = _net(tmp_path)
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes())
    with pytest.raises(caffe.CaffeError, match=f"{weights}"):
        caffe.convert(proto, weights)


def test_prototxt_syntax_error_reports_the_line(tmp_path):
    proto, weights = _net(tmp_path)
    proto.write_text(proto.read_text().replace('top: "fc"', 'top: "fc" }}'))
    with pytest.raises(caffe.CaffeError, match=r"net.prototxt: syntax error at line 4"):
        caffe.convert(proto, weights)


def test_blob_shape_that_does_not_fit(tmp_path):
    proto, weights = _net(tmp_path, blobs={"c": [(4, 3, 5, 5), (4,)], "fc": [(2, 64), (2,)]})
    with pytest.raises(caffe.CaffeError, match=r"layer 'c' \(Convolution\): weight blob has shape \[4, 3, 5, 5\]"):
        caffe.convert(proto, weights)


def test_blob_count_that_does_not_fit(tmp_path):
    proto, weights = _net(tmp_path, blobs={"c": [(4, 3, 3, 3), (4,), (4,)], "fc": [(2, 64), (2,)]})
    with pytest.raises(caffe.CaffeError, match=r"layer 'c' \(Convolution\): has 3 blobs"):
        caffe.convert(proto, weights)


def test_bottom_naming_no_earlier_top(tmp_path):
    proto, weights = _net(tmp_path, BODY.replace('bottom: "c"', 'bottom: "conv_typo"'))
    with pytest.raises(caffe.CaffeError, match=r"layer 'fc' \(InnerProduct\): bottom 'conv_typo' names no earlier top"):
        caffe.convert(proto, weights)


def test_caffemodel_that_does_not_match_the_prototxt(tmp_path):
    proto, _ = _net(tmp_path)
    with pytest.raises(caffe.CaffeError, match=r"no weights for layers c \(Convolution\), fc \(InnerProduct\)"):
        caffe.convert(proto, LENET / "lenet_iter_10000.caffemodel")


def test_failed_cli_conversion_leaves_no_file(tmp_path):
    proto, weights = _net(tmp_path, blobs={"c": [(4, 3, 5, 5), (4,)], "fc": [(2, 64), (2,)]})
    out = tmp_path / "out" / "m.kdl"
    r = convert_cli(proto, weights, out)
    assert r.returncode == 1 and "layer 'c' (Convolution)" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "no temp files left"


def test_files_that_are_not_caffemodels_are_named_for_what_they_are(tmp_path):
    proto, weights = _net(tmp_path)
    h5 = tmp_path / "snapshot.caffemodel.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # the HDF5 signature Caffe's HDF5 snapshots start with
    with pytest.raises(caffe.CaffeError, match=f"{h5}: is an HDF5 snapshot"):
        caffe.convert(proto, h5)
    with pytest.raises(caffe.CaffeError, match=f"{proto}: looks like protobuf text.*swapped"):
        caffe.convert(proto, proto)
    with pytest.raises(caffe.CaffeError, match=f"{weights}: is binary.*swapped"):
        caffe.convert(weights, proto)
    with pytest.raises(caffe.CaffeError, match="lenet_iter_10000.caffemodel: is binary.*swapped"):  # a real one
        caffe.convert(LENET / "lenet_iter_10000.caffemodel", LENET / "lenet.prototxt")
    # A real binary caffemodel whose net name starts with whitespace-valued length bytes is still read.
    from kindling.protos import caffe_pb2
    net = caffe_pb2.NetParameter.FromString(weights.read_bytes())
    net.name = "ResNet-152"  # length 10: the file starts b"\n\nResNet-152"
    renamed = tmp_path / "renamed.caffemodel"
    renamed.write_bytes(net.SerializeToString())
    assert renamed.read_bytes().startswith(b"\n\nResNet-152")
    assert caffe.convert(proto, renamed) is not None


def test_a_placeholder_input_size_is_worked_out_from_the_net(tmp_path):
    """OpenPose's deploy files declare input_dim 1 3 1 1 ("defined at runtime"): the size is
    what the net fixes (here fc's 64 inputs: 6x6), or, when nothing fixes it, any size that fits."""
    header = 'input: "image"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 1 # defined at runtime\ninput_dim: 1\n'
    body = BODY.replace('"data"', '"image"')
    proto, weights = write_net(tmp_path, header + body, BLOBS)
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, 3, 6, 6]
    assert any("input 'image': 3 channels as declared, 6x6 from fc's 64 inputs" in n for n in model.notes)
    assert model.forward(np.zeros((1, 3, 6, 6), np.float32)).shape == (1, 2)
    fully_convolutional = BODY.split("\n")[0].replace('"data"', '"image"')
    proto, weights = write_net(tmp_path, header + fully_convolutional, {"c": BLOBS["c"]})
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, 3, -1, -1] and model.metadata["sample_shape"] == [1, 3, 224, 224]
    assert any("a placeholder its tool replaces at run time: the net takes any size that fits" in n
               for n in model.notes)
    with pytest.raises(caffe.CaffeError) as e:  # a size given by the user is not a placeholder
        caffe.convert(proto, weights, inputs={"image": [1, 3, 1, 1]})
    assert "--input image=" not in str(e.value)
