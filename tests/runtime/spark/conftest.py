"""One local[2] SparkSession for the Spark tests (a session takes seconds to start), all traffic on
loopback, no UI; stopped at the end of the test session."""
import logging
import os

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def local_session(master: str = "local[2]", **conf):
    from pyspark.sql import SparkSession
    builder = (SparkSession.builder.master(master).appName("kindling-tests")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4"))
    for k, v in conf.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


@pytest.fixture(scope="session")
def spark():
    session = local_session()
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits_tree(tmp_path_factory):
    """scikit-learn's 1,797 digits as the demo's JPEG class-folder tree."""
    from kindling.commands.demo import write_digits
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root
