"""A model on its way to the executors, and its one copy in each Python worker.

The driver stages the .kdl file under a name that carries its version (a hash of its bytes) and
registers it with ``SparkContext.addFile``: Spark's file server sends it to each executor once, in
a stream, however many tasks and stages read it (nothing is broadcast through the JVM heap and
nothing is pickled into task closures). On an executor, a Python worker memory-maps it into a
``Predictor`` the first time a task asks for that version and keeps it for the tasks that worker
runs next (Spark reuses Python workers: ``spark.python.worker.reuse``, on by default); the pages
are shared through the page cache by every worker on the host.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .. import format as kdl
from ..module import Module
from ..predict import Predictor

KEEP = 2  # model versions a worker keeps loaded (one in use, one on its way in or out)

# driver, per SparkContext (application id) and version: the file registered with addFile, and
# the accumulator counting the workers' loads
_staged: dict[tuple[str, str], Path] = {}
_loads: dict[tuple[str, str], object] = {}
_loaded: "OrderedDict[tuple, Predictor]" = OrderedDict()  # worker: (version, max_pixels) -> Predictor
_stage_dir: Path | None = None


@dataclass(frozen=True)
class ShippedModel:
    """What a task closure carries: the file's name in SparkFiles, its version, and an optional
    accumulator counting loads (one per worker per version)."""
    file_name: str
    version: str
    loads: object = None

    def predictor(self, batch_size: int, max_pixels: int | None = None) -> Predictor:
        """This worker's Predictor for the model (loaded once per version), with ``batch_size``."""
        key = (self.version, max_pixels)
        predictor = _loaded.get(key)
        if predictor is None:
            from pyspark import SparkFiles
            predictor = Predictor.load(SparkFiles.get(self.file_name), max_pixels=max_pixels)
            _loaded[key] = predictor
            while len(_loaded) > KEEP:
                _loaded.popitem(last=False)
            if self.loads is not None:
                self.loads.add(1)
        _loaded.move_to_end(key)
        twin = Predictor.__new__(Predictor)
        twin.__dict__.update(predictor.__dict__)  # same model and pipeline, its own batch size
        twin.batch_size = int(batch_size)
        return twin


def file_version(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _directory() -> Path:
    global _stage_dir
    if _stage_dir is None:
        _stage_dir = Path(tempfile.mkdtemp(prefix="kindling-models-"))
        atexit.register(shutil.rmtree, _stage_dir, True)
    return _stage_dir


def ship(sc, model, count_loads: bool = True) -> tuple[ShippedModel, Predictor]:
    """Registers ``model`` (a .kdl path or a Module) with ``sc.addFile`` under a versioned name and
    returns (what tasks carry, the driver's own memory-mapped Predictor for its metadata)."""
    if isinstance(model, Module):
        tmp = _directory() / f"unsaved-{os.getpid()}-{id(model)}.kdl"
        source = kdl.save(model, tmp)
    else:
        source = Path(model)
        if not source.is_file():
            raise ValueError(f"{model}: no such model file")
    version = file_version(source)
    key = (sc.applicationId, version)
    staged = _staged.get(key)
    if staged is None or not staged.exists():
        staged = _directory() / sc.applicationId / f"kindling-{version}.kdl"
        staged.parent.mkdir(exist_ok=True)
        if isinstance(model, Module):
            os.replace(source, staged)
        else:
            try:
                os.link(source, staged)
            except OSError:  # another file system
                shutil.copyfile(source, staged)
        sc.addFile(str(staged))
        _staged[key] = staged
    elif isinstance(model, Module):
        source.unlink(missing_ok=True)
    loads = _loads.setdefault(key, sc.accumulator(0)) if count_loads else None
    return ShippedModel(staged.name, version, loads), Predictor.load(staged)


def load_count(sc, version: str) -> int:
    """How many times Python workers of this SparkContext have loaded this model version (as far
    as finished tasks have reported): once per worker when the cache does its job."""
    loads = _loads.get((sc.applicationId, version))
    return int(loads.value) if loads is not None else 0
