"""Nets sized at run time: the converter records -1 for every input dimension a net does not fix,
and the converted model runs at any size that fits, layer for layer as OpenCV does (it reshapes the
net to each input), refusing other sizes with the layer that does not fit."""
import argparse
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from caffe_nets import CAT, LENET, ZOO, inputs_header, photo, write_net, zoo_net
from kindling.converters import caffe
from kindling.converters.caffe.reference import OpenCVReference
from kindling.converters.verify import verify
from kindling.runtime.predict import InputError, Predictor

# FCN-8s's class scores keep their 21 channels when the rest of the net is narrowed
FCN_SCORES = {"score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"}


def _matches_opencv_at(model, proto, weights, sizes):
    reference = OpenCVReference(proto, weights)
    for size in sizes:
        report = verify(model, reference, {"data": photo(size)}, atol=1e-4, rtol=1e-4)
        compared = [r for r in report.rows if r.max_abs is not None]
        assert report.first_failure is None, f"{size}:\n{report.table()}"
        assert len(compared) > 0.8 * len(report.rows), f"{size}: too few layers compared\n{report.table()}"


def test_squeezenet_takes_any_size_as_opencv_does(tmp_path):
    """SqueezeNet ends in a global pooling: H and W are free; every layer matches OpenCV at the
    declared size, two others and the photo's own."""
    proto, weights = zoo_net(tmp_path, ZOO / "squeezenet_v1.1_deploy.prototxt")
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, 3, -1, -1]
    assert model.metadata["sample_shape"] == [1, 3, 227, 227]
    _matches_opencv_at(model, proto, weights, [(227, 227), (300, 260), None])


def test_fcn8s_takes_any_size_as_opencv_does(tmp_path):
    """The real FCN-8s (pad 100, Deconvolution, Crop against the data and skip layers), narrowed."""
    proto, weights = zoo_net(tmp_path, ZOO / "fcn8s_voc_deploy.prototxt", narrow=8, keep_widths=FCN_SCORES)
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, 3, -1, -1]
    _matches_opencv_at(model, proto, weights, [(120, 160), (97, 211), (200, 150)])
    # a score per pixel of each photo, at its own size
    p = Predictor(model)
    sizes = [y[0].shape for y in p.predict_images([photo((97, 211))[0], photo((64, 80))[0]])]
    assert sizes == [(1, 21, 97, 211), (1, 21, 64, 80)]
    with pytest.raises(InputError, match=r"the images differ in size \(64x80, 97x211\)"):
        p.preprocess([photo((97, 211))[0], photo((64, 80))[0]])


def _segnet_style(levels: int, pad_out_h: bool = False) -> str:
    """SegNet's encoder-decoder: BN, max pooling with its mask, unpooling by the mask."""
    text, blob, channels = inputs_header({"data": (1, 3, 16, 24)}), "data", 3
    for i in range(1, levels + 1):
        text += (f'layer {{ name: "conv{i}" type: "Convolution" bottom: "{blob}" top: "conv{i}" '
                 f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} }}\n'
                 f'layer {{ name: "conv{i}_bn" type: "BN" bottom: "conv{i}" top: "conv{i}" '
                 f'bn_param {{ bn_mode: INFERENCE }} }}\n'
                 f'layer {{ name: "relu{i}" type: "ReLU" bottom: "conv{i}" top: "conv{i}" }}\n'
                 f'layer {{ name: "pool{i}" type: "Pooling" bottom: "conv{i}" top: "pool{i}" top: "pool{i}_mask" '
                 f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')
        blob, channels = f"pool{i}", 4
    for i in range(levels, 0, -1):
        pad = " pad_out_h: true" if pad_out_h and i == 1 else ""
        text += (f'layer {{ name: "up{i}" type: "Upsample" bottom: "{blob}" bottom: "pool{i}_mask" top: "up{i}" '
                 f'upsample_param {{ scale: 2{pad} }} }}\n'
                 f'layer {{ name: "conv{i}_D" type: "Convolution" bottom: "up{i}" top: "conv{i}_D" '
                 f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} }}\n')
        blob = f"conv{i}_D"
    return text


