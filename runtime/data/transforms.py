"""Image preprocessing steps, composed left to right like BigDL's ``->``:

    pipeline = Decode() >> Resize(256) >> RandomCrop(224) >> RandomHorizontalFlip() \\
        >> ChannelOrder("bgr") >> Normalize(mean=[104, 117, 123])

Every step takes ``(image, rng)`` and returns the next image; random steps draw from the rng the
loader gives each sample (seeded by data set seed, epoch and sample index, so thread timing never
changes results). The same Pipeline, rebuilt from a snapshot's metadata, preprocesses for
training, Spark scoring and serving alike.

Decoding turns phone photos upright by their EXIF orientation tag (what every viewer shows and what
the person who sorted them into class folders saw); torchvision's ImageFolder and Keras's
image_dataset_from_directory do not, so a model trained there on sideways photos saw them sideways.
One pixel limit governs decoding for training, scoring and serving alike: ``Decode`` reads the
image's size from its header and refuses one with more pixels than ``max_pixels`` before decoding
a byte of it (a decompression bomb: a few KB of PNG that inflate to gigabytes). The default is
the environment's KINDLING_MAX_PIXELS, else DEFAULT_MAX_PIXELS; ``kindling serve --max-pixels``
sets it for requests. Pillow's own bomb check stays on as well. A refused or unreadable image is
skipped by the loader with a warning naming it, fails a strict run, and is an INVALID_ARGUMENT
for a server's client.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

# Twice Pillow's warning threshold (89,478,485), where Pillow itself refuses an image: a
# 13,000 x 13,000 panorama still decodes; one RGB copy of it is about 0.5 GB.
DEFAULT_MAX_PIXELS = 178_956_970


def max_pixels() -> int:
    """The process-wide pixel limit: KINDLING_MAX_PIXELS when set, else DEFAULT_MAX_PIXELS."""
    env = os.environ.get("KINDLING_MAX_PIXELS")
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"KINDLING_MAX_PIXELS={env!r} is not a whole number of pixels") from None
    if value <= 0:
        raise ValueError(f"KINDLING_MAX_PIXELS={env!r} must be positive")
    return value


class ImageError(DataError):
    """Bytes or a file that do not decode to an image: not an image, truncated, or too large. A
    file's error starts with its path."""


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than the limit (checked before decoding)."""


class Step:
    random = False

    def __call__(self, image, rng=None):
        raise NotImplementedError

    def __rshift__(self, other: "Step") -> "Pipeline":
        return Pipeline(self, other)

    def describe(self) -> dict:
        return {}


ORIENTATION = 0x0112  # the EXIF tag; 1 is upright

# 16-bit grayscale (PNG, TIFF) opens in these modes, and convert("L") clips every value above 255
# to white instead of scaling: keep the high byte. (Older Pillows open 16-bit PNGs as "I".)
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


# the first bytes of the formats whose corrupt files are worth naming as such
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF"}


def _upright(img):
    return ImageOps.exif_transpose(img) if img.getexif().get(ORIENTATION, 1) != 1 else img


def _eight_bit(img):
    if img.mode not in SIXTEEN_BIT:
        return img
    return Image.fromarray((np.clip(np.asarray(img), 0, 65535).astype(np.uint16) >> 8).astype(np.uint8), "L")


class Decode(Step):
    """A file path or encoded bytes -> a PIL image (RGB, or L when ``gray``): upright by EXIF,
    16-bit scaled to 8, an animation's first frame, transparency dropped (as torchvision does).

    ``at_least``: the side length the next step (a Resize) needs. A JPEG can be decoded at 1/2,
    1/4 or 1/8 of its size (libjpeg's DCT scaling) for a fraction of the work, so it is decoded at
    the smallest of those scales that leaves every side at least that long: a 12-megapixel phone
    photo headed for a 256-pixel resize decodes several times faster. A Pipeline sets it.

    ``max_pixels``: refuse (ImageTooLarge) an image whose header declares more pixels; None
    takes the process-wide limit (``max_pixels()``) at each call. Anything that does not decode
    (not an image, truncated) raises ImageError; a missing file stays an OSError."""

    def __init__(self, gray: bool = False, at_least: int | None = None, max_pixels: int | None = None):
        if max_pixels is not None and max_pixels <= 0:
            raise ValueError(f"Decode: max_pixels must be positive, got {max_pixels}")
        self.gray = gray
        self.at_least = at_least
        self.max_pixels = max_pixels

    def __call__(self, source, rng=None):
        if isinstance(source, Image.Image):
            return self._finish(source)
        encoded = isinstance(source, (bytes, bytearray, memoryview))
        # A file is read whole first: Pillow reads a chunk at the length the file declares, and from
        # a file object a declared 2 GB is allocated before the read finds 300 bytes (from memory,
        # a read stops at what there is). An image file is small next to its decoded pixels.
        data = source if encoded else Path(source).read_bytes()
        where = "" if encoded else f"{source}: "
        try:
            opened = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # Pillow's own limit, met before kindling's
            raise ImageTooLarge(f"{where}{e} Raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) if you trust "
                                f"the file") from e
        except Image.UnidentifiedImageError as e:
            kind = next((f for magic, f in SIGNATURES.items() if bytes(data[:len(magic)]) == magic), None)
            if kind:  # its format's signature, then something Pillow refuses (a bad header CRC, ...)
                raise ImageError(f"{where}a corrupt {kind} file, not an image that Pillow can read ({_what(data)})") from e
            raise ImageError(f"{where}not an image that Pillow can read ({_what(data)})") from e
        except MemoryError:
            raise
        except Exception as e:  # a header Pillow chokes on: OSError, SyntaxError, struct.error, ...
            raise ImageError(f"{where}a broken image header ({type(e).__name__}: {e})") from e
        # closed at once: a multi-frame file (GIF, TIFF) would otherwise hold its handle until GC
        with opened as img:
            self._check_size(img, where)
            try:
                if self.at_least and img.format == "JPEG":
                    img.draft(img.mode, (self.at_least, self.at_least))  # square: either side may end up shorter
                img.load()
                return self._finish(img)
            except MemoryError:
                raise
            except Exception as e:  # whatever a decoder raises on hostile bytes
                raise ImageError(f"{where}{img.format or 'image'} data cannot be decoded ({e})") from e

    def _check_size(self, img, where: str = "") -> None:
        limit = self.max_pixels if self.max_pixels is not None else max_pixels()
        w, h = img.size
        if w * h > limit:
            setting = "max_pixels" if self.max_pixels is not None else (
                "KINDLING_MAX_PIXELS" if os.environ.get("KINDLING_MAX_PIXELS") else "the default limit")
            raise ImageTooLarge(f"{where}image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                                f"({setting})")

    def _finish(self, img):
        return _eight_bit(_upright(img)).convert("L" if self.gray else "RGB")


def _what(data) -> str:
    head = bytes(data[:8])
    return f"{len(data):,} bytes starting {head!r}" if len(data) else "no bytes"


class Resize(Step):
    """Shorter side to ``size`` (keeping the aspect ratio), or exactly (h, w) when given a pair."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img, rng=None):
        if isinstance(self.size, (tuple, list)):
            h, w = self.size
        else:
            scale = self.size / min(img.size)
            w, h = max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))
        return img if (w, h) == img.size else img.resize((w, h), Image.BILINEAR)

    def smallest(self) -> tuple[int, int]:
        """The least (h, w) this gives any image."""
        return tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size, self.size)

    def describe(self):
        return {"resize": self.size if not isinstance(self.size, (tuple, list)) else None}


