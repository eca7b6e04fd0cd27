"""The native model file (.kdl): a checksummed protobuf header, then raw tensor data.

    b"\\x93KNDL" | major u8 | minor u8 | header length u64 LE | SHA-256 of header (32 bytes)
    | header: kindling.ModelFile (protos/kindling.proto) | zero padding to 64 | tensor data

Tensor data is little-endian C order, each tensor 64-byte aligned, so it streams in and out one
tensor at a time (peak memory stays near one model, not two) and can be memory-mapped. Every
tensor carries a SHA-256 checked on load, the header has its own, and the file's size must be
exactly what the header says: a truncated, corrupt, unknown or newer file raises FormatError
naming the file and the problem, and nothing half-loaded is returned. Saves are atomic: a temp
file in the same folder, fsync, rename.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kindling.protos import kindling_pb2 as pb

from . import init, memory
from .errors import KindlingError, TooLarge
from .module import Module

MAGIC = b"\x93KNDL"
FORMAT_MAJOR, FORMAT_MINOR = 1, 0
ALIGN = 64
MAX_HEADER = 256 << 20
_PREFIX = struct.Struct("<5sBBQ32s")
_CHUNK = 16 << 20

DTYPES = {  # numpy dtype -> proto enum, little-endian
    np.dtype("<f4"): pb.FLOAT32, np.dtype("<f8"): pb.FLOAT64, np.dtype("<f2"): pb.FLOAT16,
    np.dtype("<i8"): pb.INT64, np.dtype("<i4"): pb.INT32, np.dtype("u1"): pb.UINT8, np.dtype("?"): pb.BOOL,
}
NUMPY_DTYPES = {v: k for k, v in DTYPES.items()}


class FormatError(KindlingError):
    """A model file that cannot be read or written; the message starts with the file's path."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


