"""The ways real zoo files are written: V1 layers, input_dim, train_val phases, in-place layers,
BatchNorm + Scale pairs, ceil-mode pooling, custom layer types."""
import numpy as np
import pytest

from caffe_nets import STAGED, inputs_header, opencv_forward, write_net
from helpers import assert_close
from kindling.converters import caffe
from kindling.runtime import nn

V1_NET = """name: "v1net"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 9
input_dim: 9
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 stride: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def test_legacy_v1_net_with_input_dim_matches_opencv(tmp_path):
    proto, weights = write_net(tmp_path, V1_NET, {"conv1": [(4, 3, 3, 3), (4,)], "fc": [(3, 64), (3,)]}, v1=True)
    model = caffe.convert(proto, weights).evaluate()
    assert isinstance(model, nn.Sequential) and model.metadata["input_shape"] == [-1, 3, 9, 9]
    assert model.find("conv1").lr_mult == {"bias": 2.0} and model.find("conv1").decay_mult == {"bias": 0.0}
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    assert_close(model.forward(x), opencv_forward(proto, weights, {"data": x}, ["prob"])[0])


TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "val_lmdb" batch_size: 50 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 engine: CAFFE } }
layer { name: "drop_train_only" type: "Dropout" bottom: "conv1" top: "conv1" include { phase: TRAIN } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_train_val_file_is_filtered_by_phase(tmp_path):
    proto, weights = write_net(tmp_path, TRAIN_VAL, {"conv1": [(4, 3, 3, 3), (4,)], "fc": [(5, 144), (5,)]})
    with pytest.raises(caffe.CaffeError, match="no shape for input 'data'.*give the caffemodel.*--input data="):
        caffe.convert(proto)  # the channels come from the weights
    model = caffe.convert(proto, weights)  # 3 channels from conv1's weights, 8x8 from crop_size
    assert model.metadata["input_shape"] == [-1, 3, 8, 8]
    assert any("input 'data': 3 channels from conv1's weights, 8x8 from its data layer's crop_size" in n
               for n in model.notes)
    assert [m.name for m in model.children()] == ["conv1", "fc"], "TRAIN-only dropout, data, loss, accuracy dropped"
    assert any("dropped loss (SoftmaxWithLoss)" in n for n in model.notes)
    assert model.metadata["preprocessing"] == {"mean": [104.0, 117.0, 123.0], "input_size": [8, 8]}
    assert model.metadata["input_names"] == ["data"]
    with_softmax = caffe.convert(proto, weights, inputs={"data": [1, 3, 8, 8]}, softmax_loss_as_softmax=True)
    y = with_softmax.evaluate().forward(np.ones((2, 3, 8, 8), np.float32))
    assert np.allclose(y.sum(1), 1)


def test_batchnorm_scale_pair_and_in_place_layers_as_a_graph(tmp_path):
    body = """layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: true } }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "add" type: "Eltwise" bottom: "conv" bottom: "data" top: "add" }
"""
    blobs = {"conv": [(4, 4, 1, 1), (4,)], "bn": [np.full(4, 3.0), np.full(4, 8.0), np.array([4.0])],
             "sc": [(4,), (4,)]}
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 4, 5, 5)}) + body, blobs)
    model = caffe.convert(proto, weights).evaluate()
    assert isinstance(model, nn.Graph)
    assert model.node_inputs["add"] == ["relu", "data"]
    bn = model.find("bn")
    assert np.allclose(bn.buffers["running_mean"], 0.75) and np.allclose(bn.buffers["running_var"], 2.0)
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32)
    assert_close(model.forward(x), opencv_forward(proto, weights, {"data": x}, ["add"])[0])


@pytest.mark.parametrize("rounding,size", [("", 4), ("round_mode: FLOOR", 3), ("ceil_mode: false", 3)])
def test_pooling_rounding(tmp_path, rounding, size):
    body = f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ pool: MAX kernel_size: 3 stride: 2 {rounding} }} }}'
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 2, 8, 8)}) + body, {})
    model = caffe.convert(proto, weights)
    assert model.forward(np.zeros((1, 2, 8, 8), np.float32)).shape == (1, 2, size, size)
    if not rounding:  # Caffe's default: ceil, which OpenCV follows too
        x = np.random.default_rng(2).standard_normal((1, 2, 8, 8)).astype(np.float32)
        assert_close(model.forward(x), opencv_forward(proto, weights, {"data": x}, ["p"])[0])


def test_input_layer_and_unknown_fork_fields_are_noted(tmp_path):
    body = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" relu_param { fused_with_bn: true } }
"""
    proto, weights = write_net(tmp_path, body, {})
    model = caffe.convert(proto, weights)
    # a lone ReLU fixes no dimension: every one is free, and the declared shape is the sample
    assert model.metadata["input_shape"] == [-1, -1, -1, -1]
    assert model.metadata["sample_shape"] == [1, 2, 4, 4]
    assert any("fused_with_bn" in n for n in model.notes)


