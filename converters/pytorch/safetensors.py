""".safetensors files, validated as strictly as the reference implementation (huggingface/safetensors).

Layout: a u64 little-endian N, N bytes of JSON (``{"w": {"dtype": "F16", "shape": [..],
"data_offsets": [B, E]}}``, an optional string-to-string ``__metadata__``), then the raw data,
little-endian and C-ordered. The header must be at most 100 MB; sorted by offset, the tensors must
tile the data from 0 with no hole or overlap, each exactly shape x itemsize bytes long, and the last
must end at the end of the file. Extra fields in a tensor's entry are ignored, as the reference
does; a key given twice is refused (the reference keeps the last one silently).
"""
from __future__ import annotations

import json
import math
import struct

from .dtypes import DTYPES, SAFETENSORS
from .errors import TorchError
from .tensor import OpenFile, Storage, Tensor

MAX_HEADER = 100_000_000


def looks_like(head: bytes) -> bool:
    """The first bytes of a safetensors file: a plausible header length, then JSON."""
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n <= MAX_HEADER and head[8:].lstrip()[:1] == b"{"


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice")
        out[k] = v
    return out


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def _index(value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _entry(name: str, info) -> tuple:
    """(dtype, shape, (begin, end)) of one tensor's header entry."""
    if not isinstance(info, dict):
        raise ValueError(f"tensor {name!r}: expected an object with dtype, shape and data_offsets")
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in info]
    if missing:
        raise ValueError(f"tensor {name!r}: missing field {missing[0]!r}")
    code = info["dtype"]
    if code not in SAFETENSORS:
        raise ValueError(f"tensor {name!r}: unknown or unsupported dtype {code!r} (known: {', '.join(SAFETENSORS)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"tensor {name!r}: shape must be a list and data_offsets a list of two integers")
    shape = tuple(_index(d, f"tensor {name!r}: a dimension") for d in shape)
    begin, end = (_index(o, f"tensor {name!r}: a data offset") for o in offsets)
    return DTYPES[SAFETENSORS[code]], shape, (begin, end)


def read_header(file: OpenFile) -> tuple[dict, dict[str, str]]:
    """({key: (dtype, shape, (begin, end))} in file order, the __metadata__ dict)."""
    path = file.path
    if file.size < 8:
        raise TorchError(f"{path}: not a safetensors file: {file.size} bytes, shorter than the 8-byte header length")
    head = bytearray(8)
    file.read_at(0, memoryview(head))
    n = struct.unpack("<Q", head)[0]
    if n > MAX_HEADER:
        raise TorchError(f"{path}: safetensors header of {n} bytes is larger than the limit of {MAX_HEADER}")
    if 8 + n > file.size:
        raise TorchError(f"{path}: safetensors header of {n} bytes runs past the end of the {file.size}-byte file "
                         f"(truncated?)")
    raw = bytearray(n)
    file.read_at(8, memoryview(raw))
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ must map strings to strings")
        entries = {name: _entry(name, info) for name, info in header.items()}
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TorchError(f"{path}: invalid safetensors header: {e}") from None
    return _validated(entries, path, file.size - 8 - n), meta


def _validated(entries: dict, path, data_size: int) -> dict:
    ordered = sorted(entries.items(), key=lambda kv: kv[1][2])
    end = 0
    for name, (dtype, shape, (b, e)) in ordered:
        if b != end or e < b:
            raise TorchError(f"{path}: tensor {name!r}: data_offsets [{b}, {e}] leave a hole or overlap (the "
                             f"previous tensor ends at {end})")
        if e - b != math.prod(shape) * dtype.itemsize:
            raise TorchError(f"{path}: tensor {name!r}: {e - b} bytes for a {dtype.name} tensor of shape "
                             f"{list(shape)}, which needs {math.prod(shape) * dtype.itemsize}")
        end = e
    if end != data_size:
        raise TorchError(f"{path}: the tensors cover {end} bytes of data but the file holds {data_size} after the "
                         f"header (truncated or padded)")
    return dict(ordered)


def read(file: OpenFile) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor (unread) by key, in file order, and the file's __metadata__."""
    entries, meta = read_header(file)
    start = file.size - sum(e - b for _, _, (b, e) in entries.values())
    tensors = {}
    for name, (dtype, shape, (b, e)) in entries.items():
        stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        tensors[name] = Tensor(dtype, shape, stride, 0, Storage(name, e - b, file, start + b), key=name)
    return tensors, meta
