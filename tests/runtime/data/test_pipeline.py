"""The image pipeline, the folder data set and the loader."""
import numpy as np
import pytest
from PIL import Image

from caffe_nets import FIXTURES
from kindling.runtime.data import (ArrayDataSet, CenterCrop, ChannelOrder, Decode, ImageFolder, Normalize, Pipeline,
                                   RandomCrop, RandomHorizontalFlip, Resize, batches)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c, n in (("cat", 6), ("dog", 9), ("eel", 3)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    return tmp_path


def test_steps_against_pil_and_numpy_done_by_hand(folder):
    path = folder / "cat" / "0.png"
    pipe = Decode() >> Resize(32) >> CenterCrop(24) >> ChannelOrder("bgr") >> Normalize([104, 117, 123], [2, 2, 2])
    img = Image.open(path).convert("RGB")
    img = img.resize((40, 32), Image.BILINEAR)  # shorter side 40 -> 32, width 50 -> 40
    img = img.crop((8, 4, 32, 28))
    ref = np.asarray(img, np.float32).transpose(2, 0, 1)[::-1]
    ref = (ref - np.array([104, 117, 123], np.float32).reshape(3, 1, 1)) / 2
    np.testing.assert_allclose(pipe(path), ref, atol=1e-5)
    assert Pipeline.from_metadata(pipe.to_metadata())(path).shape == (3, 24, 24)


CAT = FIXTURES / "images" / "cat.jpg"  # a real 480x360 photo


def test_a_jpeg_before_a_resize_is_decoded_at_the_smallest_scale_that_still_fits():
    pipe = Decode() >> Resize(64) >> CenterCrop(64)
    assert pipe.steps[0].at_least == 64
    # 480x360 holds 64 five times along its shorter side: libjpeg's 1/4 scale is the largest <= 5
    assert pipe.steps[0](CAT).size == (120, 90)
    assert Decode()(CAT).size == (480, 360)
    assert (Decode() >> Resize(400)).steps[0](CAT).size == (480, 360)  # no smaller scale keeps 400


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_scaled_jpeg_decoding_gives_what_a_full_decode_gives_within_rounding(size):
    steps = [Decode(), Resize(size), CenterCrop(size), ChannelOrder("rgb")]
    full = CAT
    for s in steps:
        full = s(full)
    scaled = Pipeline(*steps)(CAT)
    assert scaled.shape == full.shape == (3, size, size)
    d = np.abs(scaled - full)
    assert d.mean() < 2.0 and np.percentile(d, 99) <= 8, (d.mean(), np.percentile(d, 99))


def test_a_png_is_decoded_whole(folder):
    path = folder / "cat" / "0.png"
    assert (Decode() >> Resize(8)).steps[0](path).size == (50, 40)


def test_random_steps_follow_the_generator():
    img = Image.fromarray(np.arange(40 * 40, dtype=np.uint8).reshape(40, 40))
    pipe = RandomCrop(20) >> RandomHorizontalFlip() >> ChannelOrder("gray")
    a = pipe(img, np.random.default_rng(3))
    assert np.array_equal(a, pipe(img, np.random.default_rng(3)))
    assert any(not np.array_equal(a, pipe(img, np.random.default_rng(s))) for s in range(4, 10))
    assert pipe.random and not pipe.evaluation().random


def test_image_folder_labels_and_stratified_split(folder):
    data = ImageFolder(folder, Pipeline.from_metadata({"input_size": [16, 16]}))
    assert data.labels == ["cat", "dog", "eel"] and len(data) == 18
    train, val = data.split(1 / 3, seed=0)
    val_labels = sorted(val.label(i) for i in range(len(val)))
    assert val_labels == [0, 0, 1, 1, 1, 2] and len(train) == 12
    assert {val.source(i) for i in range(len(val))}.isdisjoint({train.source(i) for i in range(len(train))})
    again = data.split(1 / 3, seed=0)[1]
    assert [again.source(i) for i in range(len(again))] == [val.source(i) for i in range(len(val))]
    with pytest.raises(ValueError, match="no class sub-folders.*6 images lie directly in"):
        ImageFolder(folder / "cat", Pipeline())


def test_loader_order_is_seeded_and_threads_change_nothing(folder):
    data = ImageFolder(folder, Pipeline.from_metadata({"input_size": [16, 16]}, train=True))
    one = [(x.copy(), y.copy()) for x, y in batches(data, 4, seed=1, epoch=2, workers=0)]
    two = [(x.copy(), y.copy()) for x, y in batches(data, 4, seed=1, epoch=2, workers=2)]
    assert len(one) == 5 and sum(len(y) for _, y in one) == 18
    for (x1, y1), (x2, y2) in zip(one, two):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    other_epoch = [y for _, y in batches(data, 4, seed=1, epoch=3, workers=0)]
    assert not all(np.array_equal(a, b) for (_, a), b in zip(one, other_epoch))
    resumed = [y for _, y in batches(data, 4, seed=1, epoch=2, start=2, workers=2)]
    assert all(np.array_equal(a, b) for (_, a), b in zip(one[2:], resumed))


def test_array_data_set():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10) % 3
    got = list(batches(ArrayDataSet(x, y), 4, shuffle=False, workers=0))
    assert np.array_equal(np.concatenate([b for b, _ in got]), x)
    with pytest.raises(ValueError, match="10 samples but 9 labels"):
        ArrayDataSet(x, y[:9])
