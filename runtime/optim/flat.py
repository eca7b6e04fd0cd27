"""The trainable parameters of a model, their gradients and an optim method's slots (momentum,
moments) as views into one contiguous float32 buffer each, so that an update is a handful of numpy
calls over the whole model instead of a handful per array (issue 16).

``FlatParameters.build`` copies every parameter that an update changes (not frozen, with a
gradient) into the buffers and puts views of them back into ``module.params`` / ``module.grads``
and ``method.buffers``: layers keep reading and accumulating into the same dicts, in place, and
checkpoints keep their per-parameter format. Parameters are laid out grouped by
(lr_mult, decay_mult), so the update runs once per distinct pair (almost always one run).

The store is only valid while nothing replaced those arrays: ``current`` checks by identity
(frozen or unfrozen modules, a new head, weights assigned by a converter or ``load_state_dict``
of the method) and the method builds a new store when it is not. A parameter that leaves the
store gets its own copy back (``release``), so a frozen backbone does not pin the old buffer.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

_byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds  # moved in numpy 2.0


def _libc_trim():
    """glibc's ``malloc_trim``, or None elsewhere."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_trim()
#: Bytes of old parameters and gradients released between two trims while a store is built.
_TRIM_EVERY = 16 << 20


def _return_freed_memory() -> None:
    """Hands the heap's free pages back to the system. The old per-parameter arrays a store
    replaces mostly sit in malloc's heap, not in pages of their own, so freeing them lowers no
    peak until trimmed: ResNet-18's first update otherwise raised the process's high-water mark
    by the whole model twice over."""
    if _malloc_trim is not None:
        _malloc_trim(0)


@dataclass(frozen=True)
class FlatEntry:
    key: str            # "conv1.weight", the method's slot key
    module: object
    name: str           # "weight"
    start: int          # element offsets in the flat buffers
    stop: int
    lr_mult: float
    decay_mult: float


@dataclass(frozen=True)
class Run:
    """A contiguous range of the buffers whose parameters share their multipliers."""
    start: int
    stop: int
    lr_mult: float
    decay_mult: float
    first: bool = False  # no slot existed yet for these parameters (SGD's first momentum step)


def trainable(model):
    """(key, module, name, weight, gradient) of each parameter an update changes, in walk order."""
    for m in model.modules():
        if m.frozen:
            continue
        for name, w in m.params.items():
            g = m.grads.get(name)
            if g is not None:
                yield f"{m.name}.{name}", m, name, w, g


def flattenable(found) -> bool:
    """Whether the parameters can become views of one float32 buffer without changing what an
    update does: float32 gradients of the weight's shape, no array (or memory) used twice."""
    spans = []
    for _, _, _, w, g in found:
        if w.dtype != np.float32 or g.dtype != np.float32 or g.shape != w.shape:
            return False
        for a in (w, g):
            lo, hi = _byte_bounds(a)
            spans.append((lo, hi))
    spans.sort()
    return all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))