class CenterCrop(Step):
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img, rng=None):
        h, w = self.size
        left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
        if left < 0 or top < 0:
            img = img.resize((max(w, img.size[0]), max(h, img.size[1])), Image.BILINEAR)
            left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
        return img.crop((left, top, left + w, top + h))

    def describe(self):
        return {"input_size": list(self.size)}


class RandomCrop(CenterCrop):
    random = True

    def __call__(self, img, rng=None):
        h, w = self.size
        if img.size[0] < w or img.size[1] < h:
            img = img.resize((max(w, img.size[0]), max(h, img.size[1])), Image.BILINEAR)
        left = int(rng.integers(0, img.size[0] - w + 1))
        top = int(rng.integers(0, img.size[1] - h + 1))
        return img.crop((left, top, left + w, top + h))


class RandomHorizontalFlip(Step):
    random = True

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img, rng=None):
        return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < self.p else img


class ChannelOrder(Step):
    """PIL image -> float32 array (C, H, W) with values 0..255, channels as the model expects."""
    ORDERS = ("rgb", "bgr", "gray")

    def __init__(self, order: str = "rgb"):
        if order not in self.ORDERS:
            raise ValueError(f"ChannelOrder: order must be one of {self.ORDERS}, got {order!r}")
        self.order = order

    def __call__(self, img, rng=None):
        img = img.convert("L" if self.order == "gray" else "RGB")
        a = np.asarray(img, np.float32)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return a[::-1].copy() if self.order == "bgr" else a

    def describe(self):
        return {"channel_order": self.order}


