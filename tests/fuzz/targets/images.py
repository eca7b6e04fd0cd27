"""Image decoding as training, scoring and serving do it: an ImageFolder's sample through the
Pipeline from a snapshot's metadata, and the same bytes decoded from memory (a request). The first
byte picks the file's suffix; Pillow goes by the content."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from kindling.runtime.data import ImageFolder, Pipeline
from kindling.runtime.errors import DataError

from . import FIXTURES, selected

SUFFIXES = [".jpg", ".png", ".gif", ".bmp", ".tiff", ".webp"]
TOKENS = [b"\xff\xd8\xff", b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff", b"IHDR\x00\x00\xff\xff\x00\x00\xff\xff",
          b"\x89PNG\r\n\x1a\n", b"GIF89a\xff\xff\xff\xff", b"BM", b"II*\x00", b"RIFF", b"Exif\x00\x00",
          b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"]


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    f = io.BytesIO()
    img.save(f, fmt, **kw)
    return f.getvalue()


def seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decoded upright
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    sixteen = Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    return [b"\x00" + (FIXTURES / "images" / "cat.jpg").read_bytes(),
            b"\x00" + _encoded(rgb, "JPEG", exif=exif.tobytes(), quality=80),
            b"\x00" + _encoded(rgb.convert("L"), "JPEG", progressive=True),
            b"\x01" + _encoded(rgb.convert("RGBA"), "PNG"), b"\x01" + _encoded(sixteen, "PNG"),
            b"\x01" + _encoded(palette, "PNG"),
            b"\x02" + _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
            b"\x03" + _encoded(rgb, "BMP"), b"\x04" + _encoded(rgb, "TIFF", compression="tiff_deflate"),
            b"\x05" + _encoded(rgb, "WEBP")]


def target(data: bytes, tmp) -> None:
    suffix, body = selected(data, SUFFIXES)
    root = tmp / "images"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / f"img{suffix}").write_bytes(body)
    pre = {"resize": 20, "input_size": [16, 16], "channel_order": "bgr", "mean": [104.0, 117.0, 123.0]}
    ds = ImageFolder(root, Pipeline.from_metadata(pre, train=True))
    ds.load(0, np.random.default_rng(0))
    try:  # a request's bytes: no file to name, but still only kindling's error
        Pipeline.from_metadata({"input_size": [12, 10], "channel_order": "gray"})(body)
    except DataError:
        pass
