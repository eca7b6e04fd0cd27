"""Tensors on the wire (kindling.serving.v1.Tensor) to numpy and back: little-endian float32,
C order, the byte count checked against the shape before anything is allocated."""
from __future__ import annotations

import numpy as np

from kindling.protos import serving_pb2 as pb
from kindling.runtime.predict import InputError

MAX_DIMS = 8


def to_numpy(t: pb.Tensor, what: str = "tensor") -> np.ndarray:
    """A read-only float32 view of the tensor's bytes; InputError saying what is wrong."""
    if t.dtype != pb.FLOAT32:
        raise InputError(f"{what}: dtype {pb.DataType.Name(t.dtype) if t.dtype in pb.DataType.values() else t.dtype} "
                         f"is not accepted: send FLOAT32")
    shape = tuple(int(d) for d in t.shape)
    if not shape or len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InputError(f"{what}: shape {list(shape)} is not a shape of 1 to {MAX_DIMS} dimensions >= 0")
    count = 1
    for d in shape:
        count *= d
    if count * 4 != len(t.data):
        raise InputError(f"{what}: shape {list(shape)} holds {count:,} float32 values = {count * 4:,} bytes, "
                         f"but data has {len(t.data):,} bytes")
    return np.frombuffer(t.data, "<f4").reshape(shape)


def to_proto(a: np.ndarray, out: pb.Tensor | None = None) -> pb.Tensor:
    t = out if out is not None else pb.Tensor()
    a = np.ascontiguousarray(a, "<f4")
    t.shape[:] = a.shape
    t.dtype = pb.FLOAT32
    t.data = a.tobytes()
    return t