def test_custom_translator_for_a_fork_layer(tmp_path):
    body = 'layer { name: "sw" type: "Swishy" bottom: "data" top: "sw" }'
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 2, 3, 3)}) + body, {})
    with pytest.raises(caffe.CaffeError, match=r"unsupported layers: Swishy x1 \(sw\)"):
        caffe.convert(proto, weights)
    model = caffe.convert(proto, weights, translators={"Swishy": lambda layer, shapes: nn.Sigmoid(name=layer.name)})
    x = np.random.default_rng(3).standard_normal((1, 2, 3, 3)).astype(np.float32)
    assert_close(model.forward(x), 1 / (1 + np.exp(-x)))
    with pytest.raises(ValueError, match="built-in Caffe type 'ReLU' cannot be replaced"):
        caffe.convert(proto, weights, translators={"ReLU": lambda layer, shapes: nn.Identity()})


def test_every_unsupported_layer_is_listed_at_once(tmp_path):
    body = """layer { name: "spp" type: "SPP" bottom: "data" top: "spp" }
layer { name: "r" type: "ReLU" bottom: "data" top: "r" }
layer { name: "lstm" type: "LSTM" bottom: "spp" top: "lstm" }
layer { name: "spp2" type: "SPP" bottom: "data" top: "spp2" }
"""
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 2, 3, 3)}) + body, {})
    with pytest.raises(caffe.CaffeError, match=r"unsupported layers: SPP x2 \(spp, spp2\); LSTM x1 \(lstm\)\."):
        caffe.convert(proto, weights)


# FCN's val nets read images through a Python data layer (no bottoms); Faster R-CNN's proposal layer is
# Python code that computes (bottoms): the one is dropped like a Data layer, the other cannot be converted.
FCN_BODY = """layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 3 kernel_size: 3 pad: 5 } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up" convolution_param { num_output: 3 kernel_size: 4 stride: 2 bias_term: false } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" crop_param { axis: 2 offset: 5 } }
"""
PYTHON_DATA = """layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "voc_layers" layer: "VOCSegDataLayer" param_str: "{\\'split\\': \\'val\\'}" } }
"""
DENSE_DATA = """layer { name: "data" type: "DenseImageData" top: "data" top: "label"
  dense_image_data_param { source: "camvid/test.txt" batch_size: 1 } }
"""  # SegNet's data layer
PYTHON_LOSS = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "crop" bottom: "label" top: "loss" }\n'


@pytest.mark.parametrize("data_layer", [PYTHON_DATA, DENSE_DATA], ids=["python", "dense_image_data"])
def test_python_and_segnet_data_layers_are_dropped_like_a_data_layer(tmp_path, data_layer):
    blobs = {"score": [(3, 2, 3, 3), (3,)], "up": [(3, 3, 4, 4)]}
    proto, weights = write_net(tmp_path, data_layer + FCN_BODY + PYTHON_LOSS, blobs, name="val")
    # without --input: 2 channels from score's weights; nothing fixes the size, which is left free
    model = caffe.convert(proto, weights).evaluate()
    assert model.metadata["input_shape"] == [-1, 2, -1, -1]
    assert any("input 'data': 2 channels from score's weights; nothing fixes its size" in n for n in model.notes)
    assert any(n.startswith("dropped data (") for n in model.notes) and not any("python_param" in n for n in model.notes)
    deploy, _ = write_net(tmp_path, inputs_header({"data": (1, 2, 6, 5)}) + FCN_BODY, blobs, name="deploy")
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 5)).astype(np.float32)
    assert_close(model.forward(x), opencv_forward(deploy, weights, {"data": x}, ["crop"])[0])


