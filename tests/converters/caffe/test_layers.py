"""Every supported Caffe layer type, each in a small net, against OpenCV's dnn module (an
independent Caffe reader) or, where OpenCV lacks the layer, against PyTorch."""
import numpy as np
import pytest

from caffe_nets import inputs_header, opencv_forward, write_net
from helpers import assert_close
from kindling.converters import caffe

X = (2, 4, 7, 6)


def conv(name, bottom, top, extra, blobs):
    return f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" convolution_param {{ {extra} }} }}\n', {name: blobs}


# name: (layers text, blob shapes, inputs {name: shape}, outputs)
CASES = {
    "convolution_pad_stride": (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
        'convolution_param { num_output: 5 kernel_size: 3 stride: 2 pad: 1 } }', {"c": [(5, 4, 3, 3), (5,)]}),
    "convolution_group_dilation_hw": (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 group: 2 '
        'kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 1 stride_w: 2 dilation: 2 bias_term: false } }',
        {"c": [(6, 2, 3, 2)]}),
    "convolution_depthwise": (
        'layer { name: "c" type: "ConvolutionDepthwise" bottom: "data" top: "c" '
        'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }', {"c": [(4, 1, 3, 3), (4,)]}),
    "deconvolution": (
        'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
        'convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 } }', {"d": [(4, 3, 4, 4), (3,)]}),
    "inner_product": (
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }',
        {"fc": [(5, 168), (5,)]}),
    "inner_product_axis2": (
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        'inner_product_param { num_output: 3 axis: 2 } }', {"fc": [(3, 42), (3,)]}),
    "pooling_max_ceil": (
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }', {}),
    "pooling_ave_pad": (
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
        'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }', {}),
    "pooling_global": (
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE global_pooling: true } }', {}),
    "relu_negative_slope": (
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { negative_slope: 0.1 } }', {}),
    "prelu": ('layer { name: "r" type: "PReLU" bottom: "data" top: "r" }', {"r": [(4,)]}),
    "prelu_channel_shared": (
        'layer { name: "r" type: "PReLU" bottom: "data" top: "r" prelu_param { channel_shared: true } }', {"r": [(1,)]}),
    "elu": ('layer { name: "e" type: "ELU" bottom: "data" top: "e" elu_param { alpha: 0.5 } }', {}),
    "sigmoid": ('layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }', {}),
    "tanh": ('layer { name: "t" type: "TanH" bottom: "data" top: "t" }', {}),
    "absval": ('layer { name: "a" type: "AbsVal" bottom: "data" top: "a" }', {}),
    "power": ('layer { name: "p" type: "Power" bottom: "data" top: "p" '
              'power_param { power: 2 scale: 0.5 shift: 3 } }', {}),
    "bnll": ('layer { name: "b" type: "BNLL" bottom: "data" top: "b" }', {}),
    "exp": ('layer { name: "e" type: "Exp" bottom: "data" top: "e" exp_param { base: 2 scale: 0.5 shift: 1 } }', {}),
    "exp_natural": ('layer { name: "e" type: "Exp" bottom: "data" top: "e" exp_param { scale: -0.7 } }', {}),
    "mvn": ('layer { name: "m" type: "MVN" bottom: "data" top: "m" }', {}),
    "mvn_across_channels": ('layer { name: "m" type: "MVN" bottom: "data" top: "m" '
                            'mvn_param { across_channels: true } }', {}),
    "mvn_mean_only": ('layer { name: "m" type: "MVN" bottom: "data" top: "m" '
                      'mvn_param { normalize_variance: false } }', {}),
    "lrn_across": ('layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                   'lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }', {}),
    "lrn_within": ('layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                   'lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 norm_region: WITHIN_CHANNEL } }', {}),
    "dropout": ('layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: 0.3 } }', {}),
    "softmax_axis": ('layer { name: "s" type: "Softmax" bottom: "data" top: "s" softmax_param { axis: 2 } }', {}),
    "batchnorm_scale": (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0.001 } }\n'
        'layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }',
        {"bn": [np.array([1, 2, 3, 4.0]), np.array([2, 3, 4, 5.0]), np.array([2.0])], "sc": [(4,), (4,)]}),
    "scale_alone": ('layer { name: "sc" type: "Scale" bottom: "data" top: "sc" }', {"sc": [(4,)]}),
    "flatten": ('layer { name: "f" type: "Flatten" bottom: "data" top: "f" }', {}),
    "reshape": ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
                'reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }', {}),
    "permute": ('layer { name: "p" type: "Permute" bottom: "data" top: "p" '
                'permute_param { order: 0 order: 2 order: 3 order: 1 } }', {}),
    "normalize": ('layer { name: "n" type: "Normalize" bottom: "data" top: "n" '
                  'norm_param { across_spatial: false channel_shared: false } }', {"n": [(4,)]}),
    "shuffle_channel": ('layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "s" '
                        'shuffle_channel_param { group: 2 } }', {}),
    "slice_split_concat": (
        'layer { name: "sl" type: "Slice" bottom: "data" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 1 } }\n'
        'layer { name: "sp" type: "Split" bottom: "s2" top: "s2a" top: "s2b" }\n'
        'layer { name: "cat" type: "Concat" bottom: "s2a" bottom: "s1" bottom: "s2b" top: "cat" concat_param { axis: 1 } }', {}),
    "eltwise_sum_coeff": (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 1 } }\n'
        'layer { name: "e" type: "Eltwise" bottom: "c" bottom: "data" top: "e" '
        'eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }', {"c": [(4, 4, 1, 1), (4,)]}),
    "eltwise_prod": ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" '
                     'eltwise_param { operation: PROD } }', {}),
    "eltwise_max": (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 1 } }\n'
        'layer { name: "e" type: "Eltwise" bottom: "c" bottom: "data" top: "e" eltwise_param { operation: MAX } }',
        {"c": [(4, 4, 1, 1), (4,)]}),
    "crop": (
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "cr" type: "Crop" bottom: "data" bottom: "p" top: "cr" crop_param { axis: 2 offset: 1 } }', {}),
    "scale_two_bottoms": (
        'layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "f" type: "Flatten" bottom: "g" top: "f" }\n'
        'layer { name: "s" type: "Scale" bottom: "data" bottom: "f" top: "s" scale_param { axis: 0 } }', {}),
    # fork layers OpenCV reads too
    "relu6": ('layer { name: "r" type: "ReLU6" bottom: "data" top: "r" }', {}),
    "mish": ('layer { name: "m" type: "Mish" bottom: "data" top: "m" }', {}),
    "interp_zoom": ('layer { name: "i" type: "Interp" bottom: "data" top: "i" interp_param { zoom_factor: 3 } }', {}),
    "interp_height_width": ('layer { name: "i" type: "Interp" bottom: "data" top: "i" '
                            'interp_param { height: 11 width: 4 } }', {}),
    "reorg": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
              'convolution_param { num_output: 8 kernel_h: 2 kernel_w: 1 } }\n'  # 6x6
              'layer { name: "r" type: "Reorg" bottom: "c" top: "r" reorg_param { stride: 2 } }',
              {"c": [(8, 4, 2, 1), (8,)]}),
    "in_place_relu_after_convolution": (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }\n'
        'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }', {"c": [(3, 4, 3, 3), (3,)]}),
}


