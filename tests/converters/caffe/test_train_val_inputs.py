"""train_val files without --input: the data input's channels from the first convolution's
weights, its size from the data layer's crop_size or the first InnerProduct's weights, and --input
asked for only where nothing fixes it."""
import numpy as np
import pytest

from caffe_nets import LENET, ZOO, inputs_header, opencv_forward, write_net, zoo_net
from helpers import assert_close
from kindling.converters import caffe


def test_lenet_train_test_with_the_real_weights(tmp_path):
    """BVLC's lenet_train_test.prototxt reads MNIST from LMDB: 1 channel from conv1's 20x1x5x5
    weights; 25..28 all give ip1 its 800 inputs, and 28 is the one where both 2x2 poolings cover
    their input whole. The converted net computes what the deploy net does in OpenCV."""
    model = caffe.convert(ZOO / "lenet_train_test.prototxt", LENET / "lenet_iter_10000.caffemodel")
    assert model.metadata["input_shape"] == [-1, 1, 28, 28]
    assert model.metadata["preprocessing"] == {"scale": 0.00390625}  # from the data layer
    assert any("1 channels from conv1's weights, 28x28 from ip1's 800 inputs (sizes 25..28" in n for n in model.notes)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    expected = opencv_forward(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", {"data": x}, ["ip2"])
    assert_close(model.evaluate().forward(x), expected[0], 1e-5)


def test_cifar10_quick_takes_its_32x32(tmp_path):
    """Overlapping 3x3 poolings by 2 leave 32..39 giving ip1 its 1024 inputs: the smallest is
    CIFAR-10's 32."""
    _, weights = zoo_net(tmp_path, ZOO / "cifar10_quick.prototxt")
    model = caffe.convert(ZOO / "cifar10_quick_train_test.prototxt", weights)
    assert model.metadata["input_shape"] == [-1, 3, 32, 32]


def test_a_net_nothing_sizes_is_left_free_and_one_without_convolutions_asks(tmp_path):
    data = 'layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 1 } }\n'
    conv = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 3 } }\n'
    proto, weights = write_net(tmp_path, data + conv, {"c": [(2, 5, 3, 3), (2,)]})
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, 5, -1, -1] and model.metadata["sample_shape"] == [1, 5, 224, 224]
    mlp = data + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n'
    proto, weights = write_net(tmp_path, mlp, {"ip": [(2, 12), (2,)]})
    with pytest.raises(caffe.CaffeError, match=r"no shape for input 'data', and no convolution's weights tell its "
                                               r"channels: give it, e.g. --input data=1,3,224,224"):
        caffe.convert(proto, weights)
    assert caffe.convert(proto, weights, inputs={"data": [1, 12]}).metadata["input_shape"] == [-1, 12]


def test_an_inner_product_no_square_size_feeds_is_refused_with_the_sizes_around_it(tmp_path):
    body = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 '
            'kernel_size: 1 } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "c" top: "ip" inner_product_param { num_output: 2 } }\n')
    data = 'layer { name: "d" type: "Data" top: "data" data_param { source: "x" batch_size: 1 } }\n'
    proto, weights = write_net(tmp_path, data + body, {"c": [(2, 3, 1, 1), (2,)], "ip": [(2, 30), (2,)]})
    with pytest.raises(caffe.CaffeError, match=r"ip takes 30 inputs, which no square size gives \(sizes 3 and 4 "
                                               r"give 18 and 32\): give it, e.g. --input data=1,3,4,4"):
        caffe.convert(proto, weights)
