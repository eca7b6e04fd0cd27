"""A Caffe mean file reduced to per-channel means.

BVLC's reference models and many zoo releases ship the training set's mean image as
``mean.binaryproto`` (one BlobProto, e.g. 1x3x256x256 for ImageNet, channels in the net's BGR
order), or as the .npy that pycaffe's examples convert it to. kindling's preprocessing subtracts a
mean per channel after resizing and cropping, as pycaffe's classification example does with
``mean.mean(1).mean(1)``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from kindling.protos import caffe_pb2
from kindling.runtime.errors import DataError
from kindling.runtime.npy import read_npy

from .errors import CaffeError


# A mean image is a few MB at most (ImageNet's: 3 x 256 x 256 floats, 786 KB).
MAX_MEAN_BYTES = 256 << 20


def _blob_array(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size > MAX_MEAN_BYTES:
        raise CaffeError(f"{path}: {size:,} bytes is too large for a mean image (at most {MAX_MEAN_BYTES >> 20} MB)")
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
    except DecodeError as e:
        raise CaffeError(f"{path}: not a Caffe mean file (a binary BlobProto): {e}") from e
    shape = list(blob.shape.dim) or [d for d in (blob.num, blob.channels, blob.height, blob.width)]
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, np.float64)
    if not values.size or any(d < 0 for d in shape) or math.prod(shape) != values.size:  # Python ints: no wrap
        raise CaffeError(f"{path}: a mean file holds {values.size} values for the shape {shape}")
    return values.reshape(shape)


def read_mean(path) -> list[float]:
    """Per-channel means of a mean image in a .binaryproto or .npy file: (C, H, W), (1, C, H, W)
    or already (C,)."""
    path = Path(path)
    try:
        a = read_npy(path) if path.suffix == ".npy" else _blob_array(path)
    except DataError as e:
        raise CaffeError(str(e)) from e
    except OSError as e:
        raise CaffeError(f"{path}: cannot read the mean file: {e.strerror or e}") from e
    a = np.asarray(a, np.float64)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (1, 3) or not a.size:
        raise CaffeError(f"{path}: a mean file holds one image (C, H, W) or per-channel values, got shape "
                         f"{list(a.shape)}")
    means = a if a.ndim == 1 else a.reshape(a.shape[0], -1).mean(axis=1)
    if not np.isfinite(means).all():
        raise CaffeError(f"{path}: the mean image holds values that are not finite numbers")
    return [float(v) for v in means]
