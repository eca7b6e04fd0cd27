"""Caffe mean files (mean.binaryproto as BVLC and zoo models ship them, or .npy) reduced to
per-channel means, through read_mean and `kindling convert caffe --mean-file`."""
import subprocess
import sys

import numpy as np
import pytest

import kindling
from caffe_nets import LENET
from kindling.converters import caffe
from kindling.protos import caffe_pb2


def _binaryproto(path, image, legacy: bool, double: bool = False):
    blob = caffe_pb2.BlobProto()
    if legacy:  # ImageNet's imagenet_mean.binaryproto: num, channels, height, width
        blob.num, blob.channels, blob.height, blob.width = 1, *image.shape
    else:
        blob.shape.dim.extend([1, *image.shape])
    (blob.double_data if double else blob.data).extend(image.ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return path


@pytest.mark.parametrize("legacy, double", [(True, False), (False, False), (False, True)],
                         ids=["legacy_dims", "shape", "double_data"])
def test_a_mean_image_becomes_its_per_channel_means(tmp_path, legacy, double):
    image = np.random.default_rng(0).uniform(0, 255, (3, 256, 256)).astype(np.float32)
    path = _binaryproto(tmp_path / "mean.binaryproto", image, legacy, double)
    np.testing.assert_allclose(caffe.read_mean(path), image.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6)


def test_npy_mean_files_as_pycaffe_writes_them(tmp_path):
    image = np.random.default_rng(1).uniform(0, 255, (3, 8, 8))
    np.save(tmp_path / "mean.npy", image)
    np.save(tmp_path / "channels.npy", np.array([104.0, 117.0, 123.0]))
    np.testing.assert_allclose(caffe.read_mean(tmp_path / "mean.npy"), image.mean(axis=(1, 2)))
    assert caffe.read_mean(tmp_path / "channels.npy") == [104.0, 117.0, 123.0]


def test_bad_mean_files_are_named(tmp_path):
    (tmp_path / "text.binaryproto").write_text("not a blob at all \xff")
    with pytest.raises(caffe.CaffeError, match="text.binaryproto: not a Caffe mean file"):
        caffe.read_mean(tmp_path / "text.binaryproto")
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=4)
    blob.data.extend([1.0] * 10)
    (tmp_path / "short.binaryproto").write_bytes(blob.SerializeToString())
    with pytest.raises(caffe.CaffeError, match="short.binaryproto: a mean file holds 10 values for the shape"):
        caffe.read_mean(tmp_path / "short.binaryproto")
    with pytest.raises(caffe.CaffeError, match="missing.binaryproto: cannot read"):
        caffe.read_mean(tmp_path / "missing.binaryproto")


def test_convert_records_the_mean_file_as_per_channel_means(tmp_path):
    image = np.full((1, 28, 28), 33.0, np.float32)
    mean = _binaryproto(tmp_path / "mean.binaryproto", image, legacy=True)
    out = tmp_path / "lenet.kdl"
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", LENET / "lenet.prototxt",
                        "--caffemodel", LENET / "lenet_iter_10000.caffemodel", "-o", out, "--mean-file", mean,
                        "--scale", "0.00390625"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert kindling.load(out).metadata["preprocessing"] == {"mean": [33.0], "scale": 0.00390625}
    out.unlink()
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", LENET / "lenet.prototxt",
                        "-o", out, "--mean-file", mean, "--mean", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "give --mean or --mean-file, not both" in r.stderr and not out.exists()


def test_a_train_val_mean_file_is_noted(tmp_path):
    proto = tmp_path / "train_val.prototxt"
    proto.write_text('layer { name: "data" type: "Data" top: "data" top: "label" transform_param { crop_size: 28 '
                     'mean_file: "data/ilsvrc12/imagenet_mean.binaryproto" } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                     'inner_product_param { num_output: 2 } }\n'
                     'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    model = caffe.convert(proto, inputs={"data": [1, 3, 28, 28]})
    assert any("imagenet_mean.binaryproto: give it with --mean-file" in n for n in model.notes)
    model = caffe.convert(proto, inputs={"data": [1, 3, 28, 28]}, preprocessing={"mean": [1.0, 2.0, 3.0]})
    assert not any("--mean-file" in n for n in model.notes)


def _npy(header: str, data: bytes = b"") -> bytes:
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


@pytest.mark.parametrize("content, problem", [
    (b"", r"not a .npy file \(0 bytes"),                                             # numpy: EOFError
    (_npy("{'descr': '<f4',"), r"damaged .npy header|not a .npy header"),           # numpy: SyntaxError
    (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000,), }"),
     r"the header says \(10000000000,\) of float32"),                             # numpy: 37 GiB allocated first
    (_npy("{'descr': 'V4', 'fortran_order': False, 'shape': (3,), }", bytes(12)),
     r"dtype 'V4' is not a plain number type"),
])
def test_hostile_npy_mean_files_are_named(tmp_path, content, problem):
    path = tmp_path / "mean.npy"
    path.write_bytes(content)
    with pytest.raises(caffe.CaffeError, match=rf"^{path}: ({problem})"):
        caffe.read_mean(path)


def test_mean_files_without_finite_values_or_values_at_all(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan, 3.0]))
    with pytest.raises(caffe.CaffeError, match="nan.npy: the mean image holds values that are not finite"):
        caffe.read_mean(tmp_path / "nan.npy")
    np.save(tmp_path / "empty.npy", np.zeros((3, 0, 0), np.float32))
    with pytest.raises(caffe.CaffeError, match=r"empty.npy: a mean file holds one image .* got shape \[3, 0, 0\]"):
        caffe.read_mean(tmp_path / "empty.npy")
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1 << 32, 1 << 32])  # 2^64 values claimed, none held: no int64 wrap to 0
    (tmp_path / "wrap.binaryproto").write_bytes(blob.SerializeToString())
    with pytest.raises(caffe.CaffeError, match=r"wrap.binaryproto: a mean file holds 0 values for the shape"):
        caffe.read_mean(tmp_path / "wrap.binaryproto")