def test_python_layer_that_computes_is_refused_by_its_module_or_translated(tmp_path):
    body = ('layer { name: "proposal" type: "Python" bottom: "data" top: "rois" '
            'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" } }\n'
            'layer { name: "spp" type: "SPP" bottom: "data" top: "spp" }\n')
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 2, 3, 3)}) + body, {})
    with pytest.raises(caffe.CaffeError, match=r"Python rpn.proposal_layer.ProposalLayer x1 \(proposal\); SPP x1 \(spp\)"):
        caffe.convert(proto, weights)
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 2, 3, 3)}) + body.split("\n")[0], {})
    model = caffe.convert(proto, weights, translators={"Python": lambda layer, shapes: nn.Sigmoid(name=layer.name)})
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 3)).astype(np.float32)
    assert_close(model.forward(x), 1 / (1 + np.exp(-x)))


# BVLC's mnist_autoencoder names two loss layers "loss": Caffe allows repeats; only kept layers need their own.
REPEATED_LOSS_NAMES = """name: "ae"
layer { name: "data" type: "Data" top: "data" data_param { source: "mnist_lmdb" batch_size: 4 } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
layer { name: "enc" type: "InnerProduct" bottom: "data" top: "enc" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "enc" bottom: "flat" top: "xent" }
layer { name: "out" type: "Sigmoid" bottom: "enc" top: "out" }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "flat" top: "l2" }
"""


def test_repeated_names_of_dropped_layers_are_accepted(tmp_path):
    w, b = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32), np.ones(5, np.float32)
    proto, weights = write_net(tmp_path, REPEATED_LOSS_NAMES, {"enc": [w, b]})
    model = caffe.convert(proto, weights, inputs={"data": (2, 1, 3, 4)}).evaluate()
    x = np.random.default_rng(1).standard_normal((2, 1, 3, 4)).astype(np.float32)
    flat, out = model.forward(x)
    assert_close(out, 1 / (1 + np.exp(-(x.reshape(2, -1) @ w.T + b))))
    assert_close(flat, x.reshape(2, -1))


def test_repeated_names_of_converted_layers(tmp_path):
    """A repeated layer without weights is renamed as OpenCV names it (HED's five "crop" layers);
    two with weights under one name are refused (weights are found by name)."""
    body = REPEATED_LOSS_NAMES.replace('name: "out"', 'name: "flat"')
    w, b = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32), np.ones(5, np.float32)
    proto, weights = write_net(tmp_path, body, {"enc": [w, b]})
    model = caffe.convert(proto, weights, inputs={"data": (2, 1, 3, 4)})
    assert {"flat", "flat_1", "enc"} <= {m.name for m in model.modules()}
    assert any("layers named 'flat' repeat: the later ones are flat_1" in n for n in model.notes)
    body = REPEATED_LOSS_NAMES.replace('name: "out" type: "Sigmoid"', 'name: "enc" type: "InnerProduct"').replace(
        'bottom: "enc" top: "out"', 'bottom: "enc" top: "out" inner_product_param { num_output: 12 }')
    proto, weights = write_net(tmp_path, body, {"enc": [(5, 12), (5,)]})
    with pytest.raises(caffe.CaffeError, match=r"layers with weights share the names enc"):
        caffe.convert(proto, weights, inputs={"data": (2, 1, 3, 4)})




def test_stages_select_layers_as_caffe_does(tmp_path):
    w, b = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32), np.zeros(3, np.float32)
    proto, weights = write_net(tmp_path, STAGED, {"ip": [w, b]})
    model = caffe.convert(proto, weights, stages=["deploy"], inputs={"data": (2, 8)}).evaluate()
    assert [m.name for m in model.children()] == ["scale", "ip", "softmax"]
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    z = 0.5 * x @ w.T
    e = np.exp(z - z.max(1, keepdims=True))
    assert_close(model.forward(x), e / e.sum(1, keepdims=True))


def test_net_without_inputs_gets_a_clear_error_naming_its_stages(tmp_path):
    proto, weights = write_net(tmp_path, STAGED, {"ip": [(3, 8), (3,)]})
    with pytest.raises(caffe.CaffeError, match=r"declares no input.*reads? scaled.*by stage \(deploy, train\)"):
        caffe.convert(proto, weights)
    with pytest.raises(caffe.CaffeError, match=r"declares no input.*--input data="):
        caffe.convert(proto, weights, stages=["deploy"])
