"""The one batched-predict path (runtime/predict.py) and the pixel limit in Decode."""
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

import kindling
from caffe_nets import FIXTURES
from kindling.runtime import nn
from kindling.runtime.data import Decode, ImageError, ImageTooLarge, Pipeline
from kindling.runtime.predict import InputError, Predictor, image_preprocessing, replicate, top_k

LENET = FIXTURES / "caffe" / "lenet_mnist"
CAT = FIXTURES / "images" / "cat.jpg"
PRE = {"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]}


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from kindling.converters import caffe
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel",
                          labels=[f"digit {i}" for i in range(10)], preprocessing=PRE)
    return kindling.save(model, tmp_path_factory.mktemp("p") / "lenet.kdl")


def _digit_pngs(n=6):
    from sklearn.datasets import load_digits
    d = load_digits()
    out = []
    for img in d.images[:n]:
        buf = io.BytesIO()
        Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR).save(buf, "PNG")
        out.append(buf.getvalue())
    return out, d.target[:n]


def test_classify_is_the_recorded_pipeline_then_forward_then_top_k(lenet):
    p = Predictor.load(lenet)
    pngs, _ = _digit_pngs()
    got = p.classify(pngs, top_k=3)
    # by hand: Pillow decode, gray, / 255, the model loaded the ordinary way, softmax outputs sorted
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"), np.float32)[None] / 255 for b in pngs])
    probs = np.array(kindling.load(lenet).evaluate().forward(x))
    for c, row in zip(got, probs):
        order = np.argsort(-row)[:3]
        assert c.indices == order.tolist()
        assert c.labels == [f"digit {i}" for i in order]
        np.testing.assert_allclose(c.scores, row[order], rtol=1e-5)
    # tensors already preprocessed give the same answers as the encoded images
    assert [c.indices for c in p.classify(list(x), top_k=3)] == [c.indices for c in got]


def test_batches_give_the_same_numbers_as_one_pass(lenet):
    x = np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32)
    whole = Predictor.load(lenet, batch_size=32).predict(x)["prob"]
    three = Predictor.load(lenet, batch_size=3).predict({"data": x})["prob"]
    np.testing.assert_allclose(three, whole, rtol=1e-5, atol=1e-7)
    assert whole.shape == (7, 10)


def test_log_softmax_outputs_become_probabilities(lenet):
    model = kindling.load(lenet)
    model.replace("prob", nn.LogSoftmax(name="prob"))
    p = Predictor(model)
    c = p.classify([np.full((1, 28, 28), 0.5, np.float32)], top_k=10)[0]
    assert sum(c.scores) == pytest.approx(1.0, rel=1e-5) and c.scores == sorted(c.scores, reverse=True)


def test_replicas_share_weights_and_run_on_threads_at_once(lenet):
    p = Predictor.load(lenet)
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    expected = p.predict(x)["prob"]
    replicas = [p.replica() for _ in range(3)]
    for r in replicas:
        for m, twin in zip(p.model.modules(), r.model.modules()):
            assert all(twin.params[k] is v for k, v in m.params.items())
        assert r.model is not p.model and r.model.find("conv1").output is None
    conv = p.model.find("conv1")
    assert replicate(p.model).find("conv1")._scratch["wmat"] is conv._scratch["wmat"]  # built by the forward above
    results, errors = {}, []

    def loop(i, r):
        try:
            xi = x[::-1] if i % 2 else x
            for _ in range(30):
                y = r.predict(xi)["prob"]
                # shared buffers would give other images' answers; the load-adaptive thread pool
                # may cut the work differently between runs, changing the last bits only
                np.testing.assert_allclose(y, expected[::-1] if i % 2 else expected, rtol=1e-5, atol=1e-7,
                                           err_msg=f"replica {i} gave other numbers")
            results[i] = True
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(i, r)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3


