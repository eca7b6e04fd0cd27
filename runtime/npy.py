"""A strict reader of numpy's .npy files, for arrays that come from users (mean images, inputs).

numpy's own reader evaluates the header's text (a Python dict literal), so a damaged header
raises SyntaxError or TokenError, and it allocates the shape the header claims before reading a
byte (a header saying (10^10,) asks for 37 GB). Here the header is matched field by field, only
plain numeric dtypes are taken (no objects, no structured or void types: nothing is unpickled),
and the shape is compared with the file's size and with free memory before anything is read.

The format (numpy/lib/format.py): b"\\x93NUMPY", major and minor version bytes, the header length
(u16 LE for version 1, u32 LE for 2 and 3), then the header
``{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`` padded with spaces and a newline,
then the raw data in C (or Fortran) order.
"""
from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from . import memory
from .errors import DataError, TooLarge

MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000  # numpy's own bound on what it will parse
MAX_DIMS = 32
_LENGTH = {1: 2, 2: 4, 3: 4}  # version -> bytes of the header length
_DESCR = re.compile(r"[<>|=]?(f[248]|[iu][1248]|b1|\?)")
_ENTRY = re.compile(r"\s*'(\w{1,20})'\s*:\s*('[^'\\]{0,8}'|True|False|\((?:\s*\d{1,20}\s*,)*\s*(?:\d{1,20}\s*)?\))"
                    r"\s*(,|(?=\s*$))")


def _header(text: str, path) -> tuple[np.dtype, bool, tuple[int, ...]]:
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise DataError(f"{path}: not a .npy header (expected a {{...}} dictionary)")
    body, fields, pos = body[1:-1], {}, 0
    while body[pos:].strip():
        m = _ENTRY.match(body, pos)
        if m is None or m.group(1) in fields:
            raise DataError(f"{path}: damaged .npy header: {body.strip()[:120]!r}")
        fields[m.group(1)] = m.group(2)
        pos = m.end()
    if set(fields) != {"descr", "fortran_order", "shape"}:
        raise DataError(f"{path}: a .npy header holds descr, fortran_order and shape; this one has {sorted(fields)}")
    descr = fields["descr"].strip("'")
    if not _DESCR.fullmatch(descr):
        raise DataError(f"{path}: dtype {descr!r} is not a plain number type (objects, strings and structured "
                        f"types are not read)")
    if fields["fortran_order"] not in ("True", "False") or not fields["shape"].startswith("("):
        raise DataError(f"{path}: damaged .npy header: {body.strip()[:120]!r}")
    shape = tuple(int(d) for d in re.findall(r"\d+", fields["shape"]))
    if len(shape) > MAX_DIMS:
        raise DataError(f"{path}: {len(shape)} dimensions (at most {MAX_DIMS})")
    return np.dtype(descr), fields["fortran_order"] == "True", shape


def _read(f, size: int, path) -> np.ndarray:
    """The array in ``f`` (a .npy of ``size`` bytes, at its start); errors name ``path``."""
    head = f.read(len(MAGIC) + 2)
    if len(head) < len(MAGIC) + 2 or not head.startswith(MAGIC):
        raise DataError(f"{path}: not a .npy file ({size} bytes, no \\x93NUMPY signature)")
    version = head[len(MAGIC)]
    if version not in _LENGTH:
        raise DataError(f"{path}: .npy format version {version}.{head[-1]} is not one numpy writes")
    n = int.from_bytes(f.read(_LENGTH[version]), "little")
    if n > MAX_HEADER:
        raise DataError(f"{path}: a .npy header of {n:,} bytes (numpy's bound is {MAX_HEADER:,})")
    raw = f.read(n)
    if len(raw) != n:
        raise DataError(f"{path}: truncated in the .npy header")
    try:
        text = raw.decode("utf-8" if version == 3 else "latin1")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: damaged .npy header ({e})") from e
    dtype, fortran, shape = _header(text, path)
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no wrap
    data = size - (len(MAGIC) + 2 + _LENGTH[version] + n)
    if data != nbytes:
        raise DataError(f"{path}: the header says {shape} of {dtype} ({nbytes:,} bytes) but the file holds "
                        f"{data:,} bytes of data")
    try:
        memory.check(nbytes, f"the array {shape} of {dtype}")
    except TooLarge as e:
        raise DataError(f"{path}: {e}") from e
    a = np.empty(math.prod(shape), dtype)
    if f.readinto(memoryview(a).cast("B")) != nbytes:
        raise DataError(f"{path}: truncated in the array data")
    return a.reshape(shape, order="F" if fortran else "C")


def read_npy(path) -> np.ndarray:
    """The array in a .npy file; a DataError naming the file for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read(f, os.fstat(f.fileno()).st_size, path)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e


def read_npz(path) -> dict[str, np.ndarray]:
    """The arrays of an .npz (np.savez's zip of .npy files) by name, each read as strictly."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as f:  # file_size is checked against the header, and zipfile stops there
                    out[name] = _read(f, info.file_size, f"{path}[{name}]")
            return out
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable .npz: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a readable .npz: a member's name is not text") from e
