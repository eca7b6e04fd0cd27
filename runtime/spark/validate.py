"""Validation on Spark (BigDL's ``Validator(model, test_set).test(methods)``): each task runs its
images through the runtime's one batched-predict path and scores its batches with the validation
methods; only each task's sums (a few numbers per method) come back to the driver, where they add
up to what ``Model.evaluate`` gives on the same images. Unreadable images are left out, as the
local loader leaves them out, and counted."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from .. import blas
from ..optim.metrics import RESULT_TYPES
from ..optim.validation import Evaluation, classification_metrics
from .shipping import ShippedModel, ship

SKIPPED = -1  # the ``metric`` of the row that counts a task's unreadable images
RESULT_SCHEMA = "metric int, kind string, total double, count long"


@dataclass(frozen=True)
class EvalPlan:
    model: ShippedModel
    image_col: str
    label_col: str
    batch_size: int
    max_pixels: int | None
    metrics: list


def _evaluate_partition(plan: EvalPlan, frames):
    import pandas as pd
    from pyspark import TaskContext
    ctx = TaskContext.get()
    blas.set_threads(max(1, int(ctx.cpus())) if ctx else 1)
    predictor = plan.model.predictor(plan.batch_size, plan.max_pixels)
    totals, skipped = [None] * len(plan.metrics), 0
    xs, ys = [], []

    def flush():
        out = predictor.forward([predictor.check(np.stack(xs))])[0]
        target = np.asarray(ys)
        for i, m in enumerate(plan.metrics):
            r = m(out, target)
            totals[i] = r if totals[i] is None else totals[i] + r
        xs.clear()
        ys.clear()

    for frame in frames:
        for content, label in zip(frame[plan.image_col], frame[plan.label_col]):
            try:
                xs.append(predictor.pipeline(bytes(content)))
            except (ValueError, OSError):  # unreadable: left out, as the local loader does
                skipped += 1
                continue
            ys.append(int(label))
            if len(xs) == plan.batch_size:
                flush()
    if xs:
        flush()
    rows = [(i, type(r).__name__, float(r.total), int(r.count)) for i, r in enumerate(totals) if r is not None]
    yield pd.DataFrame(rows + [(SKIPPED, "", 0.0, skipped)], columns=["metric", "kind", "total", "count"])


def evaluate(df, model, metrics=None, *, batch_size: int = 32, image_col: str = "content",
             label_col: str = "label", max_pixels: int | None = None) -> Evaluation:
    """``model`` (a .kdl path or a Module) scored on ``df``'s encoded images and class indices
    (``image_folder_dataframe`` makes such a DataFrame) with ``metrics`` (default: Top-1, Top-5 and
    the loss, ``classification_metrics``). The result's ``skipped`` counts unreadable images."""
    missing = [c for c in (image_col, label_col) if c not in df.columns]
    if missing:
        raise ValueError(f"no column(s) {missing} in the DataFrame (columns: {', '.join(df.columns)})")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    shipped, predictor = ship(df.sparkSession.sparkContext, model)
    if predictor.pipeline is None:
        raise ValueError(f"{model}: the model records no image preprocessing or 4-D input shape")
    metrics = list(metrics) if metrics else classification_metrics(predictor.model)
    plan = EvalPlan(shipped, image_col, label_col, int(batch_size), max_pixels, metrics)
    rows = df.select(image_col, label_col).mapInPandas(partial(_evaluate_partition, plan), RESULT_SCHEMA).collect()
    totals: dict[int, object] = {}
    skipped = 0
    for metric, kind, total, count in rows:
        if metric == SKIPPED:
            skipped += count
            continue
        r = RESULT_TYPES[kind](total, count)
        totals[metric] = r if metric not in totals else totals[metric] + r
    result = Evaluation((m, totals[i]) for i, m in enumerate(metrics) if i in totals)
    result.skipped = skipped
    return result
