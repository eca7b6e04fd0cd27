"""Opening a weights file: the format told by its first bytes, the state_dict found in it, and every
tensor checked against its storage before anything is read."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import legacy, safetensors
from .archive import Archive
from .checkpoint import state_dict_of
from .errors import TorchError
from .tensor import OpenFile, Tensor
from .unpickle import TensorRecord

# Files users pass that are none of the formats read here, told apart by their first bytes.
_OTHER_FORMATS = [
    (lambda head: head.startswith(b"\x89HDF\r\n\x1a\n"), "an HDF5 file (a Keras .h5 model?), not PyTorch weights"),
    (lambda head: head.startswith(b"\x08") or b"onnx" in head[:64].lower(), "not PyTorch weights (an ONNX model?)"),
    (legacy.is_tar, "a tar-format torch file (PyTorch before 0.4), which kindling does not read: load it with "
                    "that PyTorch and save its state_dict again with torch.save"),
]


class Weights(Mapping):
    """The tensors of a .pt/.pth/.safetensors file by state_dict key, unread until asked.
    ``notes`` says what was found (a checkpoint's state_dict key, a stripped prefix); ``format``
    which format the file is in. Close it (or use ``with``) to release the file."""

    def __init__(self, path, *, key: str | None = None):
        self.path = Path(path)
        self.file = OpenFile(self.path)
        self._source = None
        try:
            self.tensors, self.notes, self.format, self.metadata = self._open(key)
        except BaseException:
            self.close()
            raise

    def _open(self, key):
        head = bytearray(min(self.file.size, 512))
        self.file.read_at(0, memoryview(head))
        head = bytes(head)
        if safetensors.looks_like(head) or self.path.suffix == ".safetensors":
            if key is not None:
                raise TorchError(f"{self.path}: a safetensors file holds one flat set of tensors; key= does not apply")
            tensors, meta = safetensors.read(self.file)
            held, notes = state_dict_of(tensors, lambda v: isinstance(v, Tensor), self.path)
            return held, notes, "safetensors", meta
        if head.startswith(b"PK\x03\x04"):
            self._source, fmt = Archive(self.file), "torch.save zip"
        elif head.startswith(b"\x80"):  # a pickle's PROTO opcode
            self._source, fmt = legacy.Legacy(self.file), "torch.save legacy"
        else:
            what = next((w for matches, w in _OTHER_FORMATS if matches(head)), None)
            raise TorchError(f"{self.path}: {what or 'not a PyTorch (.pt/.pth) or safetensors file'}"
                             + ("" if what else f" (it starts with {head[:16]!r})"))
        records, notes = state_dict_of(self._source.obj, lambda v: isinstance(v, TensorRecord), self.path, key)
        return {k: self._tensor(k, r) for k, r in records.items()}, notes, fmt, {}

    def _tensor(self, key: str, record: TensorRecord) -> Tensor:
        storage = self._source.storage(record.storage, key)
        tensor = Tensor(record.dtype, record.shape, record.stride, record.offset, storage, self._source.byteorder, key)
        tensor.check()
        return tensor

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        self.file.close()

    def __enter__(self) -> "Weights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Weights({str(self.path)!r}, {self.format}, {len(self)} tensors)"