@pytest.mark.parametrize("case", CASES)
def test_layer_matches_opencv(tmp_path, case):
    body, blobs = CASES[case]
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body, blobs)
    model = caffe.convert(proto, model_file).evaluate()
    x = np.random.default_rng(1).standard_normal(X).astype(np.float32)
    ours = np.asarray(model.forward(x))
    last_layer = body.rsplit('name: "', 1)[1].split('"')[0]  # OpenCV names outputs by layer
    theirs = opencv_forward(proto, model_file, {"data": x}, [last_layer])[0]
    assert ours.shape == theirs.shape, f"{case}: shape {ours.shape} vs OpenCV {theirs.shape}"
    assert_close(ours, theirs, 1e-4, case)


def test_axpy_against_its_definition(tmp_path):
    """Axpy is a fork layer (top = bottom[0] * bottom[1] + bottom[2], per channel, as in SENet's
    axpy_layer.cpp). OpenCV 4.14 reads it but computes a * bottom[2] + bottom[1], so it is no
    reference here: compare with a * x + y computed here."""
    body = ('layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } }\n'
            'layer { name: "s" type: "Sigmoid" bottom: "g" top: "s" }\n'
            'layer { name: "ax" type: "Axpy" bottom: "s" bottom: "data" bottom: "data" top: "ax" }')
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body, {})
    model = caffe.convert(proto, model_file).evaluate()
    x = np.random.default_rng(2).standard_normal(X).astype(np.float32)
    a = 1 / (1 + np.exp(-x.mean(axis=(2, 3), keepdims=True)))
    assert_close(model.forward(x), a * x + x)


