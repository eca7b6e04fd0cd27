"""read_mean: a Caffe mean image, mean.binaryproto (shape or legacy dims, float or double data) or
.npy (the strict header reader). The first byte picks the suffix."""
from __future__ import annotations

import io

import numpy as np

from kindling.converters.caffe import read_mean
from kindling.protos import caffe_pb2

from . import selected

SUFFIXES = [".binaryproto", ".npy"]
TOKENS = [b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 4), }", b"'shape': (", b"'descr': '",
          b"|O", b"V4", b"<f8", b"True", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x3a\x08\x08\x03",
          b"(10000000000,)", b"((((", b"\x08\x03\x10\x04"]
NESTING = [b"(", b"["]


def _blob(shape=None, legacy=None, double=False) -> bytes:
    b = caffe_pb2.BlobProto()
    values = np.random.default_rng(0).uniform(0, 255, int(np.prod(shape or legacy)))
    if shape:
        b.shape.dim.extend(shape)
    else:
        b.num, b.channels, b.height, b.width = legacy
    (b.double_data if double else b.data).extend(values.tolist())
    return b.SerializeToString()


def _npy(a, version=None) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, a, version=version)
    return f.getvalue()


def seeds() -> list[bytes]:
    a = np.random.default_rng(0).uniform(0, 255, (3, 4, 4))
    return [b"\x00" + _blob(shape=[1, 3, 4, 4]), b"\x00" + _blob(legacy=[1, 3, 4, 4]),
            b"\x00" + _blob(shape=[3, 4, 4], double=True),
            b"\x01" + _npy(a.astype(np.float32)), b"\x01" + _npy(a[None]), b"\x01" + _npy(a.mean((1, 2))),
            b"\x01" + _npy(np.asfortranarray(a.astype(">f4"))), b"\x01" + _npy(a.astype(np.uint8), (2, 0))]


def target(data: bytes, tmp) -> None:
    suffix, body = selected(data, SUFFIXES)
    path = tmp / f"mean{suffix}"
    path.write_bytes(body)
    read_mean(path)
