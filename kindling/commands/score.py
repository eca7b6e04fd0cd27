"""kindling score --model model.kdl --images URI --output predictions.parquet: batch scoring on Spark."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path

HELP = ("score every file under a folder or URI on Spark: one row per file (path, top-k classes, labels, "
        "scores, model version, error)")


def add_spark_arguments(p) -> None:
    """--master, --conf, --app-name: shared with kindling evaluate."""
    spark = p.add_argument_group("Spark (pip install kindling[spark]; Java 17 or 21)")
    spark.add_argument("--master", help="local[N], spark://HOST:7077, yarn (default: spark-submit's master, else "
                                        "local[*])")
    spark.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                       help="a Spark setting, e.g. spark.executor.pyspark.memory=2g (repeatable)")
    spark.add_argument("--app-name", default="kindling")


def add_arguments(p):
    p.add_argument("--model", required=True, help="a .kdl model file (with its preprocessing and labels)")
    p.add_argument("--images", required=True,
                   help="a folder, file or glob on any Hadoop file system (hdfs://, s3a://, file://, a local path); "
                        "read recursively")
    p.add_argument("--glob", help="score only file names matching this pattern, e.g. '*.jpg' (pathGlobFilter)")
    p.add_argument("--output", required=True, help="where to write the scores (a folder, as Spark writes)")
    p.add_argument("--format", default="parquet", choices=("parquet", "csv", "json"),
                   help="output format (default parquet; CSV holds the arrays as JSON text)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (once the job succeeded)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32, as kindling run)")
    p.add_argument("--max-batch-mb", type=float, default=32,
                   help="cap on the image bytes in one Arrow batch sent to a Python worker (default 32)")
    p.add_argument("--max-pixels", type=int, help="refuse images with more pixels (default KINDLING_MAX_PIXELS or "
                                                  "kindling's limit)")
    p.add_argument("--fail-fast", action="store_true",
                   help="an unreadable image fails the job (default: its row gets an error and null predictions)")
    add_spark_arguments(p)


def task_error(e: BaseException) -> str | None:
    """The one line a task's ScoringError said, out of the Spark exception that carries it."""
    found = re.search(r"ScoringError: (.*)", str(e))
    return found.group(1).strip() if found else None


@contextmanager
def spark_session(args, description: str):
    """The session for this command (stopped at its end if it started it), its jobs described as
    ``description`` in Spark's UI."""
    from kindling.runtime.spark.session import running
    with running(args.master, args.app_name, args.conf, **{"spark.ui.showConsoleProgress": "true"}) as spark:
        spark.sparkContext.setJobDescription(description)
        try:
            yield spark
        finally:
            spark.sparkContext.setJobDescription(None)


def run(args) -> int:
    from pyspark.sql import functions as F
    from kindling.runtime.spark.files import binary_files
    from kindling.runtime.spark.output import read_scores, write_scores
    from kindling.runtime.spark.score import predict
    logging.getLogger("kindling").setLevel(logging.INFO)
    if not Path(args.model).is_file():  # read on the driver, shipped to the executors by Spark
        raise ValueError(f"{args.model}: no such model file")
    with spark_session(args, f"kindling score {args.images}") as spark:
        files = binary_files(spark, args.images, args.glob)
        scores = predict(files, args.model, top_k=args.top_k, batch_size=args.batch_size,
                         max_batch_bytes=int(args.max_batch_mb * (1 << 20)), fail_fast=args.fail_fast,
                         max_pixels=args.max_pixels)
        try:
            where = write_scores(scores, args.output, args.format, args.overwrite)
        except Exception as e:  # a --fail-fast stop comes wrapped in Spark's exception: say what it said
            line = task_error(e)
            if line is None:
                raise
            raise ValueError(line) from None
        kinds = (read_scores(spark, where, args.format)
                 .groupBy(F.substring_index("error", ": ", 1).alias("kind")).count().collect())
        counts = {k: n for k, n in kinds}
        rows, scored = sum(counts.values()), counts.pop(None, 0)
        errors = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"wrote {where} ({args.format}): {rows} rows, {scored} images scored, "
              f"{rows - scored} errors{' (' + errors + ')' if errors else ''}")
        return 0
