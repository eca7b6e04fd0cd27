"""DistriOptimizer: the training loop of ``kindling.runtime.optim.Optimizer`` with its iterations
run by Spark barrier tasks (``SparkEngine``).

    from kindling.runtime.spark import DistriOptimizer, image_folder_dataframe
    train = image_folder_dataframe(spark, "hdfs:///data/caltech/train")
    opt = DistriOptimizer(model, train, nn.ClassNLLCriterion(), SGD(...), Trigger.max_epoch(15), batch_size=16)
    opt.set_validation(Trigger.every_epoch(), image_folder_dataframe(spark, ".../val"), [Top1Accuracy()])
    trained = opt.optimize()

``Optimizer(model, dataframe, ...)`` gives the same object (BigDL's ``Optimizer.create``)."""
from __future__ import annotations

from ..optim.optimizer import Optimizer
from .engine import SparkEngine

#: exchange= choices: how the tasks combine gradients and share updated weights
EXCHANGES = {
    "relay": "through the driver, over each task's control connection",
    "driver": "through BarrierTaskContext.allGather (DriverExchange; Spark answers each call on a 1 s poll)",
    "socket": "point to point between the tasks, sharded (allreduce.SocketExchange; the default)",
}
DEFAULT_EXCHANGE = "socket"


def spark_context(data):
    """The SparkContext of a DataFrame or RDD."""
    if hasattr(data, "sparkSession"):
        return data.sparkSession.sparkContext
    return data.context


class DistriOptimizer(Optimizer):
    """BigDL's DistriOptimizer. Besides the Optimizer's arguments:

    num_tasks            barrier tasks (default: every free task slot; each gets spark.task.cpus threads)
    exchange             "relay" | "driver" | "socket" (see EXCHANGES)
    exchange_timeout     seconds to wait for tasks to start and for a collective
    averaging_frequency  k: each task takes k local steps, then the weights and optimizer state are
                         averaged (Deeplearning4j's parameter averaging; k = 1 with SGD is the
                         synchronous update); None (default): synchronous, sharded update
    pipeline             preprocessing for image bytes (default: the model's recorded preprocessing;
                         val_pipeline: its evaluation form)
    feature_col, label_col, feature_shape
                         the DataFrame's columns (default "content"/"features" and "label") and the
                         shape of an array sample (default: the model's recorded input shape)

    Samples are numbered by the DataFrame's ``index`` column (image_folder_dataframe makes one),
    or else in its row order: after a shuffle (repartition, join) that order is not fixed, so for
    runs that repeat give such a DataFrame an index (or cache it).
    """

    def __init__(self, model, training_set, criterion, optim_method, end_trigger, batch_size: int = 32, *,
                 seed: int = 0, workers: int = 2, strict_data: bool = False, progress: bool | None = None,
                 num_tasks: int | None = None, exchange: str = DEFAULT_EXCHANGE, exchange_timeout: float = 600.0,
                 averaging_frequency: int | None = None, pipeline=None, val_pipeline=None, feature_col: str | None = None,
                 label_col: str = "label", feature_shape=None, slot_wait: float = 30.0):
        self._spark = dict(num_tasks=num_tasks, exchange=exchange, timeout=exchange_timeout,
                           averaging_frequency=averaging_frequency, pipeline=pipeline, val_pipeline=val_pipeline,
                           feature_col=feature_col, label_col=label_col, feature_shape=feature_shape,
                           slot_wait=slot_wait)
        super().__init__(model, training_set, criterion, optim_method, end_trigger, batch_size, seed=seed,
                         workers=workers, strict_data=strict_data, progress=progress)

    def _engine(self):
        return SparkEngine(self.training_set, **self._spark)