# ---- attributes ---------------------------------------------------------------------------------
def _attr_to_proto(value: Any) -> pb.AttrValue:
    a = pb.AttrValue()
    if value is None:
        a.none = True
    elif isinstance(value, (bool, np.bool_)):
        a.b = bool(value)
    elif isinstance(value, (int, np.integer)):
        a.i = int(value)
    elif isinstance(value, (float, np.floating)):
        a.f = float(value)
    elif isinstance(value, str):
        a.s = value
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, np.integer)) and
                                                            not isinstance(v, bool) for v in value):
        a.ints.values.extend(int(v) for v in value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (float, np.floating)) for v in value):
        a.floats.values.extend(float(v) for v in value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        a.strings.values.extend(value)
    else:
        a.json = json.dumps(value)  # raises TypeError for what JSON cannot hold
    return a


# JSON attributes nest a level or two (Graph's node inputs); json.loads recurses once per level.
MAX_JSON_DEPTH = 32
_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*+"?')


def _json(text: str):
    depth = 0
    for m in re.finditer(r"[\[\]{}]", _JSON_STRINGS.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nests more than {MAX_JSON_DEPTH} levels deep")
    return json.loads(text)


_ATTR_READERS = {
    "none": lambda a: None, "b": lambda a: a.b, "i": lambda a: a.i, "f": lambda a: a.f, "s": lambda a: a.s,
    "ints": lambda a: list(a.ints.values), "floats": lambda a: list(a.floats.values),
    "strings": lambda a: list(a.strings.values), "json": lambda a: _json(a.json),
}


def _attr_from_proto(a: pb.AttrValue) -> Any:
    kind = a.WhichOneof("value")
    if kind is None:
        raise ValueError("attribute with no value")
    return _ATTR_READERS[kind](a)


# ---- metadata -----------------------------------------------------------------------------------
_METADATA_KEYS = {"source", "input_shape", "sample_shape", "input_names", "output_names", "labels", "preprocessing",
                  "training", "extra"}


def metadata_to_proto(meta: dict | None) -> pb.Metadata:
    m = pb.Metadata()
    meta = dict(meta or {})
    unknown = set(meta) - _METADATA_KEYS
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}; known: {sorted(_METADATA_KEYS)}")
    if meta.get("source"):
        src = meta["source"]
        m.has_source = True
        m.source.framework = src.get("framework", "")
        for f in src.get("files", []):
            m.source.files.add(path=str(f.get("path", "")), sha256=f.get("sha256", ""), size=int(f.get("size", 0)))
    m.input_shape.extend(int(d) for d in meta.get("input_shape") or [])
    m.sample_shape.extend(int(d) for d in meta.get("sample_shape") or [])
    m.input_names.extend(meta.get("input_names") or [])
    m.output_names.extend(meta.get("output_names") or [])
    m.labels.extend(str(label) for label in meta.get("labels") or [])
    if meta.get("preprocessing"):
        p, pre = m.preprocessing, meta["preprocessing"]
        m.has_preprocessing = True
        p.mean.extend(pre.get("mean") or [])
        p.std.extend(pre.get("std") or [])
        if pre.get("scale") is not None:
            p.scale, p.has_scale = float(pre["scale"]), True
        p.channel_order = pre.get("channel_order") or ""
        p.input_size.extend(pre.get("input_size") or [])
        p.resize = int(pre.get("resize") or 0)
    if meta.get("training"):
        t, tr = m.training, meta["training"]
        m.has_training = True
        t.iteration, t.epoch, t.loss = int(tr.get("iteration", 0)), int(tr.get("epoch", 0)), float(tr.get("loss", 0.0))
        if tr.get("validation"):
            v = tr["validation"]
            t.has_validation = True
            t.validation.dataset = v.get("dataset", "")
            t.validation.count = int(v.get("count", 0))
            for k, val in (v.get("results") or {}).items():
                t.validation.results[k] = float(val)
    for k, v in (meta.get("extra") or {}).items():
        m.extra[str(k)] = str(v)
    return m


def metadata_from_proto(m: pb.Metadata) -> dict:
    meta: dict[str, Any] = {}
    if m.has_source:
        meta["source"] = {"framework": m.source.framework,
                          "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.source.files]}
    for key in ("input_shape", "sample_shape", "input_names", "output_names", "labels"):
        if getattr(m, key):
            meta[key] = list(getattr(m, key))
    if m.has_preprocessing:
        p = m.preprocessing
        meta["preprocessing"] = {k: v for k, v in {
            "mean": list(p.mean) or None, "std": list(p.std) or None, "scale": p.scale if p.has_scale else None,
            "channel_order": p.channel_order or None, "input_size": list(p.input_size) or None,
            "resize": p.resize or None}.items() if v is not None}
    if m.has_training:
        t = m.training
        meta["training"] = {"iteration": t.iteration, "epoch": t.epoch, "loss": t.loss}
        if t.has_validation:
            meta["training"]["validation"] = {"dataset": t.validation.dataset, "count": t.validation.count,
                                              "results": dict(t.validation.results)}
    if m.extra:
        meta["extra"] = dict(m.extra)
    return meta


# ---- module graph -------------------------------------------------------------------------------
def _module_to_proto(m: Module, inputs=()) -> pb.ModuleDef:
    d = pb.ModuleDef(type=type(m).__name__, name=m.name, frozen=m.frozen, inputs=list(inputs))
    config = m.config()
    node_inputs = config.pop("node_inputs", None) if type(m).__name__ == "Graph" else None
    for k, v in config.items():
        try:
            d.attrs[k].CopyFrom(_attr_to_proto(v))
        except TypeError as e:
            raise ValueError(f"module {m.name!r} ({type(m).__name__}): attribute {k!r} = {v!r} cannot be saved: {e}")
    for k, v in m.lr_mult.items():
        d.lr_mult[k] = v
    for k, v in m.decay_mult.items():
        d.decay_mult[k] = v
    for child in m.children():
        d.children.append(_module_to_proto(child, (node_inputs or {}).get(child.name, ())))
    return d


def _module_from_proto(d: pb.ModuleDef, fill, path) -> Module:
    from . import nn
    try:
        cls = nn.layer_type(d.type)
    except KeyError as e:
        raise FormatError(path, f"module {d.name!r} has unknown layer type {d.type!r}") from e
    children = [_module_from_proto(c, fill, path) for c in d.children]
    try:
        attrs = {k: _attr_from_proto(v) for k, v in d.attrs.items()}
        if d.type == "Graph":
            attrs["node_inputs"] = {c.name: list(c.inputs) for c in d.children}
        # Parameters are placeholders that hold no memory until fill() has compared each with the
        # tensor the file holds: a config saying out_features 2^31-1 costs nothing.
        with init.deferred():
            m = cls(*children, **attrs, name=d.name)
    except (TypeError, ValueError, ArithmeticError) as e:  # OverflowError: an attribute of 1e999 made an int
        raise FormatError(path, f"module {d.name!r} ({d.type}) cannot be rebuilt: {e}") from e
    m.frozen = d.frozen
    m.lr_mult.update(d.lr_mult)
    m.decay_mult.update(d.decay_mult)
    fill(m)
    return m


def rebuild(model: Module, fill) -> Module:
    """A fresh module tree built from ``model``'s saved form (types, attributes, children), as a
    load builds it, with ``fill(module)`` setting each new module's arrays: no outputs, scratch or
    other state of ``model`` comes along."""
    check_unique_names(model)
    try:
        graph = _module_to_proto(model)
    except ValueError as e:
        raise FormatError(f"<{model.name}>", f"cannot rebuild: {e}") from e
    return _module_from_proto(graph, fill, f"<{model.name}>")


def check_unique_names(model: Module) -> None:
    counts = Counter(m.name for m in model.modules())
    repeated = sorted(n for n, c in counts.items() if c > 1)
    if repeated:
        raise ValueError(f"module names must be unique in a model; repeated: {', '.join(repeated)}")


# ---- save ---------------------------------------------------------------------------------------
def _tensors(model: Module):
    """(key, module, slot, name) for every parameter and buffer, in tree order."""
    for m in model.modules():
        for slot in ("params", "buffers"):
            for name in getattr(m, slot):
                yield f"{m.name}.{name}", m, slot, name


def _le(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def _raw(a: np.ndarray) -> memoryview:
    """The array's bytes without a copy (a tensor with a zero in its shape has none)."""
    return memoryview(a).cast("B") if a.size else memoryview(b"")


def _pad(n: int) -> int:
    return -n % ALIGN


def save(model: Module, path, metadata: dict | None = None) -> Path:
    """Writes ``model`` (and ``metadata``, default ``model.metadata``) to ``path`` atomically."""
    path = Path(path)
    try:
        check_unique_names(model)
        header = pb.ModelFile(format_major=FORMAT_MAJOR, format_minor=FORMAT_MINOR, graph=_module_to_proto(model),
                              writer=f"kindling {_version()}")
        meta = metadata if metadata is not None else getattr(model, "metadata", None)
        header.metadata.CopyFrom(metadata_to_proto(meta))
    except ValueError as e:
        raise FormatError(path, f"cannot save: {e}") from e
    offset = 0
    entries = []
    for key, m, slot, name in _tensors(model):
        a = _le(getattr(m, slot)[name])
        if a.dtype.newbyteorder("<") not in DTYPES and a.dtype not in DTYPES:
            raise FormatError(path, f"cannot save tensor {key}: dtype {a.dtype} is not supported")
        dtype = DTYPES.get(a.dtype.newbyteorder("<"), DTYPES.get(a.dtype))
        header.tensors.add(key=key, dtype=dtype, shape=list(a.shape), offset=offset, nbytes=a.nbytes,
                           sha256=hashlib.sha256(_raw(a)).digest())
        entries.append(a)
        offset += a.nbytes + _pad(a.nbytes)
    header.data_size = offset
    blob = header.SerializeToString()
    prefix = _PREFIX.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(blob), hashlib.sha256(blob).digest())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(prefix)
            f.write(blob)
            f.write(b"\0" * _pad(len(prefix) + len(blob)))
            for a in entries:
                f.write(_raw(a))
                f.write(b"\0" * _pad(a.nbytes))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved model reads like any file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _version() -> str:
    from kindling import __version__
    return __version__


# ---- load ---------------------------------------------------------------------------------------
def read_header(path) -> tuple[pb.ModelFile, int]:
    """The checked header and the file offset where tensor data starts."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                raise FormatError(path, f"file is too short to be a kindling model ({size} bytes)")
            magic, major, minor, hlen, digest = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise FormatError(path, "not a kindling model file (bad magic bytes)")
            if major > FORMAT_MAJOR:
                raise FormatError(path, f"written by a newer kindling: format {major}.{minor}; this kindling reads "
                                        f"{FORMAT_MAJOR}.x")
            if hlen > MAX_HEADER or _PREFIX.size + hlen > size:
                raise FormatError(path, f"truncated or corrupt: header of {hlen} bytes in a {size}-byte file")
            blob = f.read(hlen)
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from e
    if hashlib.sha256(blob).digest() != digest:
        raise FormatError(path, "corrupt header: SHA-256 mismatch")
    header = pb.ModelFile()
    try:
        header.ParseFromString(blob)
    except Exception as e:  # protobuf's DecodeError
        raise FormatError(path, f"corrupt header: {e}") from e
    data_start = _PREFIX.size + hlen + _pad(_PREFIX.size + hlen)
    if data_start + header.data_size != size:
        raise FormatError(path, f"truncated or corrupt: expected {data_start + header.data_size} bytes, found {size}")
    end = 0
    for t in header.tensors:
        dtype = NUMPY_DTYPES.get(t.dtype)
        if dtype is None:
            raise FormatError(path, f"tensor {t.key} has unknown dtype {t.dtype}")
        if any(d < 0 for d in t.shape) or t.nbytes != math.prod(t.shape) * dtype.itemsize:  # no int64 wrap
            raise FormatError(path, f"tensor {t.key}: {t.nbytes} bytes do not hold shape {list(t.shape)} of {dtype}")
        if t.offset != end or t.offset + t.nbytes > header.data_size:
            raise FormatError(path, f"tensor {t.key}: offset {t.offset} is not where the previous tensor ends ({end})")
        end = t.offset + t.nbytes + _pad(t.nbytes)
    if end != header.data_size:
        raise FormatError(path, f"tensor data is {header.data_size} bytes but the tensors cover {end}")
    return header, data_start


def load(path, mmap: bool = False) -> Module:
    """Reads a model written by :func:`save`. Every checksum is verified before it is returned.
    With ``mmap=True`` tensors are copy-on-write maps of the file (fast, little memory)."""
    path = Path(path)
    header, data_start = read_header(path)
    if not mmap:
        try:
            memory.check(header.data_size, f"loading {header.data_size / 1e9:.1f} GB of tensors (mmap=True maps them)")
        except TooLarge as e:
            raise FormatError(path, str(e)) from e
    infos = {t.key: t for t in header.tensors}
    used = set()
    f = open(path, "rb")
    mapped = np.memmap(path, np.uint8, mode="c") if mmap else None

    def read(t: pb.TensorInfo) -> np.ndarray:
        dtype = NUMPY_DTYPES[t.dtype]
        h = hashlib.sha256()
        if mapped is not None:
            raw = mapped[data_start + t.offset:data_start + t.offset + t.nbytes]
            for i in range(0, t.nbytes, _CHUNK):
                h.update(raw[i:i + _CHUNK])
            a = raw.view(dtype).reshape(tuple(t.shape))
        else:
            a = np.empty(tuple(t.shape), dtype)
            view = memoryview(a).cast("B") if t.nbytes else memoryview(b"")
            f.seek(data_start + t.offset)
            got = 0
            while got < t.nbytes:
                n = f.readinto(view[got:got + _CHUNK])
                if not n:
                    raise FormatError(path, f"truncated while reading tensor {t.key}")
                h.update(view[got:got + n])
                got += n
        if h.digest() != t.sha256:
            raise FormatError(path, f"corrupt data: SHA-256 mismatch in tensor {t.key}")
        pad = _pad(t.nbytes)
        if pad:
            if mapped is not None:
                tail = bytes(mapped[data_start + t.offset + t.nbytes:data_start + t.offset + t.nbytes + pad])
            else:
                tail = f.read(pad)
            if tail.strip(b"\0"):
                raise FormatError(path, f"corrupt data: non-zero padding after tensor {t.key}")
        return a

    def fill(m: Module) -> None:
        for slot in ("params", "buffers"):
            store = getattr(m, slot)
            for name in list(store):
                key = f"{m.name}.{name}"
                t = infos.get(key)
                if t is None:
                    raise FormatError(path, f"module {m.name!r} ({type(m).__name__}) has no tensor {key!r} in the file")
                if tuple(t.shape) != store[name].shape:  # before reading: the module's is a placeholder
                    raise FormatError(path, f"tensor {key} has shape {tuple(t.shape)}, the module expects "
                                            f"{store[name].shape}")
                store[name] = read(t)
                used.add(key)

    try:
        model = _module_from_proto(header.graph, fill, path)
    finally:
        f.close()
    extra = set(infos) - used
    if extra:
        raise FormatError(path, f"tensors that belong to no module: {', '.join(sorted(extra))}")
    model.metadata = metadata_from_proto(header.metadata)
    return model
