"""A fork's own caffe.proto (--proto): its parameter fields and V1 layer types parse by name.
DeepLab v1's real test net is in its fork's V1 format (IMAGE_SEG_DATA, INTERP, PADDING, MAT_WRITE,
convolutions dilated by `hole`), which BVLC's schema cannot even parse."""
import subprocess
import sys

import numpy as np
import pytest

from caffe_nets import ZOO, add_blob
from kindling.converters import caffe
from kindling.protos import caffe_pb2

DEEPLAB = ZOO / "deeplab_v1_vgg128_noup_test.prototxt"
DEEPLAB_PROTO = ZOO / "deeplab_v1_caffe.proto"


def _weights(tmp_path, model):
    """A caffemodel holding seeded weights for every convolution of ``model`` by layer name."""
    net, rng = caffe_pb2.NetParameter(), np.random.default_rng(0)
    for m in model.modules():
        if "weight" in m.params:
            layer = net.layer.add(name=m.name)
            for k in ("weight", "bias"):
                arr = (rng.standard_normal(m.params[k].shape) * 0.01).astype(np.float32)
                add_blob(layer, arr).shape.dim.extend(arr.shape)
    path = tmp_path / "deeplab.caffemodel"
    path.write_bytes(net.SerializeToString())
    return path


def test_deeplab_v1_reads_with_its_forks_proto(tmp_path):
    with pytest.raises(caffe.CaffeError, match=r"IMAGE_SEG_DATA is no V1 layer type of BVLC Caffe.*--proto"):
        caffe.convert(DEEPLAB)
    structure = caffe.convert(DEEPLAB, proto=DEEPLAB_PROTO, inputs={"data": [1, 3, 64, 64]})
    weights = _weights(tmp_path, structure)
    model = caffe.convert(DEEPLAB, weights, proto=DEEPLAB_PROTO)  # no --input: the fork's fields say it
    notes = "\n".join(model.notes)
    assert "input 'data': 3 channels from conv1_1's weights, 514x514 from its data layer's crop_size" in notes
    assert "dropped data (ImageSegData)" in notes and "dropped fc8_crop_mat (MatWrite)" in notes
    assert "interp_param" not in notes and "padding_param" not in notes  # the fork's fields are read
    assert model.metadata["preprocessing"]["mean"] == pytest.approx([104.008, 116.669, 122.675])
    assert model.find("conv5_1").dilation == (2, 2) and model.find("fc6").dilation == (4, 4)  # hole: 2, 4
    interp, crop = model.find("fc8_interp"), model.find("fc8_crop")
    assert (type(interp).__name__, interp.zoom) == ("Interp", 8)
    assert (type(crop).__name__, crop.pads[4:]) == ("Pad", [-7, -8, -7, -8])
    assert model.metadata["input_shape"] == [-1, 3, -1, -1]
    # DeepLab sizes its inputs 16k + 2 (crop_size 514 = 32 * 16 + 2) so that the scores, zoomed by
    # 8 and cropped 7 and 8, come out at the input's size
    y = model.evaluate().forward(np.zeros((1, 3, 66, 66), np.float32))
    assert y.shape == (1, 21, 66, 66)


def test_the_command_line_takes_the_proto_and_a_bad_one_is_named(tmp_path):
    bad = tmp_path / "fork.proto"
    bad.write_text('syntax = "proto2";\npackage caffe;\nmessage NetParameter { optional strin name = 1; }\n')
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", DEEPLAB, "--proto", bad,
                        "-o", tmp_path / "x.kdl"], capture_output=True, text=True)
    assert r.returncode == 1 and f"{bad}: protoc cannot read it" in r.stderr and "strin" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", DEEPLAB, "--proto",
                        DEEPLAB_PROTO, "--input", "data=1,3,96,96", "-o", tmp_path / "deeplab.kdl"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fc8_interp" in subprocess.run([sys.executable, "-m", "kindling", "info", tmp_path / "deeplab.kdl"],
                                          capture_output=True, text=True).stdout


