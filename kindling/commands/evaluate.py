"""kindling evaluate --model model.kdl --images DIR_OR_URI: Top-1, Top-5 and loss on a class-folder
tree, on Spark (BigDL's Validator)."""
from __future__ import annotations

from pathlib import Path

from kindling.commands.score import add_spark_arguments, spark_session

HELP = "Top-1, Top-5 and loss of a model on a folder of class sub-folders of images, on Spark"


def add_arguments(p):
    p.add_argument("--model", required=True, help="a .kdl model file; its labels name the classes")
    p.add_argument("--images", required=True,
                   help="a folder of class sub-folders (<class>/<image>) on any Hadoop file system or a local path")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--max-pixels", type=int, help="refuse images with more pixels (default KINDLING_MAX_PIXELS or "
                                                  "kindling's limit)")
    add_spark_arguments(p)


def run(args) -> int:
    from kindling.runtime.predict import Predictor
    from kindling.runtime.spark.data import image_folder_dataframe
    from kindling.runtime.spark.validate import evaluate
    if not Path(args.model).is_file():  # read on the driver, shipped to the executors by Spark
        raise ValueError(f"{args.model}: no such model file")
    labels = Predictor.load(args.model).labels or None
    with spark_session(args, f"kindling evaluate {args.images}") as spark:
        data = image_folder_dataframe(spark, args.images, labels)
        if labels is None:
            print("the model records no labels: classes are the sub-folder names, sorted")
        result = evaluate(data, args.model, batch_size=args.batch_size, max_pixels=args.max_pixels)
        print(result)
        if result.skipped:
            print(f"{result.skipped} unreadable image(s) left out")
        return 0