def test_inner_product_transpose_follows_caffe(tmp_path):
    """With transpose: true Caffe stores the weight as (inputs, outputs) and computes x W + b.
    OpenCV 4 ignores the flag (it reads the blob as (outputs, inputs)), so the reference is Caffe's
    definition, computed here."""
    body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 5 transpose: true } }')
    w = np.random.default_rng(3).standard_normal((168, 5)).astype(np.float32)
    b = np.arange(5, dtype=np.float32)
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body, {"fc": [w, b]})
    x = np.random.default_rng(4).standard_normal(X).astype(np.float32)
    assert_close(caffe.convert(proto, model_file).evaluate().forward(x), x.reshape(2, -1) @ w + b)


# Layers OpenCV 4 reads differently from Caffe, or not at all: Caffe's definitions, computed here.
def _single(tmp_path, body, blobs=None):
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body, blobs or {})
    x = np.random.default_rng(5).standard_normal(X).astype(np.float32)
    return caffe.convert(proto, model_file).evaluate().forward(x), x


def test_lrn_k_follows_caffe(tmp_path):
    """OpenCV ignores lrn_param.k (it always adds 1); Caffe divides by (k + alpha/n sum x^2)^beta."""
    y, x = _single(tmp_path, 'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                             'lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 k: 2 } }')
    sq = np.pad(x * x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    assert_close(y, x / (2 + 0.1 / 3 * (sq[:, :4] + sq[:, 1:5] + sq[:, 2:6])) ** 0.75)


def test_bias_layer(tmp_path):
    b = np.array([1, -2, 3, 0.5], np.float32)
    y, x = _single(tmp_path, 'layer { name: "b" type: "Bias" bottom: "data" top: "b" }', {"b": [b]})
    assert_close(y, x + b.reshape(1, 4, 1, 1))


def test_upsample_nearest(tmp_path):
    y, x = _single(tmp_path, 'layer { name: "u" type: "Upsample" bottom: "data" top: "u" upsample_param { scale: 2 } }')
    assert_close(y, x.repeat(2, axis=2).repeat(2, axis=3))


def test_scale_with_num_axes_0_is_a_scalar(tmp_path):
    """num_axes: 0 makes one scalar; writers store its blob as () or (1,): both fit."""
    for blob in (np.array(2.5, np.float32), np.array([2.5], np.float32)):
        y, x = _single(tmp_path, 'layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { num_axes: 0 } }',
                       {"s": [blob]})
        assert_close(y, 2.5 * x)


def test_batchnorm_without_global_stats_is_noted(tmp_path):
    """Caffe's BatchNorm with use_global_stats: false uses batch statistics even in TEST; the
    converted model uses the stored ones, and says so."""
    body = 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }'
    blobs = {"bn": [np.zeros(4), np.ones(4), np.ones(1)]}
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body, blobs)
    notes = caffe.convert(proto, model_file).notes
    assert any("bn (BatchNorm): use_global_stats: false" in n for n in notes)
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body.replace("false", "true"), blobs)
    assert not any("use_global_stats" in n for n in caffe.convert(proto, model_file).notes)


# Caffe layers OpenCV 4 reads differently (Log ignores log_param, MVN adds eps to the variance) or
# not at all (Threshold, ArgMax, Reduction, Tile): Caffe's formulas (src/caffe/layers/*.cpp), here.
def test_log_follows_caffe(tmp_path):
    y, x = _single(tmp_path, 'layer { name: "l" type: "Log" bottom: "data" top: "l" '
                             'log_param { base: 10 scale: 0.5 shift: 6 } }')
    assert_close(y, np.log10(6 + 0.5 * x))


