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
