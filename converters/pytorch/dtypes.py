"""Element types as PyTorch and safetensors name them, and how each becomes numpy.

One table: torch's dtype name -> item size and the numpy type the bytes are read as. bfloat16 has
no numpy type: its bytes are read as uint16 and widened to float32 by a shift (bfloat16 is the top
half of a float32). Types kindling cannot read (float8, complex, quantized) are listed so that a
file holding them still opens; reading such a tensor is an error naming it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str            # torch's name: "float32", "bfloat16"
    itemsize: int
    code: str | None     # numpy type code of the stored bytes, without byte order; None: not readable
    floating: bool = False

    def numpy(self, byteorder: str = "<") -> np.dtype:
        if self.code is None:
            raise ValueError(f"dtype {self.name} is not supported (kindling reads float32, float16, bfloat16, "
                             f"float64, integer and bool tensors)")
        return np.dtype(self.code).newbyteorder(byteorder)


DTYPES = {d.name: d for d in [
    DType("float32", 4, "f4", True), DType("float16", 2, "f2", True), DType("bfloat16", 2, "u2", True),
    DType("float64", 8, "f8", True),
    DType("int64", 8, "i8"), DType("int32", 4, "i4"), DType("int16", 2, "i2"), DType("int8", 1, "i1"),
    DType("uint64", 8, "u8"), DType("uint32", 4, "u4"), DType("uint16", 2, "u2"), DType("uint8", 1, "u1"),
    DType("bool", 1, "?"),
    DType("complex64", 8, None), DType("complex128", 16, None), DType("complex32", 4, None),
    DType("float8_e4m3fn", 1, None), DType("float8_e5m2", 1, None), DType("float8_e4m3fnuz", 1, None),
    DType("float8_e5m2fnuz", 1, None), DType("float8_e8m0fnu", 1, None),
    DType("qint8", 1, None), DType("quint8", 1, None), DType("qint32", 4, None), DType("quint4x2", 1, None),
    DType("quint2x4", 1, None),
]}

# torch.save's typed storage classes (torch.FloatStorage, ...) -> dtype
TORCH_STORAGES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16", "DoubleStorage": "float64",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}

# safetensors' dtype codes -> dtype (the byte-sized ones; sub-byte F4/F6 are not read)
SAFETENSORS = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
}


def widen(raw: np.ndarray, dtype: DType, out: np.ndarray) -> np.ndarray:
    """Writes the stored values ``raw`` (as read, in ``dtype``) into the float32 array ``out``."""
    if dtype.name == "bfloat16":
        np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, raw, casting="unsafe")
    return out
