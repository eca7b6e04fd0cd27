"""Batch scoring on Spark: a DataFrame of encoded images in, one row of top-k classes per image out.

    from kindling.runtime.spark import predict
    images = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load("hdfs:///photos")
    scores = predict(images.select("path", "content"), "model.kdl", top_k=5)
    scores.write.parquet("hdfs:///photos-scored")

Each row of the result keeps the input's columns (less the image bytes) and adds ``top_k_indices``,
``top_k_labels``, ``top_k_scores``, ``model_version`` and ``error``. An image that cannot be read
(empty, truncated, corrupt, not an image, over the pixel limit) gets its row with ``error`` set to
"<kind>: <what the decoder said>" and null predictions; with ``fail_fast=True`` it fails the job
instead. Data reaches the Python workers as Arrow batches capped by bytes
(``spark.sql.execution.arrow.maxBytesPerBatch``), each decoded and run in batches of
``batch_size`` through the runtime's one batched-predict path (``Predictor``), so a row's numbers
are those ``kindling run`` and the server give for the same file, whatever the partitioning.
"""
from __future__ import annotations

import math
import re
import socket
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from .. import blas
from ..data.transforms import ImageError, ImageTooLarge
from . import preflight
from .shipping import ShippedModel, ship

MB = 1 << 20
PROBE_SECONDS = 300.0
_probed: dict[tuple, tuple[float, list]] = {}
DEFAULT_BATCH_BYTES = 32 * MB
PREDICTION_FIELDS = "top_k_indices array<int>, top_k_labels array<string>, top_k_scores array<float>, " \
                    "model_version string, error string"
#: what ``kindling score`` writes: one row per input file
SCHEMA = "path string, " + PREDICTION_FIELDS

# An unreadable image's kind, from its decoder's message (first match wins); "{0}" is the group.
ERROR_KINDS = [
    (re.compile(r"^no bytes|not an image that Pillow can read \(no bytes\)"), "empty file"),
    (re.compile(r"limit of ([\d,]+)"), "over {0} pixels"),
    (re.compile(r"^(\w+) data cannot be decoded \(.*truncated"), "truncated {0}"),
    (re.compile(r"^(\w+) data cannot be decoded"), "corrupt {0}"),
    (re.compile(r"^a corrupt (\w+) file"), "corrupt {0}"),
    (re.compile(r"^not an image"), "not an image"),
    (re.compile(r"^a broken image header"), "broken image header"),
]


class ScoringError(ValueError):
    """An image that failed a ``fail_fast`` run, named by its path."""


def error_kind(message: str) -> str:
    """The short kind of an image error message ("truncated JPEG", "not an image", ...)."""
    for pattern, kind in ERROR_KINDS:
        found = pattern.search(message)
        if found:
            return kind.format(*(g.replace(",", "") for g in found.groups()))
    return "unreadable image"


def describe(error: BaseException) -> str:
    """The ``error`` column for an image that failed: "<kind>: <message>"."""
    message = " ".join(str(error).split())
    kind = error_kind(message) if isinstance(error, (ImageError, OSError)) else "bad image"
    if isinstance(error, ImageTooLarge) and not kind.startswith("over"):
        kind = "over the pixel limit"
    return f"{kind}: {message}"


@dataclass(frozen=True)
class ScorePlan:
    """What each task is given: the model's file and version, and how to score."""
    model: ShippedModel
    image_col: str
    top_k: int
    batch_size: int
    max_pixels: int | None
    fail_fast: bool
    key_col: str | None  # a column naming the row in fail_fast errors (e.g. "path")


def score_frame(frame, predictor, plan: ScorePlan):
    """One pandas batch scored: the input's columns less the image, and the prediction columns."""
    import pandas as pd
    n = len(frame)
    indices, labels, scores, errors = [None] * n, [None] * n, [None] * n, [None] * n
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        out = predictor.forward([predictor.check(np.stack([x for _, x in pending]))])[0]
        for (row, _), c in zip(pending, predictor.top_k(out, plan.top_k)):
            indices[row], labels[row], scores[row] = c.indices, c.labels, c.scores
        pending.clear()

    keys = frame[plan.key_col] if plan.key_col else None
    for row, content in enumerate(frame[plan.image_col]):
        try:
            if content is None or len(content) == 0:
                raise ImageError("no bytes: an empty file")
            pending.append((row, predictor.pipeline(bytes(content))))
        except (ValueError, OSError) as e:  # the image's own trouble (decode, pixel limit, size)
            if plan.fail_fast:
                where = keys.iloc[row] if keys is not None else f"row {row} of a batch"
                raise ScoringError(f"{where}: {e} (fail_fast: without it the row gets an error instead)") from e
            errors[row] = describe(e)
        if len(pending) == predictor.batch_size:
            flush()
    flush()
    out = frame.drop(columns=[plan.image_col])
    return out.assign(top_k_indices=pd.Series(indices, dtype=object, index=frame.index),
                      top_k_labels=pd.Series(labels, dtype=object, index=frame.index),
                      top_k_scores=pd.Series(scores, dtype=object, index=frame.index),
                      model_version=plan.model.version,
                      error=pd.Series(errors, dtype=object, index=frame.index))


