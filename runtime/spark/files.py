"""Files as a DataFrame of (path, content): Spark's ``binaryFile`` source, plus the zero-byte
files its scan leaves out (a zero-length file makes no split, hence no row): each input file,
readable or not, is one row."""
from __future__ import annotations

from urllib.parse import unquote


def _spark_form(path: str) -> str:
    """A path as the binaryFile source's ``path`` column spells it (``inputFiles()`` gives URIs:
    file:///x, percent-encoded; the column has file:/x, decoded)."""
    path = unquote(path)
    return "file:/" + path[len("file:///"):] if path.startswith("file:///") else path


def binary_files(spark, uri: str, glob: str | None = None, recursive: bool = True):
    """Every file under ``uri`` (a folder, a file or a glob; any Hadoop file system) as ``path``,
    ``content``; ``glob`` filters the file names (Spark's pathGlobFilter). Names starting with
    "." or "_" are skipped, as Spark's file sources skip them. A zero-byte file has null content.

    Only paths come to the driver (Spark lists them there anyway), once in a metadata-only scan."""
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", str(recursive).lower())
    if glob:
        reader = reader.option("pathGlobFilter", glob)
    try:
        files = reader.load(str(uri)).select("path", "content")
    except Exception as e:  # pyspark's AnalysisException for a path that matches nothing
        if "PATH_NOT_FOUND" in str(e) or "Path does not exist" in str(e):
            raise ValueError(f"{uri}: no such file or folder") from None
        raise
    listed = files.inputFiles()
    if not listed:
        raise ValueError(f"{uri}: no files found" + (f" matching {glob}" if glob else ""))
    scanned = {p for (p,) in files.select("path").collect()}  # content pruned: no file is read
    empty = sorted({_spark_form(p) for p in listed} - scanned)
    if not empty:
        return files
    return files.unionByName(spark.createDataFrame([(p, None) for p in empty], "path string, content binary"))
