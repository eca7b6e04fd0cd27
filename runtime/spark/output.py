"""Scores written through Spark's writers, all or nothing, and read back with their schema.

The job writes into a hidden sibling folder (Spark's commit protocol: a failed job leaves no part
of it behind), which is renamed to the output only when the job has succeeded; an existing output
is replaced only then, and only when asked. CSV has no arrays: there each array column is its JSON
text ("[3, 5, 1]"), which ``read_scores`` parses back."""
from __future__ import annotations

import secrets

from .score import SCHEMA

FORMATS = ("parquet", "csv", "json")
ARRAYS = ("top_k_indices", "top_k_labels", "top_k_scores")


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _hadoop_path(spark, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(str(uri))
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def write_scores(df, output: str, fmt: str = "parquet", overwrite: bool = False) -> str:
    """Writes ``df`` to ``output`` as ``fmt``; returns the output's qualified URI. Refuses an
    existing output unless ``overwrite``."""
    from pyspark.sql import functions as F
    _check(fmt)
    spark = df.sparkSession
    target, fs = _hadoop_path(spark, output)
    if fs.exists(target) and not overwrite:
        raise ValueError(f"{output}: already exists (overwrite it with --overwrite, or choose another --output)")
    jvm = spark.sparkContext._jvm
    staging = jvm.org.apache.hadoop.fs.Path(target.getParent(), f".{target.getName()}.kindling-{secrets.token_hex(4)}")
    if fmt == "csv":
        df = df.select(*[F.to_json(c).alias(c) if c in ARRAYS else F.col(c) for c in df.columns])
    try:
        df.write.format(fmt).option("header", "true").save(staging.toString())
        if fs.exists(target):
            fs.delete(target, True)
        if not fs.rename(staging, target):
            raise OSError(f"{output}: could not rename the finished output into place")
    finally:
        if fs.exists(staging):
            fs.delete(staging, True)
    return fs.makeQualified(target).toString()


def read_scores(spark, path: str, fmt: str = "parquet"):
    """Scores written by ``write_scores`` (or ``kindling score``), with their schema."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType
    _check(fmt)
    schema = StructType.fromDDL(SCHEMA)
    if fmt == "parquet":
        return spark.read.parquet(path)
    if fmt == "json":
        return spark.read.schema(schema).json(path)
    text = StructType.fromDDL(", ".join(f"{f.name} string" for f in schema.fields))
    raw = spark.read.schema(text).option("header", "true").csv(path)
    return raw.select(*[F.from_json(f.name, f.dataType).alias(f.name) if f.name in ARRAYS else F.col(f.name)
                        for f in schema.fields])
