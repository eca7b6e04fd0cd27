"""torch.save's legacy format (PyTorch 0.4 to 1.5, and ``_use_new_zipfile_serialization=False``):
five pickles in a row (a magic number, the protocol version 1001, system info, the object, the
sorted list of storage keys), then each storage as an int64 element count and its raw
little-endian bytes. Each pickle's extent is found by parsing its opcodes; storages are located by
walking the count headers, and read only when a tensor is.

The older tar format (before PyTorch 0.4) is refused with a message.
"""
from __future__ import annotations

import io
import pickletools
import struct

from . import unpickle
from .errors import TorchError
from .tensor import OpenFile, Storage

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# A legacy file's head (magic, version, system info) is a few hundred bytes; no pickle line is long.
_HEAD_LIMIT = _LINE_LIMIT = 1 << 16


def is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


class _Stream:
    """Reads the pickles one after another from an open file. Reads are capped at what is left of
    the file (a corrupt length must not make a buffered reader allocate it) and lines at 64 KB."""

    def __init__(self, file: OpenFile):
        self.file, self.pos = file, 0
        self.reader = io.BufferedReader(io.FileIO(file.path, "r"))

    def read(self, n: int = -1) -> bytes:
        left = self.file.size - self.reader.tell()
        return self.reader.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.reader.readline(_LINE_LIMIT)

    def tell(self) -> int:
        return self.reader.tell()

    def next_pickle(self, what: str, limit: int) -> bytes:
        self.reader.seek(self.pos)
        try:
            for _, _, pos in pickletools.genops(self):
                if pos - self.pos > limit:
                    raise ValueError(f"longer than {limit} bytes")
        except Exception as e:
            raise TorchError(f"{self.file.path}: {what}: malformed or truncated pickle: {e}") from None
        end = self.reader.tell()  # genops stops just past STOP
        self.reader.seek(self.pos)
        data = self.reader.read(end - self.pos)
        self.pos = end
        return data

    def close(self):
        self.reader.close()


class Legacy:
    """An open legacy torch file: the unpickled object and its storages by key."""

    def __init__(self, file: OpenFile):
        self.file = file
        self.refs: dict[str, unpickle.StorageRef] = {}
        self.byteorder = "<"  # storages are written little-endian whatever the machine
        path = str(file.path)
        stream = _Stream(file)
        try:
            head = [unpickle.load(stream.next_pickle(what, _HEAD_LIMIT), f"{path} ({what})", self._no_storage)
                    for what in ("magic number", "protocol version", "system info")]
            if head[0] != MAGIC_NUMBER or head[1] != PROTOCOL_VERSION or not isinstance(head[2], dict):
                raise TorchError(f"{path}: not a legacy torch.save file (magic number {str(head[0])[:30]}, "
                                 f"protocol {str(head[1])[:30]})")
            self.obj = unpickle.load(stream.next_pickle("object", file.size), f"{path} (object)", self._storage_ref)
            keys = unpickle.load(stream.next_pickle("storage keys", file.size), f"{path} (storage keys)", self._no_storage)
            self.storages = self._locate(keys, stream.pos)
        finally:
            stream.close()

    def _no_storage(self, pid):
        raise TorchError(f"{self.file.path}: a storage reference outside the object's pickle")

    def _storage_ref(self, pid):
        storage_type, key, _, numel, view = unpickle.storage_id(pid, str(self.file.path))
        if key not in self.refs:
            self.refs[key] = unpickle.StorageRef(key, storage_type.dtype, numel)
        if view is None:
            return self.refs[key]
        # A view of part of a storage (PyTorch before 1.0): (view key, offset, size) in elements.
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])):
            raise TorchError(f"{self.file.path}: malformed storage view {str(view)[:80]}")
        view_key, offset, size = view
        return self.refs.setdefault(view_key, unpickle.StorageRef(view_key, storage_type.dtype, size,
                                                                  view=(key, offset)))

    def _locate(self, keys, pos: int) -> dict[str, Storage]:
        path = self.file.path
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TorchError(f"{path}: malformed storage key list")
        located: dict[str, Storage] = {}
        count = bytearray(8)
        for key in keys:
            ref = self.refs.get(key)
            if ref is None:
                raise TorchError(f"{path}: storage {key!r} is listed but no tensor refers to it")
            if pos + 8 > self.file.size:
                raise TorchError(f"{path}: truncated: storage {key!r} is missing")
            self.file.read_at(pos, memoryview(count))
            numel = struct.unpack("<q", count)[0]
            if numel != ref.numel:
                raise TorchError(f"{path}: storage {key!r} holds {numel} elements, the pickle expects {ref.numel}")
            if pos + 8 + ref.nbytes > self.file.size:
                raise TorchError(f"{path}: truncated: storage {key!r} ends past the end of the file")
            located[key] = Storage(f"storage {key}", ref.nbytes, self.file, pos + 8)
            pos += 8 + ref.nbytes
        return located

    def storage(self, ref: unpickle.StorageRef, tensor_key: str) -> Storage:
        if ref.view is not None:
            root_key, offset = ref.view
            root = self.storage(self.refs[root_key], tensor_key)
            start = offset * ref.dtype.itemsize
            if offset < 0 or start + ref.nbytes > root.nbytes:
                raise TorchError(f"{self.file.path}: tensor {tensor_key!r}: storage view {ref.key!r} runs past "
                                 f"its storage {root_key!r}")
            return Storage(f"storage {ref.key}", ref.nbytes, self.file, root.offset + start)
        if ref.key not in self.storages:
            raise TorchError(f"{self.file.path}: tensor {tensor_key!r}: storage {ref.key!r} is not in the file")
        return self.storages[ref.key]

    def close(self) -> None:
        pass