def _score_partition(plan: ScorePlan, frames):
    from pyspark import TaskContext
    ctx = TaskContext.get()
    blas.set_threads(max(1, int(ctx.cpus())) if ctx else 1)
    predictor = plan.model.predictor(plan.batch_size, plan.max_pixels)
    for frame in frames:
        yield score_frame(frame, predictor, plan)


# ---- the driver's half ---------------------------------------------------------------------------
def _probe(_):
    from pyspark import TaskContext
    ctx = TaskContext.get()
    yield {"executor": socket.gethostname(), "memory": preflight.worker_memory(),
           "threads": int(ctx.cpus()) if ctx else 1, "blas": blas.backend().backend.name}


def memory_need(predictor, batch_size: int, batch_bytes: int) -> dict:
    """Bytes one scoring task holds: the model, an Arrow batch and its pandas copy, a decoded batch
    and its activations."""
    model = predictor.model
    params = sum(np.asarray(w).nbytes for _, w, _ in model.named_parameters())
    buffers = sum(np.asarray(v).nbytes for m in model.modules() for v in m.buffers.values())
    shape = predictor.sample_shape(1)[1:]
    per_sample = preflight.activation_bytes(model, shape)
    return {"model": params + buffers, "arrow batches": 2 * batch_bytes,
            "decoded batch": batch_size * 4 * math.prod(shape),
            "activations": None if per_sample is None else per_sample * batch_size}


def executors(sc) -> list[dict]:
    """What each task slot's Python worker reports of its memory (one probe task per slot; the
    answer is kept for PROBE_SECONDS per SparkContext)."""
    slots = preflight.task_slots(sc) or 1
    key = (sc.applicationId, slots)
    seen = _probed.get(key)
    if seen is None or time.monotonic() - seen[0] > PROBE_SECONDS:
        seen = _probed[key] = (time.monotonic(), sc.parallelize(range(slots), slots).mapPartitions(_probe).collect())
    return seen[1]


def check_memory(sc, predictor, batch_size: int, batch_bytes: int) -> list[str]:
    """The pre-flight: each executor's memory against what its scoring tasks will hold; raises
    ValueError naming the setting to raise."""
    return preflight.check_memory(executors(sc), memory_need(predictor, batch_size, batch_bytes))


def output_schema(df, image_col: str):
    from pyspark.sql.types import StructType
    predictions = StructType.fromDDL(PREDICTION_FIELDS)
    return StructType([f for f in df.schema.fields if f.name != image_col] + list(predictions.fields))


def predict(df, model, image_col: str = "content", top_k: int = 5, *, batch_size: int = 32,
            max_batch_bytes: int = DEFAULT_BATCH_BYTES, fail_fast: bool = False, max_pixels: int | None = None,
            memory_check: bool = True):
    """Scores the encoded images in ``df[image_col]`` with ``model`` (a .kdl path or a Module):
    a DataFrame of the input's other columns plus the prediction columns (see the module doc).

    batch_size       images per forward pass (any value: a partition's last batch is partial)
    max_batch_bytes  the cap on an Arrow batch of image bytes sent to a Python worker (sets the
                     session's spark.sql.execution.arrow.maxBytesPerBatch)
    fail_fast        an unreadable image fails the job instead of getting an error row
    max_pixels       the decoder's pixel limit (default: KINDLING_MAX_PIXELS or kindling's default)
    memory_check     run the memory pre-flight (one small job) before returning
    """
    from pyspark.sql.types import BinaryType
    if image_col not in df.columns:
        raise ValueError(f"no column {image_col!r} in the DataFrame (columns: {', '.join(df.columns)})")
    if not isinstance(df.schema[image_col].dataType, BinaryType):
        raise ValueError(f"column {image_col!r} is {df.schema[image_col].dataType.simpleString()}, not binary "
                         f"(encoded image bytes); for float tensors use kindling.runtime.spark.predict_udf")
    if batch_size <= 0 or top_k <= 0 or max_batch_bytes <= 0:
        raise ValueError(f"batch_size, top_k and max_batch_bytes must be positive, got {batch_size}, {top_k}, "
                         f"{max_batch_bytes}")
    spark = df.sparkSession
    sc = spark.sparkContext
    shipped, predictor = ship(sc, model)
    if predictor.pipeline is None:
        raise ValueError(f"{model}: the model records no image preprocessing or 4-D input shape, so images "
                         f"cannot be fed to it")
    if memory_check:
        check_memory(sc, predictor, batch_size, max_batch_bytes)
    spark.conf.set("spark.sql.execution.arrow.maxBytesPerBatch", str(int(max_batch_bytes)))
    slots = preflight.task_slots(sc) or 1
    if df.rdd.getNumPartitions() < slots:
        df = df.repartition(slots)
    plan = ScorePlan(shipped, image_col, int(top_k), int(batch_size), max_pixels, fail_fast,
                     "path" if "path" in df.columns else None)
    return df.mapInPandas(partial(_score_partition, plan), output_schema(df, image_col))