class FlatParameters:
    """Flat params, grads and slots of one model for one optim method (the update's scratch is a
    chunk per thread, runtime/workspace.py)."""

    def __init__(self, model, buffers: dict, slot_names: tuple[str, ...], found: list):
        order = sorted(range(len(found)), key=lambda i: (found[i][1].lr_mult.get(found[i][2], 1.0),
                                                         found[i][1].decay_mult.get(found[i][2], 1.0)))
        self.size = sum(found[i][3].size for i in order)
        self.params = np.empty(self.size, np.float32)
        self.grads = np.empty(self.size, np.float32)
        self.slots = {s: np.zeros(self.size, np.float32) for s in slot_names}
        self.entries: list[FlatEntry] = []
        fresh = []
        start = released = 0
        for i in order:
            key, m, name, w, g = found[i]
            shape, stop = w.shape, start + w.size
            e = FlatEntry(key, m, name, start, stop, m.lr_mult.get(name, 1.0), m.decay_mult.get(name, 1.0))
            self.params[start:stop] = w.reshape(-1)
            self.grads[start:stop] = g.reshape(-1)
            m.params[name] = self.params[start:stop].reshape(shape)
            m.grads[name] = self.grads[start:stop].reshape(shape)
            # the old arrays go now, not after the last copy, and their memory back to the system
            # every few MB: the peak of a build is then one model, not two
            found[i] = (key, m, name, None, None)
            released += w.nbytes + g.nbytes
            del w, g
            if released >= _TRIM_EVERY:
                _return_freed_memory()
                released = 0
            own = buffers.setdefault(key, {}) if slot_names else {}
            fresh.append(bool(slot_names) and not all(s in own for s in slot_names))
            for s, flat in self.slots.items():
                old = own.get(s)
                if old is not None:
                    if np.size(old) != stop - start:
                        raise ValueError(f"optimizer slot {key}/{s} has {np.size(old)} values, the parameter "
                                         f"{stop - start}: the state belongs to another model")
                    flat[start:stop] = np.reshape(old, -1)
                own[s] = flat[start:stop].reshape(shape)
            self.entries.append(e)
            start = stop
        _return_freed_memory()
        self.runs = _runs(self.entries, [False] * len(self.entries))
        self.first_runs = _runs(self.entries, fresh) if any(fresh) else None
        self._chunks = None
        # identity checks, in the order the model walk yields the parameters
        self._walk = [(m, m.name, name, m.params[name], m.grads[name], m.lr_mult.get(name, 1.0),
                       m.decay_mult.get(name, 1.0)) for _, m, name, _, _ in found]
        self._slot_checks = [(buffers, e.key, buffers[e.key], s, buffers[e.key][s])
                             for e in self.entries for s in slot_names]
        self._buffers = buffers

    @classmethod
    def build(cls, model, buffers: dict, slot_names: tuple[str, ...]) -> "FlatParameters | None":
        """The store for ``model``, or None when its parameters cannot share one buffer (then the
        method steps each array on its own, as before)."""
        found = list(trainable(model))
        if not found or not flattenable(found):
            return None
        return cls(model, buffers, tuple(slot_names), found)

    def current(self, model, buffers: dict) -> bool:
        """True while the model and the method still hold exactly this store's views."""
        walk, n, i = self._walk, len(self._walk), 0
        for m in model.modules():
            if m.frozen:
                continue
            grads = m.grads
            for name, w in m.params.items():
                g = grads.get(name)
                if g is None:
                    continue
                if i == n:
                    return False
                wm, mname, pname, wv, gv, lm, dm = walk[i]
                if (wm is not m or w is not wv or g is not gv or pname != name or mname != m.name
                        or m.lr_mult.get(name, 1.0) != lm or m.decay_mult.get(name, 1.0) != dm):
                    return False
                i += 1
        if i != n or buffers is not self._buffers:
            return False
        return all(b.get(key) is own and own.get(s) is view for b, key, own, s, view in self._slot_checks)

    def take_chunks(self, chunk: int) -> list[tuple[int, int, Run]]:
        """(start, stop, run) of the next update's pieces of at most ``chunk`` elements; the first
        update after building steps fresh slots apart."""
        runs, self.first_runs = self.first_runs or self.runs, None
        if runs is self.runs and self._chunks is not None and self._chunks[0] == chunk:
            return self._chunks[1]
        pieces = [(lo, min(lo + chunk, r.stop), r) for r in runs for lo in range(r.start, r.stop, chunk)]
        if runs is self.runs:
            self._chunks = (chunk, pieces)
        return pieces

    def release(self, buffers: dict) -> None:
        """Gives every array still viewing this store's buffers its own copy, so that a rebuilt
        store (or a parameter that left it) does not keep these buffers alive."""
        for e in self.entries:
            for d, flat in ((e.module.params, self.params), (e.module.grads, self.grads)):
                a = d.get(e.name)
                if a is not None and a.base is flat:
                    d[e.name] = a.copy()
            own = buffers.get(e.key, {})
            for s, flat in self.slots.items():
                a = own.get(s)
                if a is not None and a.base is flat:
                    own[s] = a.copy()


def _runs(entries: list[FlatEntry], fresh: list[bool]) -> list[Run]:
    runs: list[Run] = []
    for e, f in zip(entries, fresh):
        last = runs[-1] if runs else None
        if last is not None and (last.lr_mult, last.decay_mult, last.first) == (e.lr_mult, e.decay_mult, f):
            runs[-1] = Run(last.start, e.stop, e.lr_mult, e.decay_mult, f)
        else:
            runs.append(Run(e.start, e.stop, e.lr_mult, e.decay_mult, f))
    return runs
