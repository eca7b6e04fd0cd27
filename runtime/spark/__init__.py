"""Apache Spark (pyspark is an optional dependency: ``pip install kindling[spark]``): training
(``DistriOptimizer``, ``image_folder_dataframe``), batch scoring (``predict``, ``predict_udf``) and
validation (``evaluate``)."""
from importlib import import_module

# public name -> file under runtime/spark/ that defines it (imported on use: pyspark loads then)
EXPORTS = {"DistriOptimizer": "optimizer", "EXCHANGES": "optimizer", "image_folder_dataframe": "data",
           "class_folders": "data", "labels_of": "data", "Exchange": "exchange", "DriverExchange": "exchange",
           "RelayExchange": "relay", "predict": "score", "predict_udf": "udf", "evaluate": "validate",
           "binary_files": "files", "write_scores": "output", "read_scores": "output"}

__all__ = list(EXPORTS)


def __getattr__(name):
    if name in EXPORTS:
        return getattr(import_module(f".{EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'kindling.runtime.spark' has no attribute {name!r}")
