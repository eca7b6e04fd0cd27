"""A Spark standalone cluster on 127.0.0.1 (a master and two one-core workers started through the
pyspark installation's bin/spark-class, on free ports), stopped afterwards: the same training as
on local[2] gives the same weights, bit for bit (two tasks either way, the same arithmetic)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_class(*args, log):
    import pyspark
    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen([str(home / "bin" / "spark-class"), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    logs = tmp_path_factory.mktemp("standalone")
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = [spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(free_port()), log=open(logs / "master.log", "w"))]
    wait_for(lambda: "I have been elected leader" in (logs / "master.log").read_text(), 120, "the master did not start")
    for i in range(2):
        work = logs / f"work{i}"
        procs.append(spark_class("org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--port",
                                 str(free_port()), "--webui-port", str(free_port()), "--cores", "1", "--memory", "2g",
                                 "--work-dir", str(work), log=open(logs / f"worker{i}.log", "w")))
    wait_for(lambda: (logs / "master.log").read_text().count("Registering worker") >= 2, 120,
             "the workers did not register")
    yield url, logs
    for p in procs:
        try:
            os.killpg(p.pid, 15)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait(timeout=60)


def test_standalone_cluster_run_equals_local2(spark, standalone, tmp_path):
    url, logs = standalone
    out = tmp_path / "cluster.npz"
    r = subprocess.run([sys.executable, str(HERE / "standalone_run.py"), url, str(out)], capture_output=True,
                       text=True, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}, cwd=HERE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    sys.path.insert(0, str(HERE))
    try:
        from standalone_run import train
    finally:
        sys.path.remove(str(HERE))
    local, opt = train(spark)
    cluster = np.load(out)
    assert len(cluster["_executors"]) == 2, "two executors, one per worker"
    for k, v in local.state_dict().items():
        assert np.array_equal(cluster[k], v), k
    assert float(cluster["_top1"]) == opt.last_validation["results"]["Top1Accuracy"]
