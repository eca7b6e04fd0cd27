"""SocketExchange inside a real Spark barrier stage on local[2], against DriverExchange
(allGather through the driver) and numpy sums computed on the driver.

Each allGather costs about a second (Spark's executor side polls the driver's answer with
Thread.sleep(1000)), and DriverExchange makes four per all-reduce: it runs on one size (odd,
several chunks), SocketExchange on all of them."""
from __future__ import annotations

import os
import sys

import pytest

import exchange_peers
from exchange_peers import all_reduce, digest, reference_sum

SIZES = [0, 1, 3, 1001, 300_001]
ROUNDS = 2
DRIVER_SIZES = [300_001]


@pytest.fixture(scope="module")
def spark():
    from pyspark import cloudpickle
    from pyspark.sql import SparkSession
    # the tasks' code lives in test modules that the Python workers cannot import: ship it by value
    cloudpickle.register_pickle_by_value(exchange_peers)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    old = os.environ.get("SPARK_LOCAL_IP")
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    session = (SparkSession.builder.master("local[2]").appName("kindling-test-allreduce")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if old is None:
        os.environ.pop("SPARK_LOCAL_IP", None)
    else:
        os.environ["SPARK_LOCAL_IP"] = old


def exchange_in_barrier_task(_):
    """Every (size, round): the all-reduce through SocketExchange, through a SocketExchange that
    finds its host from the task infos (SPARK_LOCAL_IP unset) and, on DRIVER_SIZES in round 0,
    through DriverExchange (None elsewhere)."""
    from pyspark import BarrierTaskContext
    from kindling.runtime.spark.allreduce import SocketExchange
    from kindling.runtime.spark.exchange import DriverExchange
    context = BarrierTaskContext.get()
    rows = []
    with SocketExchange.from_barrier(context, timeout=60, chunk_bytes=64 << 10) as sockets:
        driver = DriverExchange.from_barrier(context)
        local_ip = os.environ.pop("SPARK_LOCAL_IP", None)
        try:
            by_task_address = SocketExchange.from_barrier(context, timeout=60)
        finally:
            if local_ip is not None:
                os.environ["SPARK_LOCAL_IP"] = local_ip
        with by_task_address:
            for n in SIZES:
                for round_ in range(ROUNDS):
                    by_driver = digest(all_reduce(driver, round_, n)) if (n in DRIVER_SIZES and round_ == 0) else None
                    rows.append((context.partitionId(), n, round_, digest(all_reduce(sockets, round_, n)),
                                 by_driver, digest(all_reduce(by_task_address, round_, n))))
    return rows


def test_barrier_stage_socket_exchange_equals_driver_exchange_and_numpy(spark):
    rows = (spark.sparkContext.parallelize(range(2), 2).barrier().mapPartitions(exchange_in_barrier_task)
            .collect())
    assert sorted({r[0] for r in rows}) == [0, 1]
    assert len(rows) == 2 * len(SIZES) * ROUNDS
    for rank, n, round_, by_socket, by_driver, by_address in rows:
        expected = digest(reference_sum(2, round_, n))
        assert (by_socket, by_address) == (expected, expected), f"rank {rank} n {n} round {round_}"
        if n in DRIVER_SIZES and round_ == 0:
            assert by_driver == expected, f"DriverExchange rank {rank} n {n}"
