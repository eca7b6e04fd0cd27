"""Training on Apache Spark (pyspark is an optional dependency: ``pip install kindling[spark]``):
``DistriOptimizer`` and ``image_folder_dataframe``."""
from importlib import import_module

# public name -> file under runtime/spark/ that defines it (imported on use: pyspark loads then)
EXPORTS = {"DistriOptimizer": "optimizer", "EXCHANGES": "optimizer", "image_folder_dataframe": "data",
           "class_folders": "data", "labels_of": "data", "Exchange": "exchange", "DriverExchange": "exchange",
           "RelayExchange": "relay"}

__all__ = list(EXPORTS)


def __getattr__(name):
    if name in EXPORTS:
        return getattr(import_module(f".{EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'kindling.runtime.spark' has no attribute {name!r}")