# A modern-format fork in a package of its own: a parameter block at a number kindling's schema
# already gives to prelu_param, a field kindling defines with another type, and an enum value whose
# number kindling's STOCHASTIC already has. Prototxts are text, so all of it must parse by name.
FORK_PROTO = """syntax = "proto2";
package myfork;
message BlobShape { repeated int64 dim = 1 [packed = true]; }
message NetParameter {
  optional string name = 1;
  repeated string input = 3;
  repeated BlobShape input_shape = 8;
  repeated LayerParameter layer = 100;
}
message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated string bottom = 3;
  repeated string top = 4;
  optional GainParameter gain_param = 131;
  optional ReLUParameter relu_param = 123;
  optional PoolingParameter pooling_param = 121;
}
message GainParameter { optional float gain = 1 [default = 1]; repeated string tag = 2; }
message ReLUParameter { optional float negative_slope = 1; optional string engine = 2; }
message PoolingParameter {
  enum PoolMethod { MAX = 0; AVE = 1; DEF = 2; }
  optional PoolMethod pool = 1;
  optional uint32 kernel_size = 2;
  optional uint32 stride = 3;
}
"""

FORK_NET = """name: "forked"
input: "data"
input_shape { dim: 1 dim: 3 dim: 48 dim: 64 }
layer { name: "relu" type: "ReLU" bottom: "data" top: "relu"
        relu_param { negative_slope: 0.1 }
        gain_param { gain: 2 tag: "fork" } }
layer { name: "pool" type: "Pooling" bottom: "relu" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "up" type: "Interp" bottom: "pool" top: "up" interp_param { zoom_factor: 2 } }
"""


def test_a_modern_forks_fields_parse_by_name_whatever_their_numbers(tmp_path):
    import cv2

    from caffe_nets import photo
    from kindling.converters.caffe.parse import read_prototxt
    from kindling.converters.caffe.schema import with_fork
    fork = tmp_path / "myfork.proto"
    fork.write_text(FORK_PROTO)
    net_file = tmp_path / "forked.prototxt"
    net_file.write_text(FORK_NET.replace("pool: MAX", "pool: DEF"))
    with pytest.raises(caffe.CaffeError, match=r"forked.prototxt: syntax error at line 8.*DEF"):
        caffe.convert(net_file)  # BVLC's PoolMethod has no DEF
    schema = with_fork(fork)
    assert any("ReLUParameter.engine: kept kindling's definition" in n for n in schema.notes), schema.notes
    net, _ = read_prototxt(net_file, schema)
    relu = net.layer[0]
    assert relu.gain_param.gain == 2 and list(relu.gain_param.tag) == ["fork"]  # renumbered, read by name
    numbers = {f.name: f.number for f in type(relu).DESCRIPTOR.fields}
    assert numbers["prelu_param"] == 131 and numbers["gain_param"] not in (131, *[
        n for k, n in numbers.items() if k != "gain_param"])
    pool_enum = type(net.layer[1].pooling_param).DESCRIPTOR.fields_by_name["pool"].enum_type
    assert pool_enum.values_by_name["DEF"].number not in (0, 1, 2)  # DEF kept apart from MAX, AVE, STOCHASTIC

    # The whole net converts with the fork's schema; with DEF spelt MAX it is a net OpenCV reads,
    # and the two agree on the photo at the net's size and at another (nothing fixes the size).
    net_file.write_text(FORK_NET)
    model = caffe.convert(net_file, proto=fork).evaluate()
    assert model.metadata["input_shape"] == [-1, -1, -1, -1]  # no layer fixes even the channels
    assert any("gain_param" in n for n in model.notes)  # parsed, and said to be unused
    plain = tmp_path / "plain.prototxt"
    plain.write_text(FORK_NET.replace('\n        gain_param { gain: 2 tag: "fork" }', ""))
    reference = cv2.dnn.readNetFromCaffe(str(plain))
    for size in ((48, 64), (75, 61)):
        x = photo(size)
        reference.setInput(x)
        expected = reference.forward()
        np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-4)
