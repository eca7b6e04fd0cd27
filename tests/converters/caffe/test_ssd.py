"""SSD's detection head: PriorBox and DetectionOutput (with the Permute/Flatten/Concat/Softmax
plumbing around them) on the real MobileNet-SSD and OpenCV's res10 face detector, against OpenCV on
the real photo; and Caffe's own definitions where OpenCV differs (row order, CORNER_SIZE, no
detections) or has no counterpart."""
import subprocess
import sys

import numpy as np
import pytest

import kindling
from caffe_nets import ZOO, inputs_header, opencv_forward, photo, write_net, zoo_net
from kindling.converters import caffe
from kindling.converters.caffe.reference import OpenCVReference
from kindling.converters.verify import verify
from kindling.runtime import nn

MOBILENET_SSD = ZOO / "mobilenet_ssd_voc_deploy.prototxt"
RES10 = ZOO / "res10_300x300_ssd_deploy.prototxt"
# MobileNet-SSD's class scores, made peakier than unit-spread logits give (its threshold is 0.25)
SSD_CONF = {f"{b}_mbox_conf": 3.0 for b in ("conv11", "conv13", "conv14_2", "conv15_2", "conv16_2", "conv17_2")}


def _mobilenet_input(size=(300, 300)):
    return photo(size, mean=(127.5,) * 3) * np.float32(0.007843)  # its preprocessing: (x - 127.5) * 0.007843


def _res10_input(size=(300, 300)):
    return photo(size, mean=(104.0, 177.0, 123.0))


def _caffe_order(rows: np.ndarray) -> None:
    """Caffe's layout: one row per detection, by image, then label, best first within a label."""
    key = rows[:, 0] * 1000 + rows[:, 1]
    assert (np.diff(key) >= 0).all()
    same = np.diff(key) == 0
    assert (np.diff(rows[:, 2])[same] <= 0).all()


def _same_detections(ours: np.ndarray, theirs: np.ndarray, tol: float = 1e-4) -> None:
    """Every detection of ours is one of OpenCV's to ``tol`` and the other way round (OpenCV sorts
    all rows by score and pads to keep_top_k rows of zeros)."""
    theirs = theirs[np.abs(theirs).sum(axis=1) > 0]
    assert ours.shape == theirs.shape, f"{len(ours)} detections vs OpenCV's {len(theirs)}"
    free = list(range(len(theirs)))
    for row in ours:
        j = min(free, key=lambda j: np.abs(theirs[j] - row).max())
        assert np.abs(theirs[j] - row).max() <= tol, f"{row} has no match in OpenCV's detections"
        free.remove(j)


@pytest.fixture(scope="module")
def mobilenet_ssd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mobilenet_ssd")
    proto, weights = zoo_net(tmp, MOBILENET_SSD, calibrate=_mobilenet_input(), scale=SSD_CONF)
    return proto, weights, caffe.convert(proto, weights)


