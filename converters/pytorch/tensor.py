"""A tensor in a weights file, read only when asked.

A Storage is a run of bytes in the file (a torch.save storage record, or the data range of a
safetensors tensor); a Tensor is a view of one, kept as PyTorch keeps it: dtype, shape, strides
and offset in elements, so non-contiguous views and storages shared by several tensors come out
as torch would give them. Nothing is read until a tensor is: ``read_into`` copies from the file
straight into the model's own float32 array (a 550 MB file never needs a second copy in memory),
``numpy`` makes a new array, ``mapped`` gives a zero-copy read-only view of the file.
"""
from __future__ import annotations

import io
import math
import mmap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .dtypes import DType, widen
from .errors import TorchError


# A view with zero strides (torch's expand) repeats storage elements. Reading one makes it whole, so
# a file cannot make the reader allocate without bound: beyond 64 MB, at most 16 times its storage.
_REPEAT, _REPEAT_FREE = 16, 64 << 20
# Bytes read at a time, small enough to be still in cache for the CRC-32 that follows.
_CHUNK = 4 << 20


class OpenFile:
    """The weights file, open for reads at any offset (and mapped on first use of ``mapped``)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.raw = io.FileIO(self.path, "r")
        except OSError as e:
            raise TorchError(f"{self.path}: cannot read: {e.strerror or e}") from e
        self.size = self.path.stat().st_size
        self._map: mmap.mmap | None = None

    def read_at(self, offset: int, out: memoryview, who: str | None = None) -> None:
        """Fills ``out`` (bytes) from ``offset`` on; ``who`` names what is read in errors."""
        if offset < 0 or offset + len(out) > self.size:
            raise TorchError(f"{who or self.path}: truncated or corrupt: {len(out)} bytes at offset {offset} of a "
                             f"{self.size}-byte file")
        self.raw.seek(offset)
        done = 0
        while done < len(out):
            got = self.raw.readinto(out[done:])
            if not got:
                raise TorchError(f"{who or self.path}: truncated: {len(out) - done} bytes missing at offset "
                                 f"{offset + done}")
            done += got

    def mapping(self) -> mmap.mmap:
        if self._map is None:
            self._map = mmap.mmap(self.raw.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a mapped() array still refers to it; the map closes when that goes
                pass
            self._map = None
        self.raw.close()


@dataclass
class Storage:
    name: str                  # for messages: "data/3" (torch.save), the tensor key (safetensors)
    nbytes: int
    file: OpenFile
    offset: int | None         # where the bytes start in the file; None: read through ``read_packed``
    crc: int | None = None     # zip's CRC-32 of the whole storage, checked whenever all of it is read
    read_packed: Callable[[int, memoryview, str], None] | None = None  # a compressed zip record's reader

    def read(self, start: int, out: memoryview, who: str) -> None:
        """Fills ``out`` with the bytes from ``start`` on; ``who`` names the tensor in errors."""
        checked = self.crc is not None and start == 0 and len(out) == self.nbytes
        if self.offset is None:
            self.read_packed(start, out, who)
            crc = zlib.crc32(out) if checked else None
        else:
            crc = 0
            for lo in range(0, len(out), _CHUNK):  # each piece's CRC while it is still in cache
                piece = out[lo:lo + _CHUNK]
                self.file.read_at(self.offset + start + lo, piece, who)
                crc = zlib.crc32(piece, crc) if checked else crc
        if checked and crc != self.crc:
            raise TorchError(f"{who}: {self.name} is corrupt: its CRC-32 does not match the archive's")


@dataclass
class Tensor:
    dtype: DType
    shape: tuple
    stride: tuple
    offset: int                     # in elements of dtype
    storage: Storage | None = None  # bound once the file's records are known
    byteorder: str = "<"
    key: str = ""                   # its name in the state dict, for messages

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def where(self) -> str:
        path = self.storage.file.path if self.storage else "?"
        return f"{path}: tensor {self.key!r}"

    def span(self) -> tuple[int, int]:
        """The elements [lo, hi) of the storage that the view reads."""
        if self.size == 0:
            return self.offset, self.offset
        return self.offset, self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1

    def contiguous(self) -> bool:
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.stride)):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True

    def check(self) -> None:
        """The view must fit its storage: an error names the file, the key and the numbers."""
        dims = [*self.shape, *self.stride, self.offset]
        if (any(type(d) is not int or d < 0 for d in dims) or len(self.shape) != len(self.stride)):
            raise TorchError(f"{self.where()}: invalid shape {self.shape}, strides {self.stride} or offset "
                             f"{self.offset}")
        hi = self.span()[1]
        if self.size * self.dtype.itemsize > max(_REPEAT * self.storage.nbytes, _REPEAT_FREE):
            raise TorchError(f"{self.where()}: a view of shape {list(self.shape)} repeats its {self.storage.nbytes}-byte "
                             f"storage more than {_REPEAT} times (strides {list(self.stride)}); not read")
        if hi * self.dtype.itemsize > self.storage.nbytes:
            raise TorchError(f"{self.where()}: a {self.dtype.name} view of shape {list(self.shape)} (strides "
                             f"{list(self.stride)}, offset {self.offset}) needs {hi * self.dtype.itemsize} bytes, "
                             f"its storage {self.storage.name} has {self.storage.nbytes}")

    def _numpy_dtype(self) -> np.dtype:
        try:
            return self.dtype.numpy(self.byteorder)
        except ValueError as e:
            raise TorchError(f"{self.where()}: {e}") from None

    def raw(self) -> np.ndarray:
        """The values as stored (bfloat16 as its uint16 bits), in a new C-contiguous array."""
        dt, itemsize = self._numpy_dtype(), self.dtype.itemsize
        if self.contiguous():
            out = np.empty(self.shape, dt)
            if out.size:
                self.storage.read(self.offset * itemsize, memoryview(out.reshape(-1)).cast("B"), self.where())
            return out
        whole = np.empty(self.storage.nbytes // itemsize, dt)  # a view reads its storage once, CRC-checked
        self.storage.read(0, memoryview(whole).cast("B")[:whole.nbytes], self.where())
        view = np.lib.stride_tricks.as_strided(whole[self.offset:], self.shape,
                                               [s * itemsize for s in self.stride], writeable=False)
        return np.ascontiguousarray(view)

    def read_into(self, out: np.ndarray) -> None:
        """Copies the values into ``out``, a float32 array of the same shape (float16, bfloat16 and
        float64 converted). A contiguous float32 tensor is read from the file straight into it."""
        if not self.dtype.floating:
            raise TorchError(f"{self.where()}: dtype {self.dtype.name}, expected a floating-point tensor")
        if tuple(out.shape) != tuple(self.shape):
            raise TorchError(f"{self.where()}: shape {list(self.shape)}, expected {list(out.shape)}")
        direct = (self.contiguous() and self._numpy_dtype() == out.dtype == np.float32
                  and out.flags.c_contiguous and out.flags.writeable)
        if direct:
            if out.size:
                self.storage.read(self.offset * 4, memoryview(out.reshape(-1)).cast("B"), self.where())
        else:
            widen(self.raw(), self.dtype, out)

    def numpy(self) -> np.ndarray:
        """A new array: float32 for floating-point tensors (widened or narrowed), else as stored."""
        if not self.dtype.floating:
            return self.raw().astype(self._numpy_dtype().newbyteorder("="), copy=False)
        out = np.empty(self.shape, np.float32)
        self.read_into(out)
        return out

    def mapped(self) -> np.ndarray:
        """A read-only view of the file's bytes in the stored dtype (bfloat16 as uint16), no copy."""
        if self.storage.offset is None:
            raise TorchError(f"{self.where()}: stored compressed in the archive, so it cannot be mapped")
        itemsize = self.dtype.itemsize
        return np.ndarray(self.shape, self._numpy_dtype(), buffer=self.storage.file.mapping(),
                          offset=self.storage.offset + self.offset * itemsize,
                          strides=[s * itemsize for s in self.stride])
