"""A column function over float tensors, in the manner of Spark's ``predict_batch_udf``:

    from kindling.runtime.spark import predict_udf
    classify = predict_udf("model.kdl", batch_size=64)
    df.select("id", classify("features").alias("probabilities"))

The column holds one preprocessed sample per row, as a flat array<float> (C*H*W values, reshaped
to the model's recorded input shape) or nested arrays of that shape. The result is the model's
first output per row, flattened (array<float>; probabilities for a model ending in a softmax or a
log-softmax, as ``Predictor.scores`` gives them). Batches go through the runtime's one
batched-predict path; the model is loaded once per Python worker per version (see shipping.py).
"""
from typing import Iterator

from dataclasses import dataclass

import numpy as np

from .. import blas
from .shipping import ShippedModel, ship


@dataclass(frozen=True)
class UdfPlan:
    model: ShippedModel
    batch_size: int


def _flat(value) -> np.ndarray:
    """A row's array, flat: Arrow gives nested arrays as arrays of arrays."""
    a = np.asarray(value)
    if a.dtype == object:
        a = np.concatenate([_flat(v) for v in a]) if len(a) else np.zeros(0, np.float32)
    return a.astype(np.float32, copy=False).reshape(-1)


def _predict_series(plan: UdfPlan, batches):
    import pandas as pd
    from pyspark import TaskContext
    ctx = TaskContext.get()
    blas.set_threads(max(1, int(ctx.cpus())) if ctx else 1)
    predictor = plan.model.predictor(plan.batch_size)
    shape = predictor.sample_shape(1)[1:]
    size = int(np.prod(shape))
    for series in batches:
        rows = [_flat(v) for v in series]
        bad = next((i for i, r in enumerate(rows) if r.size != size), None)
        if bad is not None:
            raise ValueError(f"predict_udf: row {bad} of a batch has {rows[bad].size} values; the model takes "
                             f"{size} ({'x'.join(map(str, shape))}) per sample")
        if not rows:
            yield pd.Series([], dtype=object)
            continue
        out = predictor.forward([predictor.check(np.stack(rows).reshape(len(rows), *shape))])[0]
        scores = predictor.scores(out)
        yield pd.Series(list(scores), index=series.index)


def predict_udf(model, *, batch_size: int = 64):
    """A pandas UDF (Iterator[Series] -> Iterator[Series]) scoring a float tensor column with
    ``model`` (a .kdl path or a Module), for ``select``/``withColumn``; see the module doc."""
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise ValueError("predict_udf needs an active SparkSession (the model is shipped through its context)")
    shipped, predictor = ship(spark.sparkContext, model)
    predictor.sample_shape(1)  # a model without a recorded input shape is refused here, not in a task
    plan = UdfPlan(shipped, int(batch_size))

    def score(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:  # the signature pandas_udf reads
        return _predict_series(plan, batches)

    return pandas_udf(score, ArrayType(FloatType()))
