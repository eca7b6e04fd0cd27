"""What real image folders hold (Caltech-256 / ImageNet trees copied from HDFS, S3 or a laptop):
every kind of file is made here with Pillow, and what the pipeline gives is checked against
PIL and numpy done by hand from the pixels the test wrote."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from kindling.runtime.data import (CenterCrop, ChannelOrder, Decode, ImageFolder, Pipeline, RandomCrop, Resize,
                                   batches)

H, W = 36, 52


def _smooth(seed=0):
    """Low-frequency colours, so lossy formats (JPEG, WebP) stay close to the pixels written."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W]).reshape(2, 1, 1)
    return np.stack([(40 + 170 * (x * rng.random() + y * rng.random()) / 2 + 20 * rng.random()) for _ in range(3)],
                    -1).astype(np.uint8)


def _noise(seed=0, shape=(H, W, 3), high=256, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def _gray3(g):
    return np.repeat(g[..., None], 3, -1)


def _palette_image(seed, transparency=None):
    """(P image, its RGB pixels) from an index array and palette of our own."""
    idx, pal = _noise(seed, (H, W), 16), _noise(seed + 1, (16, 3))
    img = Image.fromarray(idx.astype(np.uint8), "P")
    img.putpalette(pal.ravel().tolist())
    if transparency is not None:
        img.info["transparency"] = transparency
    return img, pal[idx]


def _rgb(a, name, **kw):
    def write(d):
        Image.fromarray(a).save(d / name, **kw)
        return d / name, a
    return write


def _writers():
    """kind -> (write(dir) -> (path, the RGB pixels a viewer shows), tolerance in mean |difference|)."""
    a, s = _noise(1), _smooth(2)
    g16 = _noise(3, (H, W), 65536, np.uint16)
    rgba = np.dstack([_noise(4), np.where(_noise(5, (H, W), 2) == 1, 255, 0)]).astype(np.uint8)
    bits = _noise(6, (H, W), 2).astype(bool)

    def save(img, rgb, name, **kw):
        def write(d):
            img.save(d / name, **kw)
            return d / name, rgb
        return write

    def gif(d):
        frames = [_palette_image(10 + k) for k in range(3)]
        frames[0][0].save(d / "anim.gif", save_all=True, append_images=[f for f, _ in frames[1:]], optimize=False)
        return d / "anim.gif", frames[0][1]

    return {
        "png_rgb": (_rgb(a, "a.png"), 0), "png_upper_ext": (_rgb(a, "A.PNG"), 0),
        "png_named_jpg": (_rgb(a, "lies.jpg", format="PNG"), 0), "bmp": (_rgb(a, "a.bmp"), 0),
        "tiff": (_rgb(a, "a.tif"), 0), "tiff_long_ext": (_rgb(a, "a.TIFF"), 0),
        "webp_lossless": (_rgb(a, "a.webp", lossless=True), 0),
        "jpeg": (_rgb(s, "a.jpg", quality=95), 2), "jpeg_upper_ext": (_rgb(s, "A.JPG", quality=95), 2),
        "jpeg_upper_long_ext": (_rgb(s, "A.JPEG", quality=95), 2),
        "jpeg_progressive": (_rgb(s, "p.jpg", quality=95, progressive=True), 2),
        "jpeg_gray": (save(Image.fromarray(s[..., 0]), _gray3(s[..., 0]), "g.jpg", quality=95), 2),
        # Pillow's RGB -> CMYK is C = 255 - R ... with K = 0, and back again on decoding
        "jpeg_cmyk": (save(Image.fromarray(s).convert("CMYK"), s, "cmyk.jpg", quality=95), 2),
        "png_rgba": (save(Image.fromarray(rgba, "RGBA"), rgba[..., :3], "rgba.png"), 0),
        "png_la": (save(Image.fromarray(rgba[..., 2:], "LA"), _gray3(rgba[..., 2]), "la.png"), 0),
        "png_palette": (save(*_palette_image(7), "p.png"), 0),
        # transparency dropped, as torchvision's loader does: the palette colour shows
        "png_palette_transparent": (save(*_palette_image(8, 3), "pt.png", transparency=3), 0),
        "png_16bit_gray": (save(Image.fromarray(g16), _gray3((g16 >> 8).astype(np.uint8)), "g16.png"), 0),
        "tiff_16bit_gray": (save(Image.fromarray(g16), _gray3((g16 >> 8).astype(np.uint8)), "g16.tif"), 0),
        "png_1bit": (save(Image.fromarray(bits), _gray3(bits.astype(np.uint8) * 255), "bits.png"), 0),
        "gif_animated_first_frame": (gif, 0),
    }


WRITERS = _writers()


def _luma(rgb):
    """ITU-R 601-2, which Pillow's RGB -> L uses."""
    return rgb.astype(np.float64) @ np.array([299, 587, 114]) / 1000


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_kind_of_file_decodes_to_the_pixels_a_viewer_shows(tmp_path, kind):
    write, tol = WRITERS[kind]
    path, rgb = write(tmp_path)
    for order, ref in (("rgb", rgb.transpose(2, 0, 1)), ("bgr", rgb.transpose(2, 0, 1)[::-1]),
                       ("gray", _luma(rgb)[None])):
        got = (Decode(gray=order == "gray") >> ChannelOrder(order))(path)
        assert got.dtype == np.float32 and got.shape == ref.shape, (kind, order)
        diff = np.abs(got - ref)
        # gray: Pillow rounds the luma to an integer (and lossy files add their own error)
        assert diff.mean() <= tol + (0.5 if order == "gray" else 0), (kind, order, diff.mean())
        if tol == 0:
            assert diff.max() <= (1 if order == "gray" else 0), (kind, order)


ORIENTED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
            7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied_like_a_photo_viewer(tmp_path, orientation):
    a = _noise(orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "phone.png", exif=exif)
    want = ORIENTED[orientation](a)
    assert np.array_equal((Decode() >> ChannelOrder("rgb"))(tmp_path / "phone.png"), want.transpose(2, 0, 1))
    # a phone's JPEG, stored landscape and tagged "rotate 90 clockwise", is portrait after Resize + crop
    s = _smooth(orientation)
    Image.fromarray(s).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    upright = ORIENTED[orientation](s)
    got = (Decode() >> ChannelOrder("rgb"))(tmp_path / "phone.jpg")
    assert got.shape == upright.transpose(2, 0, 1).shape and np.abs(got - upright.transpose(2, 0, 1)).mean() < 2


@pytest.mark.parametrize("size", [(5, 7), (10, 600), (600, 10), (37, 37)], ids=["tiny", "wide", "tall", "square"])
def test_small_wide_and_tall_images_through_resize_and_crop(tmp_path, size):
    a = _noise(0, (*size, 3))
    Image.fromarray(a).save(tmp_path / "x.png")
    got = (Decode() >> Resize(16) >> CenterCrop(12) >> ChannelOrder("rgb"))(tmp_path / "x.png")
    h, w = size
    k = 16 / min(h, w)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    ref = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BILINEAR), np.float32)
    top, left = (nh - 12) // 2, (nw - 12) // 2
    np.testing.assert_array_equal(got, ref[top:top + 12, left:left + 12].transpose(2, 0, 1))
    rnd = (Decode() >> Resize(16) >> RandomCrop(12) >> ChannelOrder("rgb"))(tmp_path / "x.png",
                                                                           np.random.default_rng(0))
    assert rnd.shape == (3, 12, 12)


