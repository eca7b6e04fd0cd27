"""A restricted unpickler for the pickles inside torch.save files: nothing in the file is executed.

A pickle names the callables that rebuild its objects (``GLOBAL os system``, then ``REDUCE``). Here
``find_class`` answers from one table, ``GLOBALS``, whose entries are kindling's own inert stand-ins
(a tensor record, a storage type, an ordered dict, a few plain values) and never the real torch or
numpy functions; any other name is refused with an error naming it. Before the unpickler runs, a
scan of the opcodes (pickletools, which only parses) lists every global the pickle names, so a
refusal names all of them at once and comes before any object is built; the same scan bounds the
memo indices (CPython's unpickler allocates a memo table as large as the index it is given) and
rejects truncated or malformed pickles.

Storages are not read here: ``persistent_load`` returns a ``StorageRef`` (key, dtype, size) that
the file format binds to bytes afterwards (zip records for torch.save's current format, offsets
after the pickle for the legacy one).
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
from collections import OrderedDict

import numpy as np

from .dtypes import DTYPES, TORCH_STORAGES, DType
from .errors import TorchError

# ---- what the pickle may build --------------------------------------------------------------------


class _Inert:
    """Objects handed to a pickle cannot be changed by it (BUILD would set their attributes)."""
    __slots__ = ()

    def __setstate__(self, state):
        raise TorchError(f"the pickle tries to set the state of a {type(self).__name__}")


class Marker(_Inert):
    """A name the pickle may refer to but never call (torch.Tensor as a type, a dtype)."""
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: DType | None = None):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return self.name


UNTYPED = Marker("torch.UntypedStorage", DTYPES["uint8"])


class StorageRef(_Inert):
    """A storage the pickle refers to: its key in the file, element type and element count."""
    __slots__ = ("key", "dtype", "numel", "view")

    def __init__(self, key: str, dtype: DType, numel: int, view=None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class TensorRecord(_Inert):
    """What torch._utils._rebuild_tensor_v2 would rebuild: a view of a storage."""
    __slots__ = ("storage", "dtype", "offset", "shape", "stride")

    def __init__(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, StorageRef):
            raise TorchError(f"a tensor record refers to {type(storage).__name__}, not a storage")
        if dtype is not None and not (isinstance(dtype, Marker) and dtype.dtype is not None):
            raise TorchError(f"a tensor record gives {dtype!r} as its dtype")
        if not isinstance(size, tuple) or not isinstance(stride, tuple):
            raise TorchError("a tensor record's size and stride must be tuples")
        self.storage, self.offset, self.shape, self.stride = storage, offset, size, stride
        self.dtype = dtype.dtype if dtype is not None else storage.dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return TensorRecord(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_):
    return TensorRecord(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, TensorRecord):
        raise TorchError(f"a parameter record wraps {type(data).__name__}, not a tensor")
    return data


_TENSOR_TYPES = (Marker("torch.Tensor"), Marker("torch.nn.parameter.Parameter"))


def _rebuild_from_type_v2(func, new_type, args, state):
    """How torch pickles a Tensor with a Python-side state: only plain tensors and parameters."""
    if new_type not in _TENSOR_TYPES or func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter):
        raise TorchError(f"a tensor of type {new_type!r} rebuilt by {getattr(func, '__name__', func)!r}")
    return func(*args)


def _encode(text, encoding="latin1"):
    """_codecs.encode: how protocol 2 pickles bytes (as a latin-1 str)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TorchError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


_NUMPY_CODES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}


class NumpyDType(_Inert):
    """numpy.dtype(code, ...) for numeric codes only; its BUILD sets nothing but the byte order."""
    __slots__ = ("code", "order")

    def __init__(self, code, align=False, copy=False):
        if code not in _NUMPY_CODES:
            raise TorchError(f"numpy dtype {code!r} (only numeric dtypes are admitted)")
        self.code, self.order = code, "="

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "=")):
            raise TorchError("a malformed numpy dtype state")
        self.order = state[1]

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.order)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes) or len(data) != dtype.numpy.itemsize:
        raise TorchError("a malformed numpy scalar")
    return np.frombuffer(data, dtype.numpy)[0]


class NumpyArray(_Inert):
    """numpy's _reconstruct + BUILD for numeric arrays; the array is in ``value``."""
    __slots__ = ("value",)

    def __init__(self, cls=None, shape=None, code=None):
        if cls is not _NDARRAY:
            raise TorchError(f"numpy _reconstruct of {cls!r}")
        self.value = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], NumpyDType)
                and isinstance(state[4], bytes) and isinstance(state[1], tuple)):
            raise TorchError("a malformed numpy array state")
        _, shape, dtype, fortran, data = state
        self.value = np.frombuffer(data, dtype.numpy).reshape(shape, order="F" if fortran else "C")


_NDARRAY = Marker("numpy.ndarray")