def _segnet_blobs(levels: int):
    rng = np.random.default_rng(0)
    blobs = {}
    for i in range(1, levels + 1):
        blobs[f"conv{i}"] = [rng.normal(0, 0.3, (4, 3 if i == 1 else 4, 3, 3)), rng.normal(0, 0.1, 4)]
        blobs[f"conv{i}_bn"] = [rng.uniform(0.5, 1.5, (1, 4, 1, 1)), rng.normal(0, 0.1, (1, 4, 1, 1))]
        blobs[f"conv{i}_D"] = [rng.normal(0, 0.3, (4, 4, 3, 3)), rng.normal(0, 0.1, 4)]
    return {k: [np.asarray(b, np.float32) for b in v] for k, v in blobs.items()}


def _torch_segnet(torch, x, blobs, levels):
    F, t = torch.nn.functional, {k: [torch.from_numpy(b) for b in v] for k, v in blobs.items()}
    h, masks = torch.from_numpy(x), []
    for i in range(1, levels + 1):
        h = F.conv2d(h, *t[f"conv{i}"], padding=1)
        h = F.relu(h * t[f"conv{i}_bn"][0] + t[f"conv{i}_bn"][1])
        sizes = h.shape[2:]
        h, m = F.max_pool2d(h, 2, 2, ceil_mode=True, return_indices=True)
        masks.append((m, sizes))
    for i in range(levels, 0, -1):
        m, sizes = masks[i - 1]
        h = F.conv2d(F.max_unpool2d(h, m, 2, 2, output_size=sizes), *t[f"conv{i}_D"], padding=1)
    return h.numpy()


def test_segnet_style_takes_the_sizes_its_unpooling_fits(tmp_path, torch):
    """Unpooling by scale 2 fits where every pooling input is even: H and W are free, and a size
    where an unpooling would not give its pooling's input size is refused, naming the layer.
    (OpenCV has no Caffe Upsample-with-mask layer: the reference is PyTorch's max_unpool2d.)"""
    blobs = _segnet_blobs(3)
    proto, weights = write_net(tmp_path, _segnet_style(3), blobs)
    model = caffe.convert(proto, weights).evaluate()
    assert model.metadata["input_shape"] == [-1, 3, -1, -1]
    for h, w in [(16, 24), (40, 8), (32, 48)]:
        x = photo((h, w))[:, :, :, :] / 64
        np.testing.assert_allclose(model.forward(x), _torch_segnet(torch, x, blobs, 3), rtol=1e-4, atol=1e-4)
    # 29 rows pool to 15, then 8; unpooling 8 gives 16, not the 15 that pool2 read
    with pytest.raises(InputError, match=r"layer 'up2' \(MaxUnpool2d\) does not fit .*makes 16x12 from 8x6, but "
                                         r"the pooling that made its indices read 15x12"):
        Predictor(model).predict(photo((29, 24)))


def test_pad_out_fixes_the_height_it_was_made_for(tmp_path):
    """pad_out_h: true takes one row off: it fits only the heights whose pooling input was odd,
    so the height is fixed (SegNet's CamVid nets are made so for 360 rows); the width stays free."""
    text = _segnet_style(1, pad_out_h=True).replace("dim: 16", "dim: 15")
    proto, weights = write_net(tmp_path, text, _segnet_blobs(1))
    assert caffe.convert(proto, weights).metadata["input_shape"] == [-1, 3, 15, -1]


def test_layers_that_fix_the_size_keep_it_fixed(tmp_path):
    """LeNet's InnerProduct after two poolings fixes 28x28; a Reshape to fixed dims fixes the
    dims it takes in (one it leaves to -1 absorbs any size); the channels are fixed by the first
    convolution."""
    lenet = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel")
    assert lenet.metadata["input_shape"] == [-1, 1, 28, 28] and "sample_shape" not in lenet.metadata
    body = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 '
            'kernel_size: 1 } }\n'
            'layer { name: "r" type: "Reshape" bottom: "c" top: "r" reshape_param { shape { dim: 0 dim: 2 dim: 8 '
            'dim: 5 } } }\n')
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 3, 8, 5)}) + body, {"c": [(2, 3, 1, 1), (2,)]})
    assert caffe.convert(proto, weights).metadata["input_shape"] == [-1, 3, 8, 5]