@pytest.fixture(scope="module")
def res10(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("res10")
    proto, weights = zoo_net(tmp, RES10, calibrate=_res10_input())
    return proto, weights, caffe.convert(proto, weights)


@pytest.mark.parametrize("size", [(300, 300), None], ids=["300x300", "photo_size"])
def test_mobilenet_ssd_detects_what_opencv_detects(mobilenet_ssd, size):
    proto, weights, model = mobilenet_ssd
    assert model.metadata["input_shape"] == [-1, 3, -1, -1]
    x = _mobilenet_input(size)
    ours = model.evaluate().forward(x)
    assert ours.ndim == 4 and ours.shape[:2] == (1, 1) and ours.shape[3] == 7
    rows = ours[0, 0]
    assert len(rows) == 100 and len(np.unique(rows[:, 1])) > 5  # keep_top_k of many classes
    _caffe_order(rows)
    _same_detections(rows, opencv_forward(proto, weights, {"data": x}, ["detection_out"])[0][0, 0])


@pytest.mark.parametrize("size", [(300, 300), None], ids=["300x300", "photo_size"])
def test_res10_face_detector_detects_what_opencv_detects(res10, size):
    proto, weights, model = res10
    x = _res10_input(size)
    rows = model.evaluate().forward(x)[0, 0]
    assert 20 < len(rows) <= 200 and set(rows[:, 1]) == {1.0}
    _caffe_order(rows)
    _same_detections(rows, opencv_forward(proto, weights, {"data": x}, ["detection_out"])[0][0, 0])


def test_every_layer_of_the_face_detector_matches_opencv(res10):
    """--verify's per-layer comparison, detections included (matched as a set of rows)."""
    proto, weights, model = res10
    report = verify(model, OpenCVReference(proto, weights), {"data": _res10_input()})
    assert report.first_failure is None, report.table()
    kinds = {r.type for r in report.rows if r.max_abs is not None}
    assert {"PriorBox", "DetectionOutput", "Normalize", "Permute", "Concat", "Softmax"} <= kinds


def test_convert_verify_and_run_a_detector_through_the_command_line(res10, tmp_path):
    proto, weights, _ = res10
    np.savez(tmp_path / "photo.npz", data=_res10_input())
    out = tmp_path / "res10.kdl"
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", proto, "--caffemodel",
                        weights, "-o", out, "--verify", "--verify-input", tmp_path / "photo.npz"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "detection_out" in r.stdout and "all within" in r.stdout
    np.save(tmp_path / "x.npy", _res10_input((240, 320)))
    r = subprocess.run([sys.executable, "-m", "kindling", "run", out, "--input", tmp_path / "x.npy", "--output",
                        tmp_path / "y.npy"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npy").shape[-1] == 7 and kindling.load(out).metadata["output_names"] == ["detection_out"]


# ---- Caffe's definitions, computed here ---------------------------------------------------------
def _iou(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    area = lambda r: 0.0 if r[2] < r[0] or r[3] < r[1] else (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return iw * ih / (area(a) + area(b) - iw * ih) if iw > 0 and ih > 0 else 0.0


def _caffe_detection_output(loc, conf, prior, p):
    """bbox_util.cpp and detection_output_layer.cpp, one box at a time (CORNER_SIZE decoding,
    share_location false, keep_top_k across classes)."""
    n, num_priors = len(loc), prior.shape[2] // 4
    priors, variances = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    rows = []
    for i in range(n):
        kept = {}
        for c in range(p["num_classes"]):
            if c == p["background_label_id"]:
                continue
            boxes = []
            for k in range(num_priors):
                pr, v, lo = priors[k], variances[k], loc[i].reshape(num_priors, -1, 4)[k, c]
                pw, ph = pr[2] - pr[0], pr[3] - pr[1]
                boxes.append([pr[0] + v[0] * lo[0] * pw, pr[1] + v[1] * lo[1] * ph,
                              pr[2] + v[2] * lo[2] * pw, pr[3] + v[3] * lo[3] * ph])
            scores = conf[i].reshape(num_priors, -1)[:, c]
            order = sorted((k for k in range(num_priors) if scores[k] > p["confidence_threshold"]),
                           key=lambda k: -scores[k])[:p["top_k"]]
            keep = []
            for k in order:
                if all(_iou(boxes[k], boxes[j]) <= p["nms_threshold"] for j in keep):
                    keep.append(k)
            kept[c] = [(scores[k], k, boxes[k]) for k in keep]
        every = sorted(((s, c, k, b) for c, v in kept.items() for s, k, b in v), key=lambda t: -t[0])
        best = every[:p["keep_top_k"]]
        for c in sorted({t[1] for t in best}):
            rows += [[i, c, s, *b] for s, cc, k, b in best if cc == c]
    return np.array(rows, np.float32)


def test_detection_output_follows_caffe_where_opencv_does_not():
    """CORNER_SIZE decoding (OpenCV reads it as CORNER), one box per class (share_location false),
    keep_top_k over all classes, then Caffe's row order: by label, best first."""
    rng = np.random.default_rng(3)
    num_priors, classes = 40, 4
    centres = rng.uniform(0.2, 0.8, (num_priors, 2))
    sizes = rng.uniform(0.05, 0.3, (num_priors, 2))
    prior = np.stack([np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).reshape(-1),
                      np.tile([0.1, 0.1, 0.2, 0.2], num_priors)])[None].astype(np.float32)
    loc = rng.normal(0, 1, (2, num_priors * classes * 4)).astype(np.float32)
    logits = rng.normal(0, 2, (2, num_priors, classes))
    conf = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(2, -1).astype(np.float32)
    p = dict(num_classes=classes, background_label_id=0, nms_threshold=0.3, top_k=15, keep_top_k=12,
             confidence_threshold=0.2)
    layer = nn.DetectionOutput(classes, share_location=False, code_type="CORNER_SIZE", nms_threshold=0.3,
                               top_k=15, keep_top_k=12, confidence_threshold=0.2)
    ours = layer.forward([loc, conf, prior])[0, 0]
    expected = _caffe_detection_output(loc, conf, prior, p)
    assert ours.shape == expected.shape == (24, 7)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_no_detections_give_caffes_row_of_minus_ones_per_image():
    prior = np.tile(np.array([[0.1, 0.1, 0.5, 0.5]], np.float32), (1, 2, 3)).reshape(1, 2, 12)
    out = nn.DetectionOutput(2, confidence_threshold=0.9).forward(
        [np.zeros((2, 12), np.float32), np.full((2, 6), 0.5, np.float32), prior])
    np.testing.assert_array_equal(out[0, 0], [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])
    with pytest.raises(RuntimeError, match="'det' has no gradient"):
        nn.DetectionOutput(2, name="det").backward([], None)


# clip is given in each: Caffe's default is false, OpenCV's true
PRIOR_CASES = {
    "min_max_ratios_flip": "min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: false",
    "two_min_sizes_no_flip_clip": "min_size: 20 min_size: 45 aspect_ratio: 2 flip: false clip: true",
    "step_offset_one_variance": "min_size: 16 step: 8 offset: 0.25 variance: 0.2 clip: false",
    "steps_hw_img_hw": "min_size: 24 max_size: 50 step_h: 6 step_w: 5 img_h: 30 img_w: 36 clip: false "
                       "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
}


@pytest.mark.parametrize("case", PRIOR_CASES)
def test_prior_box_matches_opencv(tmp_path, case):
    body = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 '
            'kernel_size: 3 stride: 6 } }\n'
            f'layer {{ name: "p" type: "PriorBox" bottom: "c" bottom: "data" top: "p" prior_box_param {{ '
            f'{PRIOR_CASES[case]} {"" if "variance" in PRIOR_CASES[case] else "variance: 0.1"} }} }}\n')
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 3, 30, 36)}) + body, {"c": [(2, 3, 3, 3), (2,)]})
    model = caffe.convert(proto, weights).evaluate()
    x = np.zeros((1, 3, 30, 36), np.float32)
    np.testing.assert_allclose(model.forward(x), opencv_forward(proto, weights, {"data": x}, ["p"])[0],
                               rtol=1e-6, atol=1e-6)


