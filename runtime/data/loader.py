"""Batches from a data set: shuffled each epoch with a seed, decoded by background threads so
decoding overlaps compute, and deterministic for a seed (each sample's random draws come from its
own generator, seeded by (seed, epoch, index), so thread timing never changes a result)."""
from __future__ import annotations

import logging
import weakref
from typing import NamedTuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import DataError

log = logging.getLogger("kindling.data")


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's random preprocessing (crops, flips) in one epoch."""
    return np.random.default_rng([seed, epoch, int(index)])


def _load(dataset, i, seed, epoch, strict):
    try:
        x, y = dataset.load(int(i), sample_rng(seed, epoch, i))
        return np.asarray(x, np.float32), y
    except Exception as e:  # a corrupt image: skipped with a warning naming the file
        if strict:
            raise DataError(f"{dataset.source(int(i))}: cannot load: {e}") from e
        _warn_once(dataset, int(i), e)
        return None


_skipped: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _warn_once(dataset, i: int, error) -> None:
    """A bad file is named once per data set, not again in every epoch of a long run."""
    try:
        seen = _skipped.setdefault(dataset, set())
    except TypeError:  # a data set that cannot be weakly referenced: warn every time
        seen = set()
    if i not in seen:
        seen.add(i)
        log.warning("skipping %s: %s (not repeated in later epochs)", dataset.source(i), error)


class Batch(NamedTuple):
    """A batch, with where its samples came from: their data set indices (``indices``, bad images
    left out) and the batch's number in its epoch (``position``)."""
    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    position: int


def batches(dataset, batch_size: int, **kwargs):
    """Yields (x, y) batches of the epoch, beginning with batch number ``start`` (for resuming);
    the keywords are ``indexed_batches``'."""
    for b in indexed_batches(dataset, batch_size, **kwargs):
        yield b.x, b.y


def indexed_batches(dataset, batch_size: int, *, seed: int = 0, epoch: int = 1, shuffle: bool = True, start: int = 0,
                    workers: int = 2, prefetch: int = 2, strict: bool = False):
    """Yields the epoch's ``Batch``es from batch number ``start`` on; a batch whose every image is
    unreadable is left out (the next batch keeps its own position)."""
    order = epoch_order(len(dataset), seed, epoch, shuffle)
    chunks = [order[i:i + batch_size] for i in range(start * batch_size, len(order), batch_size)]
    if not chunks:
        return
    if hasattr(dataset, "take"):  # in-memory: one fancy-indexing gather per batch
        for k, chunk in enumerate(chunks):
            x, y = dataset.take(chunk)
            yield Batch(x, y, chunk, start + k)
        return

    def assemble(chunk, loaded, k):
        kept = [(i, s) for i, s in zip(chunk, loaded) if s is not None]
        if not kept:
            return None
        return Batch(np.stack([s[0] for _, s in kept]), np.asarray([s[1] for _, s in kept]),
                     np.asarray([i for i, _ in kept]), start + k)

    if workers <= 0:
        for k, chunk in enumerate(chunks):
            b = assemble(chunk, [_load(dataset, i, seed, epoch, strict) for i in chunk], k)
            if b is not None:
                yield b
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="kindling-data") as pool:
        # one sample per task so every worker decodes; batches assembled in order
        def submit(chunk):
            return [pool.submit(_load, dataset, i, seed, epoch, strict) for i in chunk]
        pending = [submit(c) for c in chunks[:prefetch + 1]]
        nxt = prefetch + 1
        k = 0
        while pending:
            futures = pending.pop(0)
            if nxt < len(chunks):
                pending.append(submit(chunks[nxt]))
                nxt += 1
            b = assemble(chunks[k], [f.result() for f in futures], k)
            k += 1
            if b is not None:
                yield b
