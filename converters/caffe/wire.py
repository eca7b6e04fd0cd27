"""Reads a .caffemodel layer by layer, straight from the protobuf wire format.

A VGG16 caffemodel is 550 MB, nearly all of it in a few packed float arrays. Parsing it whole
with protobuf holds the file's bytes, the parsed message and then the numpy copies at once (3x
the file), which is how converting VGG16 ran BigDL's driver out of heap. Here each layer's bytes
are read into one buffer and its blob data become numpy arrays *over that buffer*, with no copy;
only the layer name, type and blobs are read (the structure comes from the prototxt).
"""
from __future__ import annotations

import math
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import numpy as np
from google.protobuf.message import DecodeError

from kindling.protos import caffe_pb2
from kindling.runtime import memory

# wire types
VARINT, I64, LEN, I32 = 0, 1, 2, 5
# NetParameter: layer (current) and layers (V1); LayerParameter and V1LayerParameter field numbers
NET_LAYER, NET_V1_LAYERS = 100, 2
LAYER_FIELDS = {NET_LAYER: {"name": 1, "type": 2, "blobs": 7}, NET_V1_LAYERS: {"name": 4, "type": 5, "blobs": 6}}
BLOB_SHAPE, BLOB_DATA, BLOB_DOUBLE_DATA = 7, 5, 8
BLOB_RAW_TYPE, BLOB_RAW_DATA = 10, 12  # NVIDIA Caffe's raw storage (OpenCV's fp16 caffemodels)
RAW_TYPES = {0: "<f8", 1: "<f4", 2: "<f2"}  # DOUBLE, FLOAT, FLOAT16
BLOB_LEGACY = {1: 0, 2: 1, 3: 2, 4: 3}  # num, channels, height, width


# Bytes read (and handed to the hasher) at a time within one layer.
_CHUNK = 16 << 20


class WireError(ValueError):
    pass


@dataclass
class RawLayer:
    name: str = ""
    type: str = ""
    blobs: list = field(default_factory=list)
    v1: bool = False


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise WireError("malformed varint")