def test_a_fixed_img_size_fixes_the_input_size(tmp_path):
    """Priors normalized by a declared image size are wrong for any other: the net then takes that
    size only, and another is refused naming the PriorBox."""
    body = ('layer { name: "p" type: "PriorBox" bottom: "data" bottom: "data" top: "p" '
            'prior_box_param { min_size: 10 img_size: 20 } }\n')
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 3, 20, 20)}) + body, {})
    model = caffe.convert(proto, weights)
    assert model.metadata["input_shape"] == [-1, -1, 20, 20]
    with pytest.raises(ValueError, match=r"'p': its boxes are made for 20x20 images \(img_size\), not 40x20"):
        model.forward(np.zeros((1, 3, 40, 20), np.float32))


def test_detection_settings_caffe_refuses_are_refused_naming_the_layer(tmp_path):
    body = ('layer { name: "pb" type: "PriorBox" bottom: "data" bottom: "data" top: "pb" '
            'prior_box_param { min_size: 10 max_size: 5 } }\n')
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 3, 8, 8)}) + body, {})
    with pytest.raises(caffe.CaffeError, match=r"'pb' \(PriorBox\).*max size must pair with a smaller min size"):
        caffe.convert(proto, weights)
    body = 'layer { name: "d" type: "DetectionOutput" bottom: "data" bottom: "data" bottom: "data" top: "d" }\n'
    proto, weights = write_net(tmp_path, inputs_header({"data": (1, 3, 8, 8)}) + body, {})
    with pytest.raises(caffe.CaffeError, match=r"'d' \(DetectionOutput\): detection_output_param.num_classes is missing"):
        caffe.convert(proto, weights)


