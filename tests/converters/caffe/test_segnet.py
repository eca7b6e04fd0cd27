"""SegNet's fork layers (alexgkendall/caffe-segnet): BN, Pooling with an argmax mask top, and the
two-bottom Upsample that unpools with that mask. OpenCV cannot read these nets (it has no BN, and
its Upsample is another layer), so the references are Caffe's definitions computed here: PyTorch
ops for the encoder-decoder, numpy for BN."""
import numpy as np
import pytest

from caffe_nets import inputs_header, write_net
from helpers import assert_close
from kindling import save, load
from kindling.converters import caffe
from kindling.runtime import nn


def _conv(name, bottom, n):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 }} }}\n')


def _bn_relu(name, blob, mode="INFERENCE"):
    return (f'layer {{ name: "{name}" type: "BN" bottom: "{blob}" top: "{blob}" bn_param {{ bn_mode: {mode} '
            f'scale_filler {{ type: "constant" value: 1 }} shift_filler {{ type: "constant" value: 0.001 }} }} }}\n'
            f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n')


def _pool(name, bottom):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" top: "{name}_mask" '
            f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')


# A two-level encoder-decoder as SegNet wires it: 11x12 -> pool1 (ceil) 6x6 -> pool2 3x3 -> upsample2
# by scale 2 -> 6x6 -> upsample1 to an explicit 11x12 (scale would give 12x12).
SEGNET = (inputs_header({"data": (2, 3, 11, 12)})
          + _conv("conv1", "data", 4) + _bn_relu("conv1_bn", "conv1") + _pool("pool1", "conv1")
          + _conv("conv2", "pool1", 5) + _bn_relu("conv2_bn", "conv2") + _pool("pool2", "conv2")
          + 'layer { name: "upsample2" type: "Upsample" bottom: "pool2" bottom: "pool2_mask" top: "pool2_D" '
            'upsample_param { scale: 2 } }\n'
          + _conv("conv2_D", "pool2_D", 4) + _bn_relu("conv2_D_bn", "conv2_D")
          + 'layer { name: "upsample1" type: "Upsample" bottom: "conv2_D" top: "pool1_D" bottom: "pool1_mask" '
            'upsample_param { scale: 2 upsample_w: 12 upsample_h: 11 } }\n'
          + _conv("conv1_D", "pool1_D", 3) + _bn_relu("conv1_D_bn", "conv1_D")
          + 'layer { name: "prob" type: "Softmax" bottom: "conv1_D" top: "prob" }\n')
CHANNELS = {"conv1": (3, 4), "conv2": (4, 5), "conv2_D": (5, 4), "conv1_D": (4, 3)}


def _segnet_blobs():
    rng = np.random.default_rng(0)
    blobs = {}
    for name, (cin, cout) in CHANNELS.items():
        blobs[name] = [rng.uniform(-0.5, 0.5, (cout, cin, 3, 3)).astype(np.float32),
                       rng.uniform(-0.2, 0.2, cout).astype(np.float32)]
        # SegNet's BN blobs: scale and shift, (1, C, 1, 1) each
        blobs[f"{name}_bn"] = [rng.uniform(0.5, 1.5, (1, cout, 1, 1)).astype(np.float32),
                               rng.uniform(-0.3, 0.3, (1, cout, 1, 1)).astype(np.float32)]
    return blobs


def _torch_segnet(torch, x, blobs):
    F = torch.nn.functional
    t = {k: [torch.from_numpy(b) for b in v] for k, v in blobs.items()}

    def block(name, h):
        h = F.conv2d(h, t[name][0], t[name][1], padding=1)
        return F.relu(h * t[f"{name}_bn"][0] + t[f"{name}_bn"][1])

    h = block("conv1", torch.from_numpy(x))
    p1, m1 = F.max_pool2d(h, 2, 2, ceil_mode=True, return_indices=True)
    p2, m2 = F.max_pool2d(block("conv2", p1), 2, 2, ceil_mode=True, return_indices=True)
    h = block("conv2_D", F.max_unpool2d(p2, m2, 2, 2, output_size=(6, 6)))
    h = block("conv1_D", F.max_unpool2d(h, m1, 2, 2, output_size=(11, 12)))
    return F.softmax(h, dim=1).numpy(), m1.numpy()


def test_segnet_encoder_decoder_matches_torch(torch, tmp_path):
    blobs = _segnet_blobs()
    proto, model_file = write_net(tmp_path, SEGNET, blobs)
    model = caffe.convert(proto, model_file).evaluate()
    assert isinstance(model, nn.Graph) and model.metadata["output_names"] == ["prob"]
    assert not any("bn_param" in n or "filler" in n for n in model.notes)  # the fork's fields are read
    assert type(model.find("conv1_bn")).__name__ == "Scale" and model.find("pool1").return_indices
    up1 = model.find("upsample1")
    assert up1.output_size == (11, 12) and model.find("upsample2").scale == (2, 2)
    # the third input, the pooling's own input, is only read for its size (the mask's plane)
    assert model.node_inputs["upsample1"] == ["conv2_D_bn_relu", "pool1:1", "conv1_bn_relu"]
    x = np.random.default_rng(1).standard_normal((2, 3, 11, 12)).astype(np.float32)
    expect, mask1 = _torch_segnet(torch, x, blobs)
    y = model.forward(x)
    assert_close(y, expect, 1e-5, "prob")
    y1 = model.forward(x[:1])  # batch 1
    assert_close(y1, expect[:1], 1e-5, "prob, batch 1")
    np.testing.assert_array_equal(model.find("pool1").output[1], mask1[:1])  # Caffe's mask top: h * W + w
    reloaded = load(save(model, tmp_path / "segnet.kdl")).evaluate()
    np.testing.assert_array_equal(reloaded.forward(x), model.forward(x))


def test_segnet_encoder_decoder_input_gradient(torch, tmp_path):
    blobs = _segnet_blobs()
    proto, model_file = write_net(tmp_path, SEGNET.replace('layer { name: "prob" type: "Softmax" bottom: "conv1_D" '
                                                           'top: "prob" }\n', ''), blobs)
    model = caffe.convert(proto, model_file).evaluate()
    x = np.random.default_rng(2).standard_normal((2, 3, 11, 12)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    F = torch.nn.functional
    t = {k: [torch.from_numpy(b) for b in v] for k, v in blobs.items()}

    def block(name, h):
        return F.relu(F.conv2d(h, t[name][0], t[name][1], padding=1) * t[f"{name}_bn"][0] + t[f"{name}_bn"][1])
    p1, m1 = F.max_pool2d(block("conv1", tx), 2, 2, ceil_mode=True, return_indices=True)
    p2, m2 = F.max_pool2d(block("conv2", p1), 2, 2, ceil_mode=True, return_indices=True)
    h = block("conv2_D", F.max_unpool2d(p2, m2, 2, 2, output_size=(6, 6)))
    ty = block("conv1_D", F.max_unpool2d(h, m1, 2, 2, output_size=(11, 12)))
    y = model.forward(x)
    assert_close(y, ty.detach().numpy(), 1e-5, "forward")
    gy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    assert_close(model.backward(x, gy), tx.grad.numpy(), 1e-4, "grad input")


BN_ONLY = 'layer { name: "bn" type: "BN" bottom: "data" top: "bn" bn_param { bn_mode: MODE } }'
X = (2, 4, 5, 3)


def _bn_net(tmp_path, mode):
    rng = np.random.default_rng(4)
    scale = rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32)
    shift = rng.uniform(-1, 1, (1, 4, 1, 1)).astype(np.float32)
    proto, model_file = write_net(tmp_path, inputs_header({"data": X}) + BN_ONLY.replace("MODE", mode),
                                  {"bn": [scale, shift]})
    x = (rng.standard_normal(X) * 3 + 2).astype(np.float32)
    return caffe.convert(proto, model_file), x, scale, shift


def test_bn_inference_is_scale_and_shift(tmp_path):
    """caffe-segnet's bn_layer.cpp, INFERENCE: top = scale * bottom + shift, per channel (the blobs
    hold what compute_bn_statistics.py folded in: gamma / sqrt(var + 1e-9), beta - gamma * mean / ...)."""
    model, x, scale, shift = _bn_net(tmp_path, "INFERENCE")
    assert not model.notes
    assert_close(model.evaluate().forward(x), x * scale + shift, 1e-6)


def test_bn_learn_normalizes_with_the_batch_statistics_and_says_so(tmp_path):
    """LEARN: (x - batch mean) / sqrt(biased batch variance + 1e-9), then scale and shift: what the
    converted model computes while training; evaluate mode has only its running statistics."""
    model, x, scale, shift = _bn_net(tmp_path, "LEARN")
    assert any("bn (BN): bn_mode LEARN" in n and "compute_bn_statistics.py" in n for n in model.notes)
    mean = x.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    assert_close(model.train().forward(x), (x - mean) / np.sqrt(var + 1e-9) * scale + shift, 1e-5)


def test_segnet_layer_errors_name_the_layer(tmp_path):
    def convert(body, blobs=None, inputs=None):
        proto, model_file = write_net(tmp_path, inputs_header(inputs or {"data": X}) + body, blobs or {})
        return caffe.convert(proto, model_file)

    with pytest.raises(caffe.CaffeError, match="'bn' \\(BN\\): has 4 blobs.*another fork"):
        convert(BN_ONLY.replace("MODE", "INFERENCE"), {"bn": [(1, 4, 1, 1)] * 4})
    with pytest.raises(caffe.CaffeError, match="'p' \\(Pooling\\): only MAX pooling has a second top"):
        convert('layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" '
                'pooling_param { pool: AVE kernel_size: 2 stride: 2 } }')
    with pytest.raises(caffe.CaffeError, match="'up' \\(Upsample\\): takes one bottom .* got 3"):
        convert('layer { name: "up" type: "Upsample" bottom: "data" bottom: "m" bottom: "m" top: "up" }',
                inputs={"data": X, "m": X})
    # An output size other than the pooling's input: Caffe scatters the values to the wrong places
    # (or stops, when an index falls outside); kindling refuses the net, naming the layer.
    with pytest.raises(caffe.CaffeError, match="'up' \\(Upsample\\).*makes 4x4 from 3x2, but the pooling that made "
                                               "its indices read 5x3"):
        convert('layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" '
                'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
                'layer { name: "up" type: "Upsample" bottom: "p" bottom: "m" top: "up" '
                'upsample_param { upsample_h: 4 upsample_w: 4 } }')
    # A mask from a larger input than the output: Caffe stops with a fatal error, kindling raises.
    model = convert('layer { name: "up" type: "Upsample" bottom: "data" bottom: "m" top: "up" '
                    'upsample_param { upsample_h: 10 upsample_w: 6 } }', inputs={"data": X, "m": X})
    with pytest.raises(ValueError, match="'up': indices span 60..60, outside the 10x6 output"):
        model.forward({"data": np.ones(X, np.float32), "m": np.full(X, 60, np.float32)})