GLOBALS: dict[str, object] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
    "_codecs.encode": _encode,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Tensor": _TENSOR_TYPES[0], "torch._tensor.Tensor": _TENSOR_TYPES[0],
    "torch.nn.parameter.Parameter": _TENSOR_TYPES[1],
    "torch.Size": tuple, "torch.device": str,
    "torch.storage.UntypedStorage": UNTYPED, "torch.UntypedStorage": UNTYPED,
    **{f"torch.{name}": Marker(f"torch.{name}", DTYPES[d]) for name, d in TORCH_STORAGES.items()},
    **{f"torch.{name}": Marker(f"torch.{name}", d) for name, d in DTYPES.items()},
    **{f"{np_core}.multiarray.scalar": _numpy_scalar for np_core in ("numpy.core", "numpy._core")},
    **{f"{np_core}.multiarray._reconstruct": NumpyArray for np_core in ("numpy.core", "numpy._core")},
    "numpy.dtype": NumpyDType, "numpy.ndarray": _NDARRAY,
}
# Modules older torch wrote under another name (torch.load maps them the same way).
_RENAMED_MODULES = {"torch.tensor": "torch._tensor"}


def _qualified(module: str, name: str) -> str:
    """The name as Python's own unpickler would resolve it: protocol 2 pickles (torch.save's)
    carry Python 2 names (__builtin__, commands), mapped by the table pickle itself uses."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{_RENAMED_MODULES.get(module, module)}.{name}"


# ---- the scan before anything is built ---------------------------------------------------------------
# EXT1/2/4 push a global from copyreg's registry, and CPython caches what they resolved process-wide,
# past find_class: refused outright (pickle writes them only for registered extensions; torch never).
_EXTENSION_OPS = {"EXT1", "EXT2", "EXT4"}
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def scan_globals(data: bytes, where: str) -> list[str]:
    """Every global the pickle names, by parsing its opcodes (nothing is built). A STACK_GLOBAL's
    names are followed through the memo; one that cannot be (never written by pickle itself) is left
    to find_class, which refuses it all the same."""
    names: list[str] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # what the last ops pushed, enough to see STACK_GLOBAL's two strings
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in _EXTENSION_OPS:
                raise TorchError(f"{where}: the pickle uses copyreg extension codes ({op.name}), which name "
                                 f"globals kindling cannot see; refused")
            if op.name == "FRAME":
                continue
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if op.name == "MEMOIZE" else int(arg)
                if index > len(data):
                    raise TorchError(f"{where}: malformed pickle: memo index {index} (the pickle is {len(data)} bytes)")
                memo[index] = recent[-1] if recent else None
                continue
            if op.name == "GLOBAL":
                names.append(_qualified(*arg.split(" ", 1)))
            elif op.name == "STACK_GLOBAL":
                module, name = (recent[-2:] if len(recent) >= 2 else [None, None])
                if isinstance(module, str) and isinstance(name, str):
                    names.append(_qualified(module, name))
            value = arg if op.name in _STRING_OPS else memo.get(arg) if op.name in ("GET", "BINGET", "LONG_BINGET") \
                else None
            recent = [*recent[-1:], value]
    except TorchError:
        raise
    except Exception as e:  # pickletools raises ValueError on truncation and unknown opcodes
        raise TorchError(f"{where}: malformed or truncated pickle: {e}") from None
    return names


def _refusal(where: str, refused: list[str]) -> TorchError:
    hint = ""
    if any(n.startswith(("torch.nn.", "__main__.", "torchvision.")) for n in refused):
        hint = (" The file pickles a Python object (a whole model saved with torch.save(model)?): save its "
                "state_dict instead, torch.save(model.state_dict(), path).")
    return TorchError(f"{where}: refused to load {', '.join(refused)}: kindling admits only tensors, storages, "
                      f"ordered dicts and plain values from a pickle, and runs nothing in it.{hint}")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str, storage):
        super().__init__(io.BytesIO(data))
        self.where, self.storage = where, storage

    def find_class(self, module, name):
        qualified = _qualified(module, name)
        found = GLOBALS.get(qualified)
        if found is None:
            raise _refusal(self.where, [qualified])
        return found

    def persistent_load(self, pid):
        return self.storage(pid)


def load(data: bytes, where: str, storage) -> object:
    """The object the pickle ``data`` describes, built from GLOBALS only. ``storage(pid)`` answers
    each persistent id (a storage reference). ``where`` names the file and record in errors."""
    refused = sorted({n for n in scan_globals(data, where) if n not in GLOBALS})
    if refused:
        raise _refusal(where, refused)
    try:
        return _Unpickler(data, where, storage).load()
    except TorchError:
        raise
    except Exception as e:  # a corrupt pickle fails in many ways inside pickle itself
        raise TorchError(f"{where}: corrupt pickle: {type(e).__name__}: {e}") from None


def storage_id(pid, where: str) -> tuple:
    """(storage type marker, key, location, numel, view) of torch.save's ('storage', ...) ids."""
    if not isinstance(pid, tuple) or not pid:
        raise TorchError(f"{where}: malformed storage reference {pid!r}")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind == "module":
        raise TorchError(f"{where}: the file pickles a whole nn.Module class (torch.save(model) in the legacy "
                         f"format): save model.state_dict() instead")
    if kind != "storage" or len(pid) not in (5, 6):
        raise TorchError(f"{where}: unknown persistent id {str(pid)[:80]}")
    storage_type, key, location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not (isinstance(storage_type, Marker) and storage_type.dtype is not None):
        raise TorchError(f"{where}: storage {key!r} has type {storage_type!r}, not a torch storage type")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise TorchError(f"{where}: malformed storage reference {str(pid)[:80]}")
    return storage_type, key, location, numel, view