def fields(buf, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for each field in buf[start:end]; LEN values are
    (offset, length) pairs into buf, not copies."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == I64:
            value, pos = pos, pos + 8
        elif wire == I32:
            value, pos = pos, pos + 4
        elif wire == LEN:
            n, pos = _varint(buf, pos)
            value, pos = (pos, n), pos + n
        else:
            raise WireError(f"unsupported wire type {wire} for field {number}")
        if pos > end:
            raise WireError("truncated field")
        yield number, wire, value


def _dims(buf, off: int, n: int) -> list[int]:
    try:
        return list(caffe_pb2.BlobShape.FromString(bytes(buf[off:off + n])).dim)
    except DecodeError as e:
        raise WireError(f"corrupt blob shape ({e})") from e


WIDTHS = {2: "half-precision", 4: "float", 8: "double"}


def _values(buf, off: int, n: int, dtype: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if n % size:
        raise WireError(f"{n} bytes of {WIDTHS[size]} data is not a whole number of values")
    return np.frombuffer(buf, dtype, n // size, off)


def _blob(buf, start: int, end: int) -> np.ndarray:
    shape, legacy, data, raw, raw_type = None, [0, 0, 0, 0], None, None, 1
    unpacked = array("f")  # repeated floats written one field each (very old writers): 4 bytes per value here
    for number, wire, value in fields(buf, start, end):
        if number == BLOB_SHAPE and wire == LEN:
            shape = _dims(buf, *value)
        elif number in BLOB_LEGACY and wire == VARINT:
            legacy[BLOB_LEGACY[number]] = value
        elif number == BLOB_DATA and wire == LEN:  # packed floats: an array over the buffer
            data = _values(buf, *value, "<f4")
        elif number == BLOB_DATA and wire == I32:
            unpacked.frombytes(bytes(buf[value:value + 4]))
        elif number == BLOB_DOUBLE_DATA and wire == LEN:
            data = _values(buf, *value, "<f8").astype(np.float32)
        elif number == BLOB_RAW_TYPE and wire == VARINT:
            raw_type = value
        elif number == BLOB_RAW_DATA and wire == LEN:
            raw = value
    if raw is not None and data is None:
        if raw_type not in RAW_TYPES:
            raise WireError(f"raw blob data of type {raw_type} (integers): only DOUBLE, FLOAT and FLOAT16 are weights")
        data = _values(buf, *raw, RAW_TYPES[raw_type])
        data = data if data.dtype == np.float32 else data.astype(np.float32)
    if data is None:
        data = np.frombuffer(unpacked, "<f4") if unpacked else np.zeros(0, np.float32)
    if shape is None:
        shape = legacy if any(legacy) else [data.size]
    # Python ints: a product of 2^32 x 2^32 must not wrap around to 0 as an int64 would
    if any(d < 0 for d in shape) or math.prod(shape) != data.size:
        raise WireError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _layer(buf, kind: int) -> RawLayer:
    spec = LAYER_FIELDS[kind]
    layer = RawLayer(v1=kind == NET_V1_LAYERS)
    blobs = []
    for number, wire, value in fields(buf):
        if number == spec["name"] and wire == LEN:
            off, n = value
            layer.name = bytes(buf[off:off + n]).decode("utf-8", "replace")
        elif number == spec["type"]:
            if wire == LEN:
                off, n = value
                layer.type = bytes(buf[off:off + n]).decode("utf-8", "replace")
            else:
                layer.type = caffe_pb2.V1LayerParameter.LayerType.Name(value) \
                    if value in caffe_pb2.V1LayerParameter.LayerType.values() else str(value)
        elif number == spec["blobs"] and wire == LEN:
            blobs.append(value)
    for i, (off, n) in enumerate(blobs):  # read once the name is known (it may come after them)
        try:
            layer.blobs.append(_blob(buf, off, off + n))
        except WireError as e:
            raise WireError(f"layer {layer.name!r}: blob {i}: {e}") from e
    return layer


def read_layers(f: BinaryIO, size: int, hasher=None) -> Iterator[RawLayer]:
    """Yields the layers of a binary NetParameter one at a time, reading only that layer's bytes.
    Every byte read also goes to ``hasher`` (the file's SHA-256 comes for free, no second pass)."""
    if hasher is None:
        yield from _read_layers(f, size, lambda b: None)
        return
    # Hashing runs at about the speed of a page-cache read: a thread of its own (hashlib lets go
    # of the GIL) overlaps it with reading the next layer. One worker keeps the bytes in order.
    with ThreadPoolExecutor(1, thread_name_prefix="kindling-sha256") as hashing:
        yield from _read_layers(f, size, lambda b: hashing.submit(hasher.update, b))


def _read_layers(f: BinaryIO, size: int, update) -> Iterator[RawLayer]:
    pos = 0
    while pos < size:
        head = f.read(min(10, size - pos))
        key, used = _varint(head, 0)
        number, wire = key >> 3, key & 7
        if wire == LEN:
            n, used2 = _varint(head, used)
            update(head[:used2])
            f.seek(pos + used2)
            if pos + used2 + n > size:
                raise WireError(f"truncated: a field of {n} bytes at offset {pos} runs past the end of the file")
            memory.check(n, f"the layer at offset {pos} ({n:,} bytes)")
            # np.empty, not bytearray: no zero-fill pass over hundreds of MB before the read
            buf = memoryview(np.empty(n, np.uint8))
            for start in range(0, n, _CHUNK):  # hashed chunk by chunk: VGG16's fc6 is 400 MB of one layer
                piece = buf[start:start + _CHUNK]
                if f.readinto(piece) != len(piece):
                    raise WireError("truncated layer")
                update(piece)
            if number in LAYER_FIELDS:
                yield _layer(buf, number)
            pos += used2 + n
        elif wire in (VARINT, I64, I32):
            end = _varint(head, used)[1] if wire == VARINT else used + (8 if wire == I64 else 4)
            update(head[:end])
            pos += end
        else:
            raise WireError(f"not a Caffe NetParameter (wire type {wire} at offset {pos})")
        f.seek(pos)
