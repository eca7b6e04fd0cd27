"""PyTorch weights into kindling, read without torch: torch.save files (.pt/.pth, the zip format
and the legacy one; a state_dict or a checkpoint holding one) and .safetensors files.

    from kindling.converters import pytorch
    report = pytorch.load_weights(model, "resnet18.pth")          # {"loaded", "skipped", "unused", "notes"}
    model = pytorch.convert("resnet18.pth", my_resnet18)          # a factory or a Module; every layer loaded
    state = pytorch.read_state_dict("model.safetensors")          # {key: float32 array}
    with pytorch.open_weights("big.pt") as w:                     # lazy: w["fc.weight"].shape, .numpy(), .mapped()
        ...

The architecture is yours (a kindling Module whose layer names are the PyTorch module names:
``layer1.0.conv1`` takes ``layer1.0.conv1.weight``); the weights come in by name. A .pt file is a
pickle: it is read by a restricted unpickler that admits tensors, storages, ordered dicts and plain
values only and runs nothing (unpickle.py). Tensors are read one at a time, straight into the
model's arrays, so a large file needs about its own size in memory.
"""
from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from kindling.runtime import init, nn
from kindling.runtime.shapes import ShapeError, trace

from ..weights import load_by_name
from .errors import TorchError
from .reader import Weights
from .reference import reference_outputs
from .tensor import Tensor

__all__ = ["open_weights", "read_state_dict", "load_weights", "convert", "reference_outputs", "TorchError", "Weights",
           "Tensor"]

# State a PyTorch module saves that kindling's layers do not keep: read past, never reported unused.
# (BatchNorm's counter only matters with momentum=None, a cumulative average kindling does not offer.)
IGNORED = {"num_batches_tracked"}


def open_weights(path, *, key: str | None = None) -> Weights:
    """The file's tensors by state_dict key, unread until asked (``Weights``, a context manager).
    ``key`` picks the entry of a checkpoint that holds the state_dict when it is not one of the
    usual ones (``state_dict``, ``model_state_dict``, ``model``, ``net``, ...)."""
    return Weights(path, key=key)


