"""OptimMethod: the state and bookkeeping every optimisation method shares.

A method's ``update(model)`` applies one step to every parameter of every module that is not
frozen, using the gradients the backward pass accumulated, and honouring each module's
``lr_mult`` / ``decay_mult`` (Caffe's). The maths of each method is a keyword-only function over
one array, in place (like PyTorch's ``_single_tensor_sgd``). ``update`` runs it over the model's
parameters laid out in one flat buffer (``flat.FlatParameters``: once per distinct pair of
multipliers, in cache-sized chunks), ``apply`` over given arrays (the slices a Spark task owns);
the maths is elementwise, so both give the same bits.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..module import Module
from ..parallel import pool
from ..workspace import for_this_thread
from .flat import FlatParameters, trainable

#: Elements per pass of the flat update: every operand of a step (weights, gradient, slots,
#: scratch and numpy's temporaries) stays in L2 cache while the method's few passes run over it,
#: so memory is read and written about once per step instead of once per pass.
CHUNK = 1 << 15
#: Chunks a thread takes at least (below, the update runs on the calling thread alone).
MIN_CHUNKS = 4


class OptimMethod:
    #: registry of subclasses by name, for load(); filled by __init_subclass__
    _types: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OptimMethod._types[cls.__name__] = cls

    def __init__(self, learningrate: float, learningrate_schedule=None):
        if learningrate < 0:
            raise ValueError(f"{type(self).__name__}: learningrate must be >= 0, got {learningrate}")
        self.learningrate = float(learningrate)
        self.learningrate_schedule = learningrate_schedule
        self.state: dict = {"iteration": 0, "epoch": 1}
        self.buffers: dict[str, dict[str, np.ndarray]] = {}  # per parameter key: named slots

    # ---- the step ---------------------------------------------------------------------------
    def hyper(self) -> dict:
        """Constructor arguments, for saving and the log line."""
        raise NotImplementedError

    def _run(self, w: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray], scratch: np.ndarray, *,
             rate: float, decay_mult: float, first: bool) -> None:
        """One in-place step of the method's maths on ``w`` (a parameter, a slice of one, or a run
        of the flat buffer) at ``rate`` (the learning rate times lr_mult); ``slots`` holds this
        method's ``slot_names`` arrays of ``w``'s shape, and ``first`` says they were just created."""
        raise NotImplementedError

    def _step(self, key: str, w: np.ndarray, g: np.ndarray, lr: float, lr_mult: float, decay_mult: float) -> None:
        names = self.slot_names()
        first = bool(names) and not all(n in self.buffers.get(key, {}) for n in names)
        slots = {n: self.slot(key, n, w) for n in names}
        self._run(w, g, slots, self.scratch(key, w), rate=lr * lr_mult, decay_mult=decay_mult, first=first)

    def current_learning_rate(self) -> float:
        """The rate the next update uses (after the schedule)."""
        if self.learningrate_schedule is not None:
            return float(self.learningrate_schedule.rate(self.learningrate, self.state))
        return self._default_rate()

    def _default_rate(self) -> float:
        return self.learningrate

    def update(self, model: Module, lr: float | None = None) -> None:
        """One step on every trainable parameter of ``model`` that has a gradient, over the flat
        buffers of ``flat_parameters(model)`` (the per-array path where they cannot be built)."""
        flat = self.flat_parameters(model)
        if flat is None:
            self.apply(self.entries(model), lr)
            return
        lr = self.current_learning_rate() if lr is None else float(lr)
        self.state["learning_rate"] = lr
        params, grads, slots = flat.params, flat.grads, flat.slots.items()
        chunks = flat.take_chunks(CHUNK)

        def step(_, a, b):
            scratch = for_this_thread().array("optim_scratch", (CHUNK,))  # one chunk's: not a model-sized copy
            for lo, hi, r in chunks[a:b]:
                self._run(params[lo:hi], grads[lo:hi], {n: s[lo:hi] for n, s in slots}, scratch[:hi - lo],
                          rate=lr * r.lr_mult, decay_mult=r.decay_mult, first=r.first)
        # elementwise: whichever thread steps a chunk, the bits are the same
        pool.run(len(chunks), step, MIN_CHUNKS, pieces_per_thread=pool.pieces_for(len(chunks), MIN_CHUNKS))
        self.state["iteration"] += 1

    def flat_parameters(self, model: Module) -> FlatParameters | None:
        """The flat store of ``model``'s trainable parameters, gradients and this method's slots,
        built on first use and again whenever the model or the state no longer holds its views
        (a module frozen or replaced, weights assigned, ``load_state_dict``)."""
        flat = self.__dict__.get("_flat")
        if flat is not None and flat.current(model, self.buffers):
            return flat
        if flat is not None:
            flat.release(self.buffers)
        self._flat = FlatParameters.build(model, self.buffers, self.slot_names())
        return self._flat

    @staticmethod
    def entries(model: Module):
        """(key, weight, gradient, lr_mult, decay_mult) of each parameter an update changes."""
        for key, m, pname, w, g in trainable(model):
            yield key, w, g, m.lr_mult.get(pname, 1.0), m.decay_mult.get(pname, 1.0)

    def apply(self, entries, lr: float | None = None) -> None:
        """One step on the given arrays (whole parameters, or the slices of them a distributed
        task owns: every method's maths is elementwise) at ``lr`` (default: the schedule's rate
        now), then the iteration count moves on. With no entries it only keeps the count, as the
        driver of a distributed run does while its tasks update the weights."""
        lr = self.current_learning_rate() if lr is None else float(lr)
        self.state["learning_rate"] = lr
        for key, w, g, lr_mult, decay_mult in entries:
            self._step(key, w, g, lr, lr_mult, decay_mult)
        self.state["iteration"] += 1

    def slot_names(self) -> tuple[str, ...]:
        """The per-parameter buffers this method keeps (what parameter averaging averages)."""
        return ()

    def slot(self, key: str, name: str, like: np.ndarray, init=None) -> np.ndarray:
        """A per-parameter buffer (momentum, moments), created on first use."""
        slots = self.buffers.setdefault(key, {})
        if name not in slots:
            slots[name] = np.zeros_like(like) if init is None else np.array(init, like.dtype, copy=True)
        return slots[name]

    def scratch(self, key: str, like: np.ndarray) -> np.ndarray:
        """A temporary of the parameter's shape, reused every step (not part of the saved state)."""
        store = self.__dict__.setdefault("_scratch", {})
        buf = store.get(key)
        if buf is None or buf.shape != like.shape:
            buf = store[key] = np.empty_like(like)
        return buf

    def set_epoch(self, epoch: int) -> None:
        self.state["epoch"] = int(epoch)

    def on_validation(self, score: float) -> None:
        """Passes a validation score to a schedule that reacts to it (Plateau)."""
        if hasattr(self.learningrate_schedule, "on_validation"):
            self.learningrate_schedule.on_validation(score, self)

    def hyper_parameters(self) -> dict:
        return {"learning rate": self.current_learning_rate()}

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "hyper": self.hyper(), "state": dict(self.state),
                "schedule": _schedule_state(self.learningrate_schedule),
                "buffers": {k: dict(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, d: dict) -> None:
        if d.get("type") != type(self).__name__:
            raise ValueError(f"state of a {d.get('type')} cannot be loaded into {type(self).__name__}")
        self.state = dict(d["state"])
        self.buffers = {k: {n: np.array(a, copy=True) for n, a in v.items()} for k, v in d["buffers"].items()}
        if d.get("schedule") and self.learningrate_schedule is not None:
            self.learningrate_schedule.load_state(d["schedule"]["state"])

    def save(self, path) -> Path:
        """Writes the method, its hyper-parameters and state atomically (.npz; never pickled)."""
        path = Path(path)
        d = self.state_dict()
        arrays = {f"buf/{k}/{n}": a for k, v in d["buffers"].items() for n, a in v.items()}
        meta = {k: v for k, v in d.items() if k != "buffers"}
        meta["buffer_keys"] = {k: list(v) for k, v in d["buffers"].items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path) -> "OptimMethod":
        from . import schedules
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["__meta__"]).decode())
                buffers = {k: {n: z[f"buf/{k}/{n}"] for n in names} for k, names in meta["buffer_keys"].items()}
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a kindling optim method file ({e})") from e
        kind = OptimMethod._types.get(meta["type"])
        if kind is None:
            raise ValueError(f"{path}: unknown optim method {meta['type']!r}")
        hyper = dict(meta["hyper"])
        if meta.get("schedule"):
            hyper["learningrate_schedule"] = schedules.from_config(meta["schedule"])
        method = kind(**hyper)
        method.load_state_dict({**meta, "buffers": buffers})
        return method


def _schedule_state(schedule):
    if schedule is None:
        return None
    return {"config": schedule.config(), "state": schedule.state()}