def test_top_k_breaks_ties_by_index_and_clips_k():
    s = np.array([[0.1, 0.3, 0.3, 0.2], [4, 3, 2, 1]], np.float32)
    idx, vals = top_k(s, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    np.testing.assert_allclose(vals, [[0.3, 0.3], [4, 3]])
    assert top_k(s, 10)[0].tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]


def test_wrong_inputs_are_named(lenet):
    p = Predictor.load(lenet)
    with pytest.raises(InputError, match=r"shape \[2, 3, 28, 28\] does not fit the model's \[-1, 1, 28, 28\]"):
        p.predict(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(InputError, match=r"inputs are \['data'\]; unknown \['x'\]"):
        p.predict({"data": np.zeros((1, 1, 28, 28)), "x": np.zeros(1)})
    with pytest.raises(InputError, match="not numeric"):
        p.predict(np.array([["a"]]))
    with pytest.raises(ImageError, match="image 1: not an image"):
        p.preprocess([CAT, b"hello, not an image"])
    with pytest.raises(ImageError, match="image 0: JPEG data cannot be decoded"):
        p.preprocess([CAT.read_bytes()[:5000]])


def test_image_preprocessing_is_completed_from_the_input_shape():
    assert image_preprocessing({"input_shape": [-1, 1, 28, 28]}) == {"input_size": [28, 28], "channel_order": "gray"}
    # a net that takes any H and W takes each image at its own size, unless a size is recorded
    assert image_preprocessing({"input_shape": [-1, 3, -1, -1]}) == {}
    assert image_preprocessing({"input_shape": [-1, 3, -1, -1], "preprocessing": {"input_size": [9, 8]}}) == {
        "input_size": [9, 8]}
    assert image_preprocessing({"input_shape": [-1, 3, -1, 50]}) is None  # a fixed width: no size to crop to
    assert image_preprocessing({"input_shape": [-1, 10]}) is None
    pre = {"resize": 256, "input_size": [224, 224], "mean": [1, 2, 3]}
    assert image_preprocessing({"preprocessing": pre, "input_shape": [-1, 3, 224, 224]}) == pre


def _bomb_png(width, height) -> bytes:
    """A real 1x1 PNG whose header claims width x height (CRC fixed): a decompression bomb's shape."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns above 89 MP
def test_the_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    bomb = _bomb_png(50_000, 50_000)  # 2.5 gigapixels declared in 70 bytes
    with pytest.raises(ImageTooLarge, match=r"2500000000 pixels"):  # Pillow's own check, as high as ours
        Decode()(bomb)
    with pytest.raises(ImageTooLarge, match=r"15000x10000 = 150,000,000 pixels, over the limit of 100,000,000"):
        Decode(max_pixels=100_000_000)(_bomb_png(15_000, 10_000))
    with pytest.raises(ImageTooLarge, match="over the limit of 100 .max_pixels."):
        Decode(max_pixels=100)(_bomb_png(20, 20))
    monkeypatch.setenv("KINDLING_MAX_PIXELS", "1000")
    pipe = Pipeline.from_metadata(PRE)  # the process-wide setting, read at each call
    with pytest.raises(ImageTooLarge, match=r"480x360 = 172,800 pixels, over the limit of 1,000 .KINDLING_MAX_PIXELS"):
        pipe(CAT)
    assert Pipeline.from_metadata(PRE, max_pixels=480 * 360)(CAT).shape == (1, 28, 28)  # an argument wins
    monkeypatch.setenv("KINDLING_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="KINDLING_MAX_PIXELS='lots' is not a whole number"):
        pipe(CAT)


def test_any_undecodable_bytes_are_an_image_error_and_a_missing_file_stays_an_os_error(tmp_path):
    png = _bomb_png(1, 1)
    for bad in (png[:20], png[:30], b"\x89PNG\r\n\x1a\n" + bytes(40), CAT.read_bytes()[:400]):
        with pytest.raises(ImageError):
            Decode()(bad)
    with pytest.raises(FileNotFoundError):
        Decode()(tmp_path / "missing.png")
