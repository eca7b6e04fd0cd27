"""TensorProto values as numpy arrays, and constants whose bytes stay in the file until a
translator reads them (``StoredTensor``), straight into the layout the module wants.

TensorFlow keeps a tensor's values either as raw little-endian bytes (``tensor_content``) or in
the typed repeated field of its dtype, where a field shorter than the shape repeats its last value
(``tf.fill`` and zeros are written as one value). float16 and bfloat16 values are bit patterns in
``half_val``; bfloat16 is widened to float32 (numpy has no bfloat16).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kindling.protos import tensorflow_pb2 as tfpb

BFLOAT16 = "bfloat16"  # stored as uint16 bit patterns, read as float32

# DataType -> (numpy dtype in the file, the typed field holding its values)
DTYPES: dict[int, tuple] = {
    tfpb.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    tfpb.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    tfpb.DT_HALF: (np.dtype("<f2"), "half_val"),
    tfpb.DT_BFLOAT16: (BFLOAT16, "half_val"),
    tfpb.DT_INT32: (np.dtype("<i4"), "int_val"),
    tfpb.DT_INT16: (np.dtype("<i2"), "int_val"),
    tfpb.DT_INT8: (np.dtype("i1"), "int_val"),
    tfpb.DT_UINT8: (np.dtype("u1"), "int_val"),
    tfpb.DT_UINT16: (np.dtype("<u2"), "int_val"),
    tfpb.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    tfpb.DT_INT64: (np.dtype("<i8"), "int64_val"),
    tfpb.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    tfpb.DT_BOOL: (np.dtype("?"), "bool_val"),
}

# Bytes read at a time when a stored tensor is copied into a module's layout, and rows at most:
# a transposing copy of 64 rows at a time stays in cache (a 4096 x 4096 transpose runs 6x faster
# than numpy's copy of the whole transposed view).
_CHUNK = 4 << 20
_BAND = 64
# Bytes of a convolution filter moved at a time (a band of input channels): 4x faster than one
# copy of the whole transposed view, and no second copy of the filter in memory.
_FILTER_BAND = 1 << 20


def dtype_name(dtype: int) -> str:
    return tfpb.DataType.Name(dtype) if dtype in tfpb.DataType.values() else f"DataType {dtype}"


def _file_dtype(dtype: int, where: str) -> np.dtype:
    base = dtype - 100 if dtype > 100 else dtype  # _REF types hold the same values
    if base not in DTYPES:
        raise ValueError(f"{where}: tensors of {dtype_name(dtype)} are not supported")
    d = DTYPES[base][0]
    return np.dtype("<u2") if d == BFLOAT16 else d


def _widen(raw: np.ndarray, dtype: int) -> np.ndarray:
    """bfloat16 bit patterns -> float32 (the high half of a float32)."""
    if DTYPES.get(dtype - 100 if dtype > 100 else dtype, (None,))[0] != BFLOAT16:
        return raw
    return (raw.astype(np.uint32) << 16).view(np.float32)


def shape_of(proto: tfpb.TensorShapeProto) -> list[int] | None:
    """Dims (-1 where unknown), or None for an unknown rank."""
    return None if proto.unknown_rank else [int(d.size) for d in proto.dim]


@dataclass
class StoredTensor:
    """A constant's raw bytes at ``offset`` in ``path``, read only when asked, so a model's weights
    are in memory once: in the modules, not also as the file's copy."""
    path: Path
    offset: int
    nbytes: int
    proto_dtype: int
    shape: tuple

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if DTYPES[self.proto_dtype][0] == BFLOAT16 else _file_dtype(self.proto_dtype, "")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def read(self) -> np.ndarray:
        return self.read_transposed(tuple(range(self.ndim)), np.dtype(self.dtype))

    def __array__(self, dtype=None, copy=None):
        a = self.read()
        return a if dtype is None else a.astype(dtype)

    def read_transposed(self, axes, dtype=np.float32, rows=None) -> np.ndarray:
        """The tensor transposed by ``axes`` as a contiguous array of ``dtype``, filled a band of
        leading-axis rows at a time (never the whole file copy at once). ``rows`` reorders the
        leading axis: source row r lands at rows[r]."""
        axes = tuple(axes)
        raw_dtype = _file_dtype(self.proto_dtype, str(self.path))
        if rows is None and self.ndim == 4 and axes in FILTER_LAYOUTS:
            with open(self.path, "rb") as f:
                return filter_transposed(self.shape, axes, dtype, lambda i0, i1: self._channels(f, raw_dtype, i0, i1))
        out = np.empty([self.shape[a] for a in axes], dtype)
        view = out.transpose(np.argsort(axes))  # out, seen in the file's axis order
        if self.size == 0:
            return out
        row_items = int(np.prod(self.shape[1:])) if self.ndim > 1 else 1
        per_chunk = max(1, min(_BAND, _CHUNK // max(1, row_items * raw_dtype.itemsize)))
        leading = self.shape[0] if self.ndim else 1
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for r0 in range(0, leading, per_chunk):
                r1 = min(leading, r0 + per_chunk)
                buf = np.empty((r1 - r0) * row_items, raw_dtype)
                if f.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                    raise ValueError(f"{self.path}: truncated: a tensor at offset {self.offset} runs past the end")
                chunk = _widen(buf, self.proto_dtype).reshape((r1 - r0, *self.shape[1:]) if self.ndim else ())
                if not self.ndim:
                    view[...] = chunk
                elif rows is None:
                    view[r0:r1] = chunk
                else:
                    view[rows[r0:r1]] = chunk
        return out

    def _channels(self, f, raw_dtype, i0: int, i1: int) -> np.ndarray:
        """Input channels i0:i1 of a (kh, kw, in, out) filter, as (kh * kw, i1 - i0, out): one read
        per kernel position."""
        kh, kw, cin, cout = self.shape
        buf = np.empty((kh * kw, i1 - i0, cout), raw_dtype)
        row = cin * cout * raw_dtype.itemsize
        for k in range(kh * kw):
            f.seek(self.offset + k * row + i0 * cout * raw_dtype.itemsize)
            if f.readinto(memoryview(buf[k]).cast("B")) != buf[k].nbytes:
                raise ValueError(f"{self.path}: truncated: a tensor at offset {self.offset} runs past the end")
        return _widen(buf, self.proto_dtype)


# TensorFlow's (kh, kw, in, out) filters -> kindling's (out, in, kh, kw), and a depthwise filter's
# (kh, kw, C, multiplier) -> (C, multiplier, kh, kw)
FILTER_LAYOUTS = {(3, 2, 0, 1), (2, 3, 0, 1)}


def filter_transposed(shape, axes, dtype, channels) -> np.ndarray:
    """A (kh, kw, in, out) filter in kindling's layout, a band of input channels at a time
    (``channels(i0, i1)`` gives them as (kh * kw, i1 - i0, out)): each band is transposed while it
    is in cache, and no whole second copy of the filter is made."""
    kh, kw, cin, cout = shape
    k = kh * kw
    band = max(1, _FILTER_BAND // max(1, k * cout * 4))
    depthwise = tuple(axes) == (2, 3, 0, 1)
    out = np.empty((cin, cout, k) if depthwise else (cout, cin, k), dtype)
    for i0 in range(0, cin, band):
        part = channels(i0, min(cin, i0 + band))
        if depthwise:
            out[i0:i0 + band] = part.transpose(1, 2, 0)
        else:
            out[:, i0:i0 + band] = part.transpose(2, 1, 0)
    return out.reshape((cin, cout, kh, kw) if depthwise else (cout, cin, kh, kw))


def to_numpy(proto: tfpb.TensorProto, where: str, stored: tuple[Path, int, int] | None = None):
    """The tensor's value: a numpy array, or a StoredTensor when its content was left in the file
    (``stored`` = (path, offset, nbytes))."""
    shape = shape_of(proto.tensor_shape)
    if shape is None or any(d < 0 for d in shape):
        raise ValueError(f"{where}: a constant tensor needs a known shape, got {shape}")
    dtype = _file_dtype(proto.dtype, where)
    size = int(np.prod(shape))
    base = proto.dtype - 100 if proto.dtype > 100 else proto.dtype
    if stored is not None:
        path, offset, nbytes = stored
        if nbytes != size * dtype.itemsize:
            raise ValueError(f"{where}: tensor_content holds {nbytes} bytes, but shape {shape} of "
                             f"{dtype_name(proto.dtype)} needs {size * dtype.itemsize}")
        return StoredTensor(path, offset, nbytes, base, tuple(shape))
    if proto.tensor_content:
        if len(proto.tensor_content) != size * dtype.itemsize:
            raise ValueError(f"{where}: tensor_content holds {len(proto.tensor_content)} bytes, but shape {shape} of "
                             f"{dtype_name(proto.dtype)} needs {size * dtype.itemsize}")
        return _widen(np.frombuffer(proto.tensor_content, dtype), proto.dtype).reshape(shape)
    values = getattr(proto, DTYPES[base][1])
    if len(values) > size:
        raise ValueError(f"{where}: {len(values)} values for shape {shape}")
    if base in (tfpb.DT_HALF, tfpb.DT_BFLOAT16):
        arr = _widen(np.array(values, np.int64).astype(np.uint16), proto.dtype)
        arr = arr.view(np.float16) if base == tfpb.DT_HALF else arr
    else:
        arr = np.array(values, dtype)
    if len(arr) < size:  # the last value repeats (a single value fills the tensor)
        arr = np.concatenate([arr, np.full(size - len(arr), arr[-1] if len(arr) else 0, arr.dtype)])
    return arr.reshape(shape)