def read_state_dict(path, *, key: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor of the file as a new array: float32 for floating-point tensors (float16,
    bfloat16 and float64 converted), integer and bool tensors as stored."""
    with open_weights(path, key=key) as weights:
        return {k: t.numpy() for k, t in weights.items()}


def _by_module(weights: Weights) -> dict[str, dict[str, Tensor]]:
    """``conv1.weight`` -> module ``conv1``, parameter ``weight``."""
    groups: dict[str, dict[str, Tensor]] = {}
    for key, tensor in weights.items():
        module, _, param = key.rpartition(".")
        groups.setdefault(module or key, {})[param] = tensor
    return groups


def _planned(module: nn.Module, payload: dict[str, Tensor], where: str) -> list:
    """Checks that ``payload`` fits ``module`` (names, shapes, dtypes) and returns the copies to make."""
    own = {**module.params, **module.buffers}
    given = {k: t for k, t in payload.items() if k not in IGNORED}
    unknown = [k for k in given if k not in own]
    if unknown:
        raise ValueError(f"{where}: the file has {', '.join(unknown)}, which {type(module).__name__} "
                         f"{module.name!r} does not (it has {', '.join(own) or 'no parameters'})")
    missing = [k for k in own if k not in given]
    if missing:
        raise ValueError(f"{where}: the file has {', '.join(given) or 'nothing'} but not {', '.join(missing)} for "
                         f"{type(module).__name__} {module.name!r}")
    for name, t in given.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise ValueError(f"{where} {name}: the file has shape {list(t.shape)}, the model expects "
                             f"{list(own[name].shape)}")
        if not t.dtype.floating:
            raise ValueError(f"{where} {name}: the file has a {t.dtype.name} tensor, the model a float32 one")
    return [(module, name, t) for name, t in given.items()]


def _copy(module: nn.Module, name: str, tensor: Tensor) -> None:
    table = module.params if name in module.params else module.buffers
    target = table[name]
    if target.dtype == np.float32 and target.flags.c_contiguous and target.flags.writeable:
        tensor.read_into(target)  # in place: no second copy of the weights
    else:
        table[name] = tensor.numpy()


def _plan(model: nn.Module, weights: Weights, match_all: bool, rename, path) -> tuple[dict, list]:
    """The report and the copies to make, every module checked; nothing is read yet."""
    copies: list = []
    report = load_by_name(model, _by_module(weights),
                          lambda module, payload, where: copies.extend(_planned(module, payload, where)),
                          source=path, match_all=match_all, rename=rename, error=TorchError)
    report["notes"] = list(weights.notes)
    return report, copies


def load_weights(model: nn.Module, path, match_all: bool = False, rename: dict[str, str] | None = None, *,
                 key: str | None = None) -> dict:
    """Copies the file's tensors into the modules of ``model`` with the same names: ``fc.weight``
    into module ``fc``'s ``weight``; BatchNorm's ``running_mean``/``running_var`` into its buffers
    (``num_batches_tracked`` is read past). ``rename`` maps the file's module names to yours.

    Returns ``{"loaded": [...], "skipped": [...], "unused": [...], "notes": [...]}``: modules that
    got weights, modules with parameters that kept theirs, the file's module names no module
    matched, and what was noticed on the way (a checkpoint's key, a DataParallel prefix). With
    ``match_all=True`` a skipped module is an error. Names, shapes and dtypes are all checked before
    any weight is copied; a module that differs is an error naming the file, the tensor and both shapes."""
    with open_weights(path, key=key) as weights:
        report, copies = _plan(model, weights, match_all, rename, path)
        for module, name, tensor in copies:
            _copy(module, name, tensor)
    return report


def _sha256(path, stop: threading.Event) -> str | None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            if stop.is_set():
                return None
            h.update(chunk)  # hashlib lets go of the GIL: this runs beside the reading of the weights
    return h.hexdigest()


def _built(factory: Callable[[], nn.Module], path) -> nn.Module:
    model = factory()
    if not isinstance(model, nn.Module):
        raise TorchError(f"{path}: the model factory returned a {type(model).__name__}, not a kindling Module")
    return model


def _loaded(model, weights: Weights, match_all: bool, rename, path) -> tuple[nn.Module, dict]:
    """``model`` (or the factory's) with every weight of the file read in, and the report."""
    if isinstance(model, nn.Module):
        report, copies = _plan(model, weights, match_all, rename, path)
    else:
        factory = model
        with init.deferred():  # every weight is about to be read in: no random draw, no page touched twice
            model = _built(factory, path)
        report, copies = _plan(model, weights, match_all, rename, path)
        if report["skipped"]:  # some modules keep their initialisation after all: build it
            model = _built(factory, path)
            report, copies = _plan(model, weights, match_all, rename, path)
    for module, name, tensor in copies:
        _copy(module, name, tensor)
    return model, report


def convert(path, model: nn.Module | Callable[[], nn.Module], *, match_all: bool = True,
            rename: dict[str, str] | None = None, key: str | None = None, inputs: dict | None = None,
            labels: list[str] | None = None, preprocessing: dict | None = None) -> nn.Module:
    """``model`` (a kindling Module, or a factory returning one) with the file's weights, ready to
    save. Every module with parameters must get weights unless ``match_all=False`` (then the ones
    that keep their initialisation are noted). ``inputs`` ({name: shape}) is checked by a shape
    probe and recorded. ``model.sources`` maps each module to the PyTorch module it comes from, for
    ``--verify`` against outputs stored by ``reference_outputs``."""
    path = Path(path)
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(_sha256, path, stop)
        try:
            with open_weights(path, key=key) as weights:
                model, report = _loaded(model, weights, match_all, rename, path)
        except BaseException:
            stop.set()  # no digest is wanted after all: do not wait for it
            raise
        sha256 = digest.result()
    notes = list(report["notes"])
    if report["skipped"]:
        notes.append(f"kept their initial weights (not in the file): {', '.join(report['skipped'])}")
    if report["unused"]:
        notes.append(f"the file's {', '.join(report['unused'])} matched no module")
    meta = {"source": {"framework": "pytorch",
                       "files": [{"path": path.name, "sha256": sha256, "size": path.stat().st_size}]}}
    if inputs:
        try:
            trace(model, [[1, *s[1:]] for s in inputs.values()])
        except ShapeError as e:
            raise TorchError(f"{path}: the model does not take inputs {dict(inputs)}: {e}") from e
        meta["input_names"] = list(inputs)
        if len(inputs) == 1:
            meta["input_shape"] = [-1, *list(inputs.values())[0][1:]]
    if labels:
        meta["labels"] = list(labels)
    if preprocessing:
        meta["preprocessing"] = dict(preprocessing)
    # --verify: each module's output is the PyTorch module's of the same name (renamed ones: the file's
    # name); modules PyTorch has no counterpart for (a functional relu, a residual add) are not compared.
    source_of = {v: k for k, v in (rename or {}).items()}
    model.sources = {m.name: source_of.get(m.name, m.name) for m in model.modules() if m is not model}
    model.metadata = meta
    model.notes = notes
    return model