class Normalize(Step):
    """(x - mean) * scale / std, per channel (Caffe's mean and scale, torchvision's std)."""

    def __init__(self, mean=(0.0,), std=(1.0,), scale: float = 1.0):
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        self.scale = float(scale)

    def __call__(self, a, rng=None):
        return ((a - self.mean) * np.float32(self.scale) / self.std).astype(np.float32)

    def describe(self):
        return {"mean": self.mean.ravel().tolist(), "std": self.std.ravel().tolist(), "scale": self.scale}


def _check_crops(steps):
    """A crop larger than the resize before it would upsample every image: a settings mistake,
    said at once rather than found in the accuracy."""
    resize = None
    for s in steps:
        resize = s if isinstance(s, Resize) else resize
        if isinstance(s, CenterCrop) and resize and any(c > r for c, r in zip(s.size, resize.smallest())):
            raise ValueError(f"{type(s).__name__} {s.size[0]}x{s.size[1]} is larger than what Resize({resize.size}) "
                             f"before it gives: every image would be upsampled; resize to at least {max(s.size)}")


def _decode_for_resize(steps):
    """A Decode right before a Resize is told the size that Resize needs (a fresh Decode, so a
    step shared with another pipeline is left as it was)."""
    for i, (s, nxt) in enumerate(zip(steps, steps[1:])):
        if type(s) is Decode and isinstance(nxt, Resize):
            steps[i] = Decode(s.gray, at_least=max(nxt.smallest()), max_pixels=s.max_pixels)


class Pipeline(Step):
    def __init__(self, *steps: Step):
        self.steps: list[Step] = []
        for s in steps:
            self.steps += s.steps if isinstance(s, Pipeline) else [s]
        _check_crops(self.steps)
        _decode_for_resize(self.steps)

    def __call__(self, item, rng=None):
        for s in self.steps:
            item = s(item, rng)
        return item

    def __rshift__(self, other: Step) -> "Pipeline":
        return Pipeline(self, other)

    @property
    def random(self) -> bool:
        return any(s.random for s in self.steps)

    def to_metadata(self) -> dict:
        """The preprocessing to record in a snapshot (deterministic steps only)."""
        out = {}
        for s in self.steps:
            if not s.random:
                out.update({k: v for k, v in s.describe().items() if v is not None})
        return out

    def evaluation(self) -> "Pipeline":
        """The same preprocessing without the random steps (a RandomCrop becomes a CenterCrop)."""
        steps = [CenterCrop(s.size) if isinstance(s, RandomCrop) else s for s in self.steps
                 if not isinstance(s, RandomHorizontalFlip)]
        return Pipeline(*steps)

    @classmethod
    def from_metadata(cls, pre: dict, train: bool = False, max_pixels: int | None = None) -> "Pipeline":
        """Decode -> Resize -> crop -> [flip] -> channel order -> normalize, from a snapshot's
        preprocessing record; ``train`` makes the crop random and adds the flip; ``max_pixels``
        overrides the process-wide decoding limit."""
        order = pre.get("channel_order") or "rgb"
        steps: list[Step] = [Decode(gray=order == "gray", max_pixels=max_pixels)]
        size = pre.get("input_size")
        if pre.get("resize"):
            steps.append(Resize(int(pre["resize"])))
        elif size:
            steps.append(Resize(tuple(size)))
        if size:
            steps.append(RandomCrop(tuple(size)) if train else CenterCrop(tuple(size)))
        if train:
            steps.append(RandomHorizontalFlip())
        steps.append(ChannelOrder(order))
        steps.append(Normalize(pre.get("mean") or [0.0], pre.get("std") or [1.0],
                               pre.get("scale") if pre.get("scale") is not None else 1.0))
        return cls(*steps)