def test_threshold_follows_caffe(tmp_path):
    y, x = _single(tmp_path, 'layer { name: "t" type: "Threshold" bottom: "data" top: "t" '
                             'threshold_param { threshold: 0.3 } }')
    assert np.array_equal(y, (x > np.float32(0.3)).astype(np.float32))


def test_mvn_adds_eps_to_the_standard_deviation(tmp_path):
    y, x = _single(tmp_path, 'layer { name: "m" type: "MVN" bottom: "data" top: "m" mvn_param { eps: 0.5 } }')
    g = x.reshape(8, -1).astype(np.float64)
    d = g - g.mean(1, keepdims=True)
    assert_close(y, (d / (np.sqrt((d * d).mean(1, keepdims=True)) + 0.5)).reshape(X))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
def test_reduction_follows_caffe(tmp_path, op):
    y, x = _single(tmp_path, f'layer {{ name: "r" type: "Reduction" bottom: "data" top: "r" '
                             f'reduction_param {{ operation: {op} axis: 2 coeff: -1.5 }} }}')
    rows = x.reshape(2, 4, -1).astype(np.float64)
    reduce = {"SUM": rows.sum(-1), "ASUM": np.abs(rows).sum(-1), "SUMSQ": (rows * rows).sum(-1),
              "MEAN": rows.mean(-1)}
    assert_close(y, -1.5 * reduce[op])


def test_reduction_default_reduces_everything(tmp_path):
    y, x = _single(tmp_path, 'layer { name: "r" type: "Reduction" bottom: "data" top: "r" }')
    assert y.shape == () and np.isclose(y, x.sum(dtype=np.float64), rtol=1e-5)


def test_tile_follows_caffe(tmp_path):
    y, x = _single(tmp_path, 'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { axis: 2 tiles: 3 } }')
    expected = np.empty((2, 4, 21, 6), np.float32)
    for i in range(3):  # Caffe copies the block from the axis on, tiles times, for each outer index
        expected[:, :, 7 * i:7 * (i + 1)] = x
    assert np.array_equal(y, expected)


def test_segmentation_head_argmax_over_channels(tmp_path):
    """FCN/SegNet deploy nets end in ArgMax axis: 1, a label map with one channel."""
    y, x = _single(tmp_path, 'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { axis: 1 } }')
    assert y.shape == (2, 1, 7, 6) and np.array_equal(y[:, 0], x.argmax(1).astype(np.float32))


def test_argmax_top_k_with_values_per_item(tmp_path):
    """Without axis Caffe flattens each item: (N, 2, top_k, 1), the indices then the values."""
    y, x = _single(tmp_path, 'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" '
                             'argmax_param { top_k: 3 out_max_val: true } }')
    flat = x.reshape(2, -1)
    idx = np.argsort(-flat, axis=1)[:, :3]
    assert y.shape == (2, 2, 3, 1)
    assert np.array_equal(y[:, 0, :, 0], idx.astype(np.float32))
    assert np.array_equal(y[:, 1, :, 0], np.take_along_axis(flat, idx, 1))


def test_legacy_v1_threshold_mvn_exp_argmax(tmp_path):
    """The V1 format carries these layers' parameters in its own field numbers."""
    body = (inputs_header({"data": X}) +
            'layers { name: "e" type: EXP bottom: "data" top: "e" exp_param { scale: 0.5 } }\n'
            'layers { name: "m" type: MVN bottom: "e" top: "m" mvn_param { across_channels: true eps: 0.25 } }\n'
            'layers { name: "t" type: THRESHOLD bottom: "m" top: "t" threshold_param { threshold: 0.5 } }\n'
            'layers { name: "a" type: ARGMAX bottom: "t" top: "a" argmax_param { axis: 1 out_max_val: true } }\n')
    proto, model_file = write_net(tmp_path, body, {}, v1=True)
    x = np.random.default_rng(6).standard_normal(X).astype(np.float32)
    y = caffe.convert(proto, model_file).evaluate().forward(x)
    g = np.exp(0.5 * x.astype(np.float64)).reshape(2, -1)
    d = g - g.mean(1, keepdims=True)
    m = (d / (np.sqrt((d * d).mean(1, keepdims=True)) + 0.25)).reshape(X)
    assert np.array_equal(y, (m > 0.5).max(1, keepdims=True).astype(np.float32))