def test_a_crop_larger_than_the_resize_is_a_clear_error():
    with pytest.raises(ValueError, match=r"CenterCrop 48x48 is larger than what Resize\(32\)"):
        Pipeline.from_metadata({"resize": 32, "input_size": [48, 48]})
    with pytest.raises(ValueError, match=r"RandomCrop 20x40 .* Resize\(\(30, 30\)\)"):
        Decode() >> Resize((30, 30)) >> RandomCrop((20, 40))
    assert Pipeline.from_metadata({"resize": 48, "input_size": [48, 40]}, train=True).random


def _png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(seed, (8, 8, 3))).save(path)
    return path


@pytest.fixture()
def messy(tmp_path):
    """A tree as it arrives from a Mac, a Jupyter server and a shell: returns (root, {class: images})."""
    root = tmp_path / "root"
    images = {
        "001.ak47": [_png(root / "001.ak47" / "b.png"), _png(root / "001.ak47" / "a.jpg")],
        "002.with space ünïcode 猫": [_png(root / "002.with space ünïcode 猫" / "x.png")],
        "003.nested": [_png(root / "003.nested" / "top.png"), _png(root / "003.nested" / "sub" / "subsub" / "d.png")],
        "004.empty": [],
        "005.linked": [],
    }
    (root / "004.empty").mkdir()
    outside = tmp_path / "elsewhere"
    images["005.linked"].append(_png(outside / "real.png"))
    os.symlink(outside, root / "005.linked")
    os.symlink(root / "003.nested", root / "003.nested" / "sub" / "loop")  # a link back up the tree
    images["005.linked"] = [root / "005.linked" / "real.png"]
    # what is not the user's: hidden folders, AppleDouble twins, notebook checkpoints, OS litter
    _png(root / ".ipynb_checkpoints" / "x.png")
    _png(root / ".hidden" / "h.png")
    _png(root / "001.ak47" / ".ipynb_checkpoints" / "a-checkpoint.png")
    (root / "001.ak47" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (root / "001.ak47" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "001.ak47" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "002.with space ünïcode 猫" / "notes.txt").write_text("not an image")
    (root / "README.txt").write_text("root-level file")
    return root, images


def test_listing_skips_what_is_not_the_users_and_finds_nested_images(messy, caplog):
    root, images = messy
    with caplog.at_level(logging.INFO, logger="kindling.data"):
        data = ImageFolder(root, Pipeline.from_metadata({"input_size": [8, 8]}))
    assert data.labels == sorted(images)
    assert sorted((str(p), y) for p, y in data.samples) == sorted(
        (str(p), data.labels.index(c)) for c, ps in images.items() for p in ps)
    notes = [r for r in caplog.records if r.name == "kindling.data"]
    assert len([r for r in notes if r.levelno == logging.WARNING]) == 1 and "004.empty" in notes[0].getMessage()
    summary = [r.getMessage() for r in notes if r.levelno == logging.INFO]
    assert len(summary) == 1 and "ignored 2 files" in summary[0]
    # every listed file decodes: nothing left for the loader to skip
    with caplog.at_level(logging.WARNING, logger="kindling.data"):
        caplog.clear()
        assert sum(len(y) for _, y in batches(data, 3, workers=2, strict=True)) == len(data)
    # a resumed run names its labels: hidden folders must not count as unknown classes
    assert ImageFolder(root, Pipeline(), labels=data.labels).labels == data.labels


def test_257_classes_get_indices_in_sorted_folder_order_whatever_the_creation_order(tmp_path):
    names = [f"{i:03d}.{n}" for i, n in enumerate(["Zebra", "ant", "Ému", "bear baby"] * 64 + ["clutter"], 1)]
    for k, order in enumerate((names, names[::-1])):
        for n in order:
            _png(tmp_path / str(k) / n / "i.png")
    one, two = (ImageFolder(tmp_path / str(k), Pipeline()) for k in (0, 1))
    assert one.labels == two.labels == sorted(names) and len(one.labels) == 257
    assert [(p.parent.name, y) for p, y in one.samples] == [(n, i) for i, n in enumerate(sorted(names))]


def test_corrupt_files_are_skipped_with_a_warning_naming_them_or_fail_strict(tmp_path, caplog):
    for i in range(3):
        _png(tmp_path / "good" / f"{i}.png", i)
    (tmp_path / "bad").mkdir()
    Image.fromarray(_smooth()).save(tmp_path / "bad" / "whole.jpg")
    whole = (tmp_path / "bad" / "whole.jpg").read_bytes()
    (tmp_path / "bad" / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "bad" / "empty.jpg").write_bytes(b"")
    (tmp_path / "bad" / "text.png").write_text("<html>403 Forbidden</html>")  # what a failed download leaves
    data = ImageFolder(tmp_path, Pipeline.from_metadata({"input_size": [8, 8]}))
    with caplog.at_level(logging.WARNING, logger="kindling.data"):
        got = sum(len(y) for _, y in batches(data, 4, workers=2))
    assert got == 4
    skipped = " ".join(r.getMessage() for r in caplog.records)
    for name in ("truncated.jpg", "empty.jpg", "text.png"):
        assert str(tmp_path / "bad" / name) in skipped
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kindling.data"):
        assert sum(len(y) for _, y in batches(data, 4, epoch=2, workers=2)) == 4
    assert not caplog.records, "a bad file is named once, not again in every epoch"
    with pytest.raises(ValueError, match="(truncated|empty|text)"):
        list(batches(data, 4, workers=2, strict=True))


def test_root_errors_name_the_path(tmp_path):
    (tmp_path / "a_file.txt").write_text("x")
    _png(tmp_path / "flat" / "a.png")
    (tmp_path / "no_images" / "cls").mkdir(parents=True)
    (tmp_path / "no_images" / "cls" / "a.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_hidden" / ".ipynb_checkpoints").mkdir(parents=True)
    cases = {"missing": "no such folder", "a_file.txt": "a file, not a folder", "empty": "no class sub-folders",
             "only_hidden": "no class sub-folders", "flat": r"1 images lie directly in",
             "no_images": "no images found"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as e:
            ImageFolder(tmp_path / name, Pipeline())
        assert str(tmp_path / name) in str(e.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the strict run's, outside pytest.warns
def test_a_decompression_bomb_warning_does_not_stop_training(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)  # Pillow's own limit, made small
    _png(tmp_path / "c" / "small.png")
    big = _noise(0, (50, 50, 3))
    Image.fromarray(big).save(tmp_path / "c" / "big.png")  # above the limit: Pillow warns
    Image.fromarray(_noise(0, (60, 60, 3))).save(tmp_path / "c" / "huge.png")  # above twice it: Pillow refuses
    data = ImageFolder(tmp_path, Decode() >> ChannelOrder("rgb"))
    with pytest.warns(Image.DecompressionBombWarning), caplog.at_level(logging.WARNING, logger="kindling.data"):
        shapes = [x.shape[1:] for x, _ in batches(data, 1, shuffle=False, workers=2)]
        first = data.load(0)[0]
    assert shapes == [(3, 50, 50), (3, 8, 8)] and np.array_equal(first, big.transpose(2, 0, 1))
    assert any("huge.png" in r.getMessage() and "MAX_IMAGE_PIXELS" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="huge.png"):
        list(batches(data, 1, shuffle=False, workers=2, strict=True))


def test_decoding_an_animated_gif_closes_the_file(tmp_path):
    import gc
    import warnings
    path, first = WRITERS["gif_animated_first_frame"][0](tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = (Decode() >> ChannelOrder("rgb"))(path)
        gc.collect()
    assert np.array_equal(got, first.transpose(2, 0, 1))
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_labels_match_folders_whatever_their_unicode_form(tmp_path):
    import unicodedata
    composed = unicodedata.normalize("NFC", "café")
    decomposed = unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    _png(tmp_path / decomposed / "0.png", 0)  # as copied from a Mac
    _png(tmp_path / "tea" / "0.png", 1)
    saved = ImageFolder(tmp_path, Pipeline()).labels
    assert saved == [composed, "tea"]
    data = ImageFolder(tmp_path, Pipeline(), labels=[composed, "tea"])  # labels a snapshot stored on Linux
    assert sorted(data.label(i) for i in range(len(data))) == [0, 1]


# what Decode says of bytes that are not a whole image
DAMAGED = r"(not an image that Pillow can read|a corrupt \w+ file|a broken image header|\w+ data cannot be decoded)"


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0" + bytes(40), b"\x89PNG\r\n\x1a\n" + bytes(30), b"GIF89a\xff",
                                     b"BM" + bytes(60), b"II*\x00" + bytes(20)],
                         ids=["empty", "jpeg-header", "png-header", "gif", "bmp", "tiff"])
def test_a_damaged_image_is_one_data_error_naming_it(tmp_path, content):
    """Pillow raises OSError, SyntaxError, struct.error, ValueError... for damaged files; the
    pipeline raises one DataError that names the file (the loader then skips it, serving answers
    with it)."""
    from kindling.runtime.data import Decode
    from kindling.runtime.errors import DataError
    path = tmp_path / "img.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: {DAMAGED}"):
        Pipeline.from_metadata({"input_size": [8, 8]})(path)
    with pytest.raises(DataError, match=rf"^{DAMAGED}"):  # bytes: whoever holds them names them (image i of a request)
        Decode()(content)


def test_a_chunk_length_of_2gb_is_not_allocated(tmp_path):
    """Found by tests/fuzz: a 386-byte 16-bit PNG whose chunk claims 2 GB made Pillow ask the file
    object for 2 GB (allocated before the read), a MemoryError under a memory limit. Decoding
    from the file's bytes in memory reads only what is there."""
    import os
    import resource
    from pathlib import Path

    from kindling.runtime.errors import DataError
    png = Path(__file__).resolve().parents[2] / "fixtures" / "hostile" / "png_chunk_claims_2gb.png"
    pid = os.fork()
    if pid == 0:  # a child under `ulimit -v`: what it has now plus 512 MB
        code = 3
        try:
            vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize:")).split()[1])
            resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (512 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
            try:
                Pipeline.from_metadata({"input_size": [8, 8]})(png)
                code = 0
            except DataError as e:
                code = 0 if str(e).startswith(f"{png}: ") else 1
            except MemoryError:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, {1: "unnamed error", 2: "MemoryError", 3: "other"}.get(
        os.waitstatus_to_exitcode(status))
