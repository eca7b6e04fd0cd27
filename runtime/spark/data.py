"""Training data on Spark: an image folder as a DataFrame, read and decoded on the executors, and
each barrier task's share of the samples.

Every sample gets a global index (an ``index`` column, or its position in the DataFrame's order
through ``zipWithIndex``) and
goes, through one shuffle, to task ``index % tasks``; the epoch's order is a function of (seed,
epoch) over those indices, so what a global batch holds never depends on the cluster's shape.
"""
from __future__ import annotations

import logging
import unicodedata

import numpy as np

from ..data.dataset import IMAGE_SUFFIXES, DataSet, _hidden

log = logging.getLogger("kindling.data")

TRAIN, VALIDATION = 0, 1


def _hadoop_path(spark, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(str(uri))
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def class_folders(spark, uri: str) -> tuple[str, list[str]]:
    """(the folder's qualified URI, its class sub-folders sorted by name), through Hadoop's file
    system API, so local paths, file://, hdfs:// and s3a:// all work; empty classes included."""
    path, fs = _hadoop_path(spark, uri)
    if not fs.exists(path):
        raise ValueError(f"{uri}: no such folder")
    if not fs.getFileStatus(path).isDirectory():
        raise ValueError(f"{uri}: a file, not a folder of class sub-folders")
    folders = sorted(s.getPath().getName() for s in fs.listStatus(path)
                     if s.isDirectory() and not _hidden(s.getPath().getName()))
    if not folders:
        raise ValueError(f"{uri}: no class sub-folders: images go in {uri}/<class>/")
    return fs.makeQualified(path).toString().rstrip("/"), folders


def image_folder_dataframe(spark, uri, labels: list[str] | None = None):
    """``uri/<class>/[...]/<image>`` as a DataFrame of ``index``, ``path``, ``content`` (the file's
    bytes) and ``label`` (the class index), read with Spark's ``binaryFile`` source (recursively).
    ``index`` numbers the images as ``kindling.runtime.data.ImageFolder`` orders the same folder
    (class folder, then path), so a distributed run sees the samples a local one sees. Classes are
    the sub-folder names, sorted (or ``labels``); hidden files and non-images are skipped (Spark's
    file source also skips names starting with ``_``). The class names ride along as the ``label``
    column's metadata (``"labels"``).

    Only the file paths come to the driver (Spark lists them there anyway), to be numbered; the
    images are read on the executors."""
    from pyspark.sql import functions as F

    root, folders = class_folders(spark, uri)
    labels = list(labels) if labels else [_nfc(d) for d in folders]
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(d for d in folders if _nfc(d) not in index)
    if unknown:
        raise ValueError(f"{uri}: class folders {unknown} are not among the labels {labels}")
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    suffixes = tuple(IMAGE_SUFFIXES)
    found = []
    for (path,) in files.select("path").collect():
        parts = tuple(path[len(root) + 1:].split("/"))
        if len(parts) >= 2 and parts[0] in folders and path.lower().endswith(suffixes):
            found.append((parts, path))
    if not found:
        raise ValueError(f"{uri}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    empty = sorted(set(folders) - {parts[0] for parts, _ in found})
    if empty:
        log.warning("%s: class folders without images (kept as classes): %s", uri, ", ".join(empty))
    found.sort()  # ImageFolder's order: class folder by name, then the path's parts
    numbered = spark.createDataFrame([(i, path, index[_nfc(parts[0])]) for i, (parts, path) in enumerate(found)],
                                     "index long, path string, label int")
    df = files.join(F.broadcast(numbered), "path")
    return df.select("index", "path", "content", F.col("label").alias("label", metadata={"labels": labels}))


def labels_of(df) -> list[str] | None:
    """The class names an ``image_folder_dataframe`` recorded, if any."""
    try:
        return list(df.schema["label"].metadata.get("labels") or []) or None
    except (KeyError, AttributeError):
        return None


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


# ---- samples with global indices, off to the tasks ------------------------------------------------
def _records(data, feature_col: str | None, label_col: str):
    """An RDD of (index or None, payload, label, source) from a DataFrame (binary image bytes or an
    array column, and an ``index`` column if it has one) or an RDD of (payload, label) pairs."""
    if hasattr(data, "rdd"):  # a DataFrame
        names = data.columns
        col = feature_col or next((c for c in ("content", "features", "image") if c in names), None)
        if col is None or label_col not in names:
            raise ValueError(f"DataFrame with columns {names}: expected a binary 'content' (image bytes) or "
                             f"an array 'features' column and a '{label_col}' column (feature_col=, label_col=)")
        has_index, has_path = "index" in names, "path" in names
        cols = [col, label_col] + (["index"] if has_index else []) + (["path"] if has_path else [])
        return data.select(*cols).rdd.map(
            lambda r: (r[2] if has_index else None, r[0], r[1], r[-1] if has_path else None))
    return data.map(lambda r: (None, r[0], r[1], None))


def indexed(data, split: int, feature_col=None, label_col="label"):
    """(key, (payload, label, source)) with key = 2 * global index + split. A DataFrame with an
    ``index`` column (``image_folder_dataframe``) is numbered by it, anything else by its order."""
    records = _records(data, feature_col, label_col)
    if hasattr(data, "columns") and "index" in data.columns:
        return records.map(lambda r: (2 * r[0] + split, r[1:]))
    return records.zipWithIndex().map(lambda r: (2 * r[1] + split, r[0][1:]))


def count(data) -> int:
    return data.count()


def to_tasks(rdds, tasks: int):
    """The union of the indexed RDDs, shuffled so that task r gets the samples with index % tasks == r.
    (A barrier stage cannot itself union or coalesce: the shuffle puts those in the stage before.)"""
    rdd = rdds[0] if len(rdds) == 1 else rdds[0].context.union(rdds)
    return rdd.partitionBy(tasks, lambda key: key >> 1)


class Share(DataSet):
    """A task's samples of one split, by global index: decoded with the same Pipeline and the
    same per-sample generator (seed, epoch, index) as local training."""

    def __init__(self, pipeline, shape=None, name: str = "share"):
        self.pipeline, self.shape, self.name = pipeline, shape, name
        self.items: dict[int, tuple] = {}

    def add(self, index: int, payload, label, source) -> None:
        self.items[index] = (payload, int(label), source)

    def __len__(self):
        return len(self.items)

    def label(self, i):
        return self.items[i][1]

    def source(self, i):
        return self.items[i][2] or f"sample {i}"

    def load(self, i, rng=None):
        payload, label, _ = self.items[i]
        if isinstance(payload, (bytes, bytearray)):
            if self.pipeline is None:
                raise ValueError("image bytes but no preprocessing pipeline (give pipeline=)")
            return self.pipeline(bytes(payload), rng), label
        x = np.asarray(payload, np.float32)
        return (x.reshape(self.shape) if self.shape else x), label

    def indices(self) -> np.ndarray:
        return np.fromiter(sorted(self.items), np.int64, len(self.items))


def subset(spark, df, indices):
    """The rows of an indexed DataFrame whose ``index`` is in ``indices`` (sorted), numbered again
    0, 1, ... in that order, as ``kindling.runtime.data.Subset`` numbers a local split."""
    from pyspark.sql import functions as F
    renumber = spark.createDataFrame([(int(old), new) for new, old in enumerate(indices)], "index long, _new long")
    cols = [c for c in df.columns if c != "index"]
    label = df.schema["label"] if "label" in df.columns else None
    out = df.join(F.broadcast(renumber), "index").select(F.col("_new").alias("index"), *cols)
    if label is not None and label.metadata:
        out = out.withColumn("label", F.col("label").alias("label", metadata=label.metadata))
    return out
