"""One loaded version of a model: its predictor, one inference replica per compute worker, and
the smoke test and warm-up that admit it.

Weights are read into memory (every checksum verified) and marked read-only by default rather
than memory-mapped: ``cp`` rewrites a file in place, and a mapped file truncated under a running
process kills it with SIGBUS. ``mmap=True`` (``kindling serve --mmap``) maps them instead, for
repositories written only by atomic writers (kindling train, rsync), where several server
processes then share one copy in the page cache. Either way the replicas share the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kindling.runtime.format import load
from kindling.runtime.parallel import pool
from kindling.runtime.predict import Predictor


class SmokeTestError(ValueError):
    """A snapshot that loads but does not compute what it records (shape, finite values, classes)."""


@dataclass(eq=False)  # one loaded version: compared by identity
class Servable:
    name: str
    version: int
    path: Path
    predictor: Predictor
    replicas: list[Predictor] = field(default_factory=list)

    @property
    def metadata(self) -> dict:
        return self.predictor.metadata


def _read_only(model) -> None:
    for m in model.modules():
        for store in (m.params, m.buffers):
            for a in store.values():
                a.flags.writeable = False


def smoke_test(predictor: Predictor) -> None:
    """A forward of one zero sample of the recorded input shape must give finite outputs, and a
    classifier with labels one score per label."""
    x = np.zeros(predictor.sample_shape(1), np.float32)
    try:
        outs = predictor.forward([x])
    except Exception as e:  # any failure of the model on its own recorded shape
        raise SmokeTestError(f"smoke forward on the recorded input shape {list(x.shape)} failed: {e}") from e
    for i, y in enumerate(outs):
        if not np.isfinite(y).all():
            raise SmokeTestError(f"smoke forward: output {i} holds NaN or infinity")
    classes = int(np.prod(outs[0].shape[1:]))
    if predictor.labels and classes != len(predictor.labels):
        raise SmokeTestError(f"the model gives {classes} scores but has {len(predictor.labels)} labels")


def load_servable(name: str, version: int, path: Path, *, workers: int, max_batch: int, max_pixels: int | None,
                  labels: list[str] | None = None, mmap: bool = False) -> Servable:
    """Reads, checks, smoke-tests and warms one version: a replica per worker, each run once, so
    that the first request finds its code paths warm and its weight layouts built."""
    model = load(path, mmap=mmap)
    if labels and not model.metadata.get("labels"):
        model.metadata["labels"] = list(labels)
    _read_only(model)
    predictor = Predictor(model, batch_size=max_batch, max_pixels=max_pixels)
    if not predictor.input_shape:
        raise SmokeTestError("the snapshot records no input shape to smoke-test and warm up on")
    with pool.serial():  # beside live traffic: one core
        smoke_test(predictor)  # also builds the evaluate-mode weight layouts that replicas share
        replicas = [predictor.replica() for _ in range(max(1, workers))]
        for r in replicas:
            r.forward([np.zeros(predictor.sample_shape(1), np.float32)])
    return Servable(name, version, Path(path), predictor, replicas)
