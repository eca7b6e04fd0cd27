"""torch.save's zip format (PyTorch 1.6 and later): ``<name>/data.pkl`` describes the object and
``<name>/data/<key>`` holds each storage's raw bytes, stored uncompressed and 64-byte aligned, so a
storage is read straight from its offset in the file; ``<name>/byteorder`` says "little" or "big".
"""
from __future__ import annotations

import struct
import zipfile
import zlib

from . import unpickle
from .errors import TorchError
from .tensor import OpenFile, Storage

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
# Largest declared size of data.pkl, against a compressed entry that would inflate without end.
_MAX_PICKLE = 1 << 31
# deflate's largest compression ratio (a run of one byte); a record claiming more is corrupt.
_MAX_RATIO = 1032


# What zipfile raises for a damaged archive or record (RuntimeError: "encrypted", an unknown method).
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error,
               struct.error, KeyError)


def _open(file: OpenFile) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file.path)
    except _ZIP_ERRORS as e:
        raise TorchError(f"{file.path}: truncated or corrupt zip archive (torch.save format): {e}") from None


def _prefix(names: list[str], path) -> str:
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise TorchError(f"{path}: a zip archive but not a torch.save file: "
                         f"{'no' if not pickles else len(pickles)} <name>/data.pkl records")
    prefix = pickles[0][:-len("data.pkl")]
    if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
        raise TorchError(f"{path}: a TorchScript archive (torch.jit.save); kindling reads state_dicts: save "
                         f"model.state_dict() with torch.save")
    return prefix


class Archive:
    """An open torch.save zip: the unpickled object and its storages, bound lazily by key."""

    def __init__(self, file: OpenFile):
        self.file = file
        self.zip = _open(file)
        try:
            self.infos = {i.filename: i for i in self.zip.infolist()}
            self.prefix = _prefix(list(self.infos), file.path)
            self.byteorder = self._byteorder()
            self.refs: dict[str, unpickle.StorageRef] = {}
            where = f"{file.path} ({self.prefix}data.pkl)"
            self.obj = unpickle.load(self._record(f"{self.prefix}data.pkl"), where, self._storage_ref)
        except BaseException:
            self.zip.close()
            raise
        self._bound: dict[str, Storage] = {}

    def _record(self, name: str) -> bytes:
        info = self.infos[name]
        if info.file_size > _MAX_PICKLE:
            raise TorchError(f"{self.file.path}: {name} declares {info.file_size} bytes")
        data = bytearray(info.file_size)
        self._storage_of(info).read(0, memoryview(data), str(self.file.path))
        return bytes(data)

    def _byteorder(self) -> str:
        name = f"{self.prefix}byteorder"
        if name not in self.infos:
            return "<"  # written since PyTorch 1.13; files before it are little-endian
        order = self._record(name)
        if order not in (b"little", b"big"):
            raise TorchError(f"{self.file.path}: {name} says {order[:20]!r}, expected 'little' or 'big'")
        return "<" if order == b"little" else ">"

    def _storage_ref(self, pid):
        storage_type, key, _, numel, _ = unpickle.storage_id(pid, str(self.file.path))
        if key not in self.refs:  # later references to a key share the first one's storage, as torch.load does
            self.refs[key] = unpickle.StorageRef(key, storage_type.dtype, numel)
        return self.refs[key]

    def storage(self, ref: unpickle.StorageRef, tensor_key: str) -> Storage:
        """The bytes of ``ref`` in the archive, checked against the size the pickle gives."""
        if ref.key in self._bound:
            return self._bound[ref.key]
        name = f"{self.prefix}data/{ref.key}"
        info = self.infos.get(name)
        if info is None:
            raise TorchError(f"{self.file.path}: tensor {tensor_key!r}: its storage record {name} is missing")
        if info.file_size != ref.nbytes:
            raise TorchError(f"{self.file.path}: tensor {tensor_key!r}: storage {name} holds {info.file_size} bytes, "
                             f"the pickle expects {ref.numel} x {ref.dtype.name} = {ref.nbytes}")
        self._bound[ref.key] = storage = self._storage_of(info)
        return storage

    def _storage_of(self, info: zipfile.ZipInfo) -> Storage:
        """A record's bytes: stored ones read at their offset in the file, compressed ones through
        zipfile. CRC-32 checked, except where torch wrote none (set_crc32_options(False) writes 0)."""
        crc = info.CRC or None
        if info.compress_type == zipfile.ZIP_STORED:
            return Storage(info.filename, info.file_size, self.file, self._data_offset(info), crc=crc)
        if info.file_size > _MAX_RATIO * info.compress_size + 1024:
            raise TorchError(f"{self.file.path}: {info.filename} claims to inflate {info.compress_size} bytes to "
                             f"{info.file_size}, beyond what deflate can")
        return Storage(info.filename, info.file_size, self.file, None, crc=crc,
                       read_packed=lambda start, out, who: self._read_packed(info, start, out, who))

    def _read_packed(self, info: zipfile.ZipInfo, start: int, out: memoryview, who: str) -> None:
        """Bytes of a compressed record (torch writes them stored; a re-zipped file may not)."""
        try:
            with self.zip.open(info) as f:
                f.seek(start)
                if f.readinto(out) != len(out):
                    raise EOFError("fewer bytes than its size")
        except _ZIP_ERRORS as e:
            raise TorchError(f"{who}: {info.filename} is truncated or corrupt: {e}") from None

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        header = bytearray(_LOCAL_HEADER.size)
        self.file.read_at(info.header_offset, memoryview(header))
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise TorchError(f"{self.file.path}: corrupt zip archive: no local header for {info.filename}")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if info.compress_size != info.file_size or start + info.file_size > self.file.size:
            raise TorchError(f"{self.file.path}: {info.filename} runs past the end of the file (truncated?)")
        return start

    def close(self) -> None:
        self.zip.close()