@pytest.mark.parametrize("body,message", [
    ('layer { name: "e" type: "Exp" bottom: "data" top: "e" exp_param { base: 0 } }',
     r"'e' \(Exp\).*base must be positive"),
    ('layer { name: "t" type: "Tile" bottom: "data" top: "t" }', r"'t' \(Tile\): tile_param.tiles is missing"),
    ('layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 5 axis: 1 } }',
     r"'a' \(ArgMax\).*top_k 5 exceeds the 4 values on axis 1"),
])
def test_settings_caffe_refuses_are_refused_naming_the_layer(tmp_path, body, message):
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + body, {})
    with pytest.raises(caffe.CaffeError, match=message):
        caffe.convert(proto, model_file)


# Fork layers where OpenCV differs (Interp: shrink_factor, pad_beg/pad_end) or has none.
def _caffe_interp2(x, out_h, out_w, crop_beg=0, crop_end=0):
    """DeepLab's caffe_cpu_interp2, one output pixel at a time."""
    x = x[:, :, crop_beg:x.shape[2] - crop_end, crop_beg:x.shape[3] - crop_end]
    h1, w1 = x.shape[2:]
    rh = np.float32(h1 - 1) / np.float32(out_h - 1) if out_h > 1 else np.float32(0)
    rw = np.float32(w1 - 1) / np.float32(out_w - 1) if out_w > 1 else np.float32(0)
    y = np.empty(x.shape[:2] + (out_h, out_w), np.float32)
    for i in range(out_h):
        hr = rh * np.float32(i)
        h0 = int(hr)
        hp, hl = (1 if h0 < h1 - 1 else 0), hr - np.float32(h0)
        for j in range(out_w):
            wr = rw * np.float32(j)
            w0 = int(wr)
            wp, wl = (1 if w0 < w1 - 1 else 0), wr - np.float32(w0)
            y[:, :, i, j] = ((1 - hl) * ((1 - wl) * x[:, :, h0, w0] + wl * x[:, :, h0, w0 + wp])
                             + hl * ((1 - wl) * x[:, :, h0 + hp, w0] + wl * x[:, :, h0 + hp, w0 + wp]))
    return y


@pytest.mark.parametrize("param,out,crop", [
    ("shrink_factor: 2", (4, 3), 0),                      # (7 - 1) // 2 + 1, (6 - 1) // 2 + 1
    ("shrink_factor: 2 zoom_factor: 3", (10, 7), 0),      # shrunk to 4x3, then zoomed
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (9, 7), 1),  # 5x4 after the crop, then zoomed
])
def test_interp_shrink_and_crop_follow_deeplab(tmp_path, param, out, crop):
    y, x = _single(tmp_path, f'layer {{ name: "i" type: "Interp" bottom: "data" top: "i" interp_param {{ {param} }} }}')
    assert y.shape == (2, 4, *out)
    assert_close(y, _caffe_interp2(x, *out, crop, crop), 1e-5)


def test_interp_gradient_is_pytorchs_align_corners(torch):
    from kindling.runtime import nn
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 4)).astype(np.float32)
    layer = nn.Interp(zoom=3)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.interpolate(tx, size=(13, 10), mode="bilinear", align_corners=True)
    assert_close(layer.forward(x), ty.detach().numpy(), 1e-5)
    g = np.random.default_rng(8).standard_normal((2, 3, 13, 10)).astype(np.float32)
    ty.backward(torch.from_numpy(g))
    assert_close(layer.backward(x, g), tx.grad.numpy(), 1e-5)


