"""The SparkSession a kindling command runs on: its master and --conf settings, on loopback when
the master is local."""
from __future__ import annotations

import logging
import os

from .java import check_java

# a file costs Spark 4 MB by default when it packs files into partitions, which cuts a folder of
# small images into many tiny tasks: count 128 KB
DEFAULTS = {"spark.sql.files.openCostInBytes": "131072"}
LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


def parse_conf(items: list[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (the --conf arguments) as a dict."""
    settings = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--conf {item}: expected KEY=VALUE")
        settings[key.strip()] = value.strip()
    return settings


def session(master: str | None, app_name: str, conf: list[str] = (), **settings: str):
    """A SparkSession on ``master`` (None: the one spark-submit set, else local[*]); ``settings``
    (dotted keys as a dict: ``**{"spark.x": "1"}``) and then ``conf`` override the defaults."""
    check_java()  # a clear message instead of pyspark's "Java gateway process exited"
    from pyspark import SparkConf
    from pyspark.sql import SparkSession
    master = master or SparkConf().get("spark.master", "local[*]")
    if master.startswith("local"):  # everything on this machine: keep it on loopback
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name).master(master)
    merged = {**DEFAULTS, **(LOOPBACK if master.startswith("local") else {}), **settings, **parse_conf(list(conf))}
    for key, value in merged.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return spark
