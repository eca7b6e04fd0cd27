"""Batches from a data set: shuffled each epoch with a seed, decoded by background threads so
decoding overlaps compute, and deterministic for a seed (each sample's random draws come from its
own generator, seeded by (seed, epoch, index), so thread timing never changes a result)."""
from __future__ import annotations

import logging
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import DataError

log = logging.getLogger("kindling.data")


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def _load(dataset, i, seed, epoch, strict):
    try:
        x, y = dataset.load(int(i), np.random.default_rng([seed, epoch, int(i)]))
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


def batches(dataset, batch_size: int, *, seed: int = 0, epoch: int = 1, shuffle: bool = True, start: int = 0,
            workers: int = 2, prefetch: int = 2, strict: bool = False):
    """Yields (x, y) batches of the epoch, beginning with batch number ``start`` (for resuming)."""
    order = epoch_order(len(dataset), seed, epoch, shuffle)
    chunks = [order[i:i + batch_size] for i in range(start * batch_size, len(order), batch_size)]
    if not chunks:
        return
    if hasattr(dataset, "take"):  # in-memory: one fancy-indexing gather per batch
        for chunk in chunks:
            yield dataset.take(chunk)
        return

    def make(chunk):
        loaded = [s for s in (_load(dataset, i, seed, epoch, strict) for i in chunk) if s is not None]
        if not loaded:
            return None
        return np.stack([x for x, _ in loaded]), np.asarray([y for _, y in loaded])

    if workers <= 0:
        for chunk in chunks:
            b = make(chunk)
            if b is not None:
                yield b
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="kindling-data") as pool:
        # one sample per task so every worker decodes; batches assembled in order
        def submit(chunk):
            return [pool.submit(_load, dataset, i, seed, epoch, strict) for i in chunk]
        pending = [submit(c) for c in chunks[:prefetch + 1]]
        nxt = prefetch + 1
        while pending:
            futures = pending.pop(0)
            if nxt < len(chunks):
                pending.append(submit(chunks[nxt]))
                nxt += 1
            loaded = [s for s in (f.result() for f in futures) if s is not None]
            if loaded:
                yield np.stack([x for x, _ in loaded]), np.asarray([y for _, y in loaded])