def test_mish_and_alpha_dropout_against_pytorch(torch):
    from kindling.runtime import nn
    x = np.random.default_rng(9).standard_normal((4, 5, 3, 3)).astype(np.float32) * 3
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.mish(tx)
    mish = nn.Mish()
    assert_close(mish.forward(x), ty.detach().numpy(), 1e-5)
    g = np.random.default_rng(10).standard_normal(x.shape).astype(np.float32)
    ty.backward(torch.from_numpy(g))
    assert_close(mish.backward(x, g), tx.grad.numpy(), 1e-4)
    # SELU nets' dropout: PyTorch's AlphaDropout formula, with the values this one kept
    drop = nn.AlphaDropout(0.2, seed=0)
    y = drop.forward(x)
    alpha = -1.7580993408473766
    a = (0.8 + alpha ** 2 * 0.8 * 0.2) ** -0.5
    assert_close(y, np.where(drop._keep, x, alpha) * a - a * alpha * 0.2, 1e-5)
    assert 0.7 < drop._keep.mean() < 0.9
    assert drop.evaluate().forward(x) is not None and np.array_equal(drop.forward(x), x)


def _darknet_reorg(x, stride, forward):
    """The YOLOv2 Caffe ports' reorg_cpu loop (darknet's): the layer calls it with forward =
    reverse, on the bottom's (C, H, W)."""
    n, c, h, w = x.shape
    out_c = c // (stride * stride)
    flat, out = x.reshape(-1), np.empty(x.size, np.float32)
    for b in range(n):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = flat[in_index]
                    else:
                        out[in_index] = flat[out_index]
    return out


def test_reorg_both_ways_as_the_caffe_ports_and_its_gradient_is_the_transpose():
    from kindling.runtime import nn
    x = np.random.default_rng(11).standard_normal((2, 8, 6, 4)).astype(np.float32)
    for reverse, shape in ((False, (2, 32, 3, 2)), (True, (2, 2, 12, 8))):
        layer = nn.Reorg(2, reverse=reverse)
        y = layer.forward(x)
        assert y.shape == shape
        np.testing.assert_array_equal(y.reshape(-1), _darknet_reorg(x, 2, forward=reverse))
        # a permutation of the values: the gradient goes back where each value came from
        source = layer.forward(np.arange(x.size, dtype=np.float32).reshape(x.shape)).reshape(-1).astype(int)
        g = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
        expected = np.zeros(x.size, np.float32)
        expected[source] = g.reshape(-1)
        np.testing.assert_array_equal(layer.backward(x, g).reshape(-1), expected)


ROIS = np.array([[0, 0, 0, 13, 11], [1, 3.5, 2, 9, 9.5], [0, 6, 4, 6, 4], [1, -2, -3, 20, 30], [0, 12, 10, 15, 13]],
                np.float32)


@pytest.mark.parametrize("body,features", [
    ('layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi" '
     'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }', (2, 4, 7, 8)),
    ('layer { name: "roi" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "roi" '
     'psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 3 } }', (2, 18, 7, 8)),
], ids=["roi_pooling", "psroi_pooling"])
def test_region_pooling_matches_opencv(tmp_path, body, features):
    """Fast/Faster R-CNN's and R-FCN's pooling over regions, with regions partly outside the map,
    of one pixel, and at half-pixel edges (C's rounding)."""
    proto, weights = write_net(tmp_path, inputs_header({"data": features, "rois": ROIS.shape}) + body, {})
    model = caffe.convert(proto, weights).evaluate()
    x = np.random.default_rng(13).standard_normal(features).astype(np.float32)
    ours = model.forward({"data": x, "rois": ROIS})
    theirs = opencv_forward(proto, weights, {"data": x, "rois": ROIS}, ["roi"])[0]
    assert ours.shape == theirs.shape and ours.shape[0] == len(ROIS)
    assert_close(ours, theirs, 1e-5)


def test_roi_pooling_gradient_goes_to_each_bins_maximum(torch):
    from kindling.runtime import nn
    x = np.random.default_rng(14).standard_normal((2, 3, 7, 8)).astype(np.float32)  # no ties
    layer = nn.ROIPooling(3, 2, 0.5)
    y = layer.forward([x, ROIS])
    g = np.random.default_rng(15).standard_normal(y.shape).astype(np.float32)
    gx = layer.backward([x, ROIS], g)[0]
    eps, numeric = 1e-3, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        bumped = x.copy()
        bumped[idx] += eps
        numeric[idx] = ((layer.forward([bumped, ROIS]) - y) * g).sum() / eps
    assert_close(gx, numeric, 1e-2)