def test_a_photo_in_one_command_lists_what_the_detector_found(mobilenet_ssd, tmp_path):
    """kindling run on a detector prints each image's best detections, with labels and boxes
    (fractions of the image), batches or not alike."""
    from PIL import Image

    from caffe_nets import CAT
    from kindling.runtime.predict import Predictor
    proto, weights, model = mobilenet_ssd
    labels = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
              "tvmonitor"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    out = tmp_path / "ssd.kdl"
    r = subprocess.run([sys.executable, "-m", "kindling", "convert", "caffe", "--prototxt", proto, "--caffemodel",
                        weights, "-o", out, "--labels", tmp_path / "labels.txt", "--mean", "127.5,127.5,127.5",
                        "--scale", "0.007843", "--channel-order", "bgr", "--input-size", "300,300"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    flipped = tmp_path / "flipped.jpg"
    Image.open(CAT).transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    r = subprocess.run([sys.executable, "-m", "kindling", "run", out, "--input", CAT, flipped, "--top-k", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    p = Predictor.load(out, batch_size=1)
    for path, line in zip([CAT, flipped], r.stdout.splitlines()):
        best = p.detections(p.predict_images([path])[0][0], 3)[0]
        assert len(best) == 3
        assert line == f"{path}: " + ", ".join(f"{d.label} {d.score:.4f} at {d.box[0]:.3f},{d.box[1]:.3f}-"
                                              f"{d.box[2]:.3f},{d.box[3]:.3f}" for d in best)
    # two images in one batch, or one at a time: the same detections, image by image
    together = Predictor.load(out, batch_size=2).predict_images([CAT, flipped])
    alone = [p.predict_images([f])[0] for f in (CAT, flipped)]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    x = p.preprocess([CAT, flipped])
    one_by_one = p.forward([x])[0]  # batch size 1: two batches, image indices 0 and 1 joined
    both = Predictor.load(out, batch_size=2).forward([x])[0]
    assert set(one_by_one[0, 0, :, 0]) == {0.0, 1.0}
    np.testing.assert_allclose(one_by_one, both, rtol=1e-5, atol=1e-6)


def test_opencvs_half_precision_caffemodel_of_the_face_detector(res10, tmp_path):
    """OpenCV ships res10 as res10_300x300_ssd_iter_140000_fp16.caffemodel: NVIDIA Caffe's raw
    storage, FLOAT16. The same weights stored so are read as OpenCV reads them."""
    from kindling.protos import caffe_pb2
    proto, weights, _ = res10
    net = caffe_pb2.NetParameter.FromString(weights.read_bytes())
    for layer in net.layer:
        for b in layer.blobs:
            b.raw_data = np.asarray(b.data, np.float32).astype(np.float16).tobytes()
            b.raw_data_type = caffe_pb2.FLOAT16
            b.ClearField("data")
    half = tmp_path / "res10_fp16.caffemodel"
    half.write_bytes(net.SerializeToString())
    assert half.stat().st_size < 0.6 * weights.stat().st_size
    model = caffe.convert(proto, half)
    x = _res10_input()
    rows = model.evaluate().forward(x)[0, 0]
    _same_detections(rows, opencv_forward(proto, half, {"data": x}, ["detection_out"])[0][0, 0])