def test_a_free_size_net_refuses_a_size_that_does_not_fit_naming_the_layer(tmp_path):
    proto, weights = zoo_net(tmp_path, ZOO / "squeezenet_v1.1_deploy.prototxt")
    p = Predictor(caffe.convert(proto, weights))
    assert p.sample_shape(2) == (2, 3, 227, 227)
    assert p.predict(photo((64, 64)))["prob"].shape == (1, 1000, 1, 1)
    with pytest.raises(InputError, match=r"shape \[1, 3, 10, 10\] fits the model's \[-1, 3, -1, -1\], but layer "
                                         r"'pool3' \(MaxPool2d\) does not fit its input \(1, 128, 2, 2\): .*smaller "
                                         r"than the kernel 3x3"):
        p.predict(photo((10, 10)))
    with pytest.raises(InputError, match=r"shape \[1, 1, 64, 64\] does not fit the model's \[-1, 3, -1, -1\]"):
        p.predict(np.zeros((1, 1, 64, 64), np.float32))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True)


def test_a_photo_in_one_command_at_its_own_size(tmp_path):
    """convert a zoo net that takes any size, then `kindling run --input cat.jpg`: the photo goes
    in at its own size (no size recorded, so no resize or crop), top-k printed; `info` traces at the
    declared size and refuses a size that does not fit, naming the layer."""
    proto, weights = zoo_net(tmp_path, ZOO / "squeezenet_v1.1_deploy.prototxt")
    (tmp_path / "labels.txt").write_text("".join(f"n{i:08d} class {i}\n" for i in range(1000)))
    out = tmp_path / "squeezenet.kdl"
    r = cli("convert", "caffe", "--prototxt", proto, "--caffemodel", weights, "-o", out, "--labels",
            tmp_path / "labels.txt", "--mean", "104,117,123", "--channel-order", "bgr", "--verify")
    assert r.returncode == 0, r.stderr
    assert "at input [1, 3, 227, 227] (it takes any size that fits [-1, 3, -1, -1])" in r.stdout
    small = tmp_path / "small.png"
    Image.open(CAT).resize((120, 90)).save(small)
    r = cli("run", out, "--input", CAT, small, "--top-k", "3", "--output", tmp_path / "y.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npz")["prob"].shape == (2, 1000, 1, 1)  # each photo at its size, scores stacked
    expected = caffe.convert(proto, weights).evaluate().forward(photo()).reshape(-1)
    top = np.argsort(-expected)[:3]
    line = next(line for line in r.stdout.splitlines() if line.startswith(str(CAT)))
    assert line == f"{CAT}: " + ", ".join(f"n{i:08d} class {i} {expected[i]:.4f}" for i in top)
    assert str(small) in r.stdout
    r = cli("run", out, "--input", CAT, "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy").reshape(-1), expected, rtol=1e-5, atol=1e-6)
    r = cli("info", out)
    assert "input shape: [1, 3, 227, 227] (recorded [-1, 3, -1, -1]" in r.stdout and "(1, 1000, 1, 1)" in r.stdout
    r = cli("info", out, "--input-shape", "1,3,10,10")
    assert r.returncode == 1 and "'pool3' (MaxPool2d) does not fit its input shape (1, 128, 2, 2)" in r.stderr


def test_training_a_free_size_net_needs_a_size_it_fits(tmp_path):
    from kindling.commands.train import _preprocessing
    proto, weights = zoo_net(tmp_path, ZOO / "squeezenet_v1.1_deploy.prototxt")
    model = caffe.convert(proto, weights)
    args = argparse.Namespace(mean=None, std=None, scale=None, channel_order=None, resize=None, input_size=None)
    with pytest.raises(ValueError, match=r"takes any size that fits, but a batch needs one\): give --input-size"):
        _preprocessing(args, model)
    args.input_size = "10,10"
    with pytest.raises(ValueError, match=r"input size 10x10: 'pool3' \(MaxPool2d\) does not fit"):
        _preprocessing(args, model)
    args.input_size = "180,200"
    assert _preprocessing(args, model)["input_size"] == [180, 200]


def test_hed_with_its_repeated_crop_names_takes_any_size_as_opencv_does(tmp_path):
    """HED's deploy net names its five Crop layers "crop": the later ones become crop_1..crop_4, as
    OpenCV names them, so every layer still lines up with OpenCV's."""
    proto, weights = zoo_net(tmp_path, ZOO / "hed_deploy.prototxt", narrow=8, calibrate=photo((200, 200)))
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, 3, -1, -1]
    assert {"crop", "crop_4"} <= {m.name for m in model.modules()}
    _matches_opencv_at(model, proto, weights, [(200, 200), (150, 230)])
