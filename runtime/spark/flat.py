"""The trainable parameters of a model as one float32 vector that the tasks exchange, each task
owning one contiguous shard (``exchange.shard_bounds``), as BigDL's parameter manager did.

Every shard begins with ``HEADER`` slots that are not parameters: each task writes its record
count and loss sum there in every shard, so ``reduce_scatter`` hands every owner the batch's
total count and loss with the gradient sums, and one step needs one reduce-scatter and one
all-gather, nothing else. A parameter may straddle two shards: the update maths is elementwise,
so each owner steps its slice (``OptimMethod.apply`` on views).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exchange import shard_bounds

HEADER = 2  # [records, loss sum]


@dataclass(frozen=True)
class Param:
    key: str       # "conv1.weight"
    module: object
    name: str      # "weight"
    start: int     # offset in the parameter numbering (no header slots)
    size: int


class FlatLayout:
    """Where each trainable parameter lives in the exchanged vector of ``world`` shards."""

    def __init__(self, model, world: int):
        self.world = world
        self.params: list[Param] = []
        start = 0
        for m in model.modules():
            if m.frozen:
                continue
            for name, w in m.params.items():
                self.params.append(Param(f"{m.name}.{name}", m, name, start, w.size))
                start += w.size
        self.size = start  # parameters
        self.length = start + HEADER * world  # the vector, header slots included
        # shard r of the vector: [lo, hi); its first HEADER slots are the header, the rest holds
        # parameters [plo, phi) of the numbering
        self.shards = [shard_bounds(self.length, world, r) for r in range(world)]
        self.param_bounds = []
        done = 0
        for lo, hi in self.shards:
            n = max(0, hi - lo - HEADER)
            self.param_bounds.append((done, done + n))
            done += n
        if any(hi - lo < HEADER for lo, hi in self.shards):
            raise ValueError(f"{world} tasks for {self.size} parameters: every task needs at least "
                             f"{HEADER} vector slots; use fewer tasks")

    def check_contiguous(self) -> None:
        bad = [p.key for p in self.params if not p.module.params[p.name].flags.c_contiguous]
        if bad:
            raise ValueError(f"parameters {', '.join(bad)} are not contiguous arrays")

    def vector(self) -> np.ndarray:
        return np.zeros(self.length, np.float32)

    def _pieces(self, plo: int, phi: int):
        """(param, lo, hi) of each parameter's elements within numbering range [plo, phi)."""
        for p in self.params:
            lo, hi = max(plo, p.start), min(phi, p.start + p.size)
            if lo < hi:
                yield p, lo - p.start, hi - p.start

    def _views(self, vec: np.ndarray):
        """(param, view of vec) for every parameter (header slots skipped)."""
        for r, (lo, _) in enumerate(self.shards):
            plo, phi = self.param_bounds[r]
            for p, a, b in self._pieces(plo, phi):
                off = lo + HEADER + (p.start + a - plo)
                yield p, a, b, vec[off:off + (b - a)]

    def write(self, vec: np.ndarray, source="grads", scale: float = 1.0) -> None:
        """Copies every parameter's gradient (``"grads"``), weight (``"params"``) or other array
        (``source(param) -> array or None``) into ``vec``, times ``scale``; a missing array (a
        layer the backward pass did not reach) counts as zero."""
        get = source if callable(source) else (lambda p: getattr(p.module, source).get(p.name))
        for p, a, b, view in self._views(vec):
            arr = get(p)
            if arr is None:
                view.fill(0)
            elif scale == 1.0:
                view[:] = arr.reshape(-1)[a:b]
            else:
                np.multiply(arr.reshape(-1)[a:b], np.float32(scale), out=view)

    def read_weights(self, vec: np.ndarray) -> None:
        """Copies the weights in ``vec`` into the model's parameters."""
        self.read(vec, lambda p: p.module.params[p.name])

    def read(self, vec: np.ndarray, target) -> None:
        """Copies ``vec`` into ``target(param)``, an array of the parameter's shape."""
        for p, a, b, view in self._views(vec):
            target(p).reshape(-1)[a:b] = view

    def write_header(self, vec: np.ndarray, values) -> None:
        for lo, _ in self.shards:
            vec[lo:lo + HEADER] = values

    def owned_entries(self, rank: int, shard: np.ndarray):
        """OptimMethod entries for the parameters rank owns: views of the model's weights and of
        the reduced gradient ``shard`` (this rank's slice of the vector, header first)."""
        plo, phi = self.param_bounds[rank]
        for p, a, b in self._pieces(plo, phi):
            off = HEADER + p.start + a - plo
            w = p.module.params[p.name].reshape(-1)[a:b]
            yield (p.key, w, shard[off:off + (b - a)], p.module.lr_mult.get(p.name, 1.0),
                   p.module.decay_mult.get(p.name, 1.0))

    def write_owned_weights(self, rank: int, vec: np.ndarray) -> None:
        """Puts this rank's (updated) parameters into its shard of ``vec`` for the all-gather."""
        lo, _ = self.shards[rank]
        plo, phi = self.param_bounds[rank]
        for p, a, b in self._pieces(plo, phi):
            off = lo + HEADER + p.start + a - plo
            vec[off:off + (b - a)] = p.module.params[p.name].reshape(-1)[a:b]

    def owned(self, rank: int):
        """(key, start, stop) of each parameter slice rank owns (element offsets in the parameter)."""
        plo, phi = self.param_bounds[rank]
        return [(p.key, a, b) for p, a, b in self._pieces(plo, phi)]
