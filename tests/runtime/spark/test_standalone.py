"""A Spark standalone cluster on 127.0.0.1 (a master and two one-core workers started through the
pyspark installation's bin/spark-class, on free ports), stopped afterwards: the same training as
on local[2] gives the same weights, bit for bit (two tasks either way, the same arithmetic; both
runs use this process's BLAS, KINDLING_BLAS, since a process that calibrates afresh on a busy
machine may pick the other library, whose sums round differently)."""
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


def same_blas_env():
    from kindling.runtime import blas
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "KINDLING_BLAS": blas.backend().backend.name}


def spark_class(*args, log):
    import pyspark
    home = Path(pyspark.__file__).parent
    env = {**same_blas_env(), "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable}
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


def run(master, out):
    r = subprocess.run([sys.executable, str(HERE / "standalone_run.py"), master, str(out)], capture_output=True,
                       text=True, env=same_blas_env(), cwd=HERE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return np.load(out)


def test_standalone_cluster_run_equals_local2(standalone, tmp_path):
    url, logs = standalone
    cluster = run(url, tmp_path / "cluster.npz")
    local = run("local[2]", tmp_path / "local.npz")
    assert len(cluster["_executors"]) == 2 and len(local["_executors"]) == 1, "one executor per worker; local: one"
    assert list(cluster["_blas"]) == list(local["_blas"])
    for k in local.files:
        if not k.startswith("_"):
            assert np.array_equal(cluster[k], local[k]), k
    assert float(cluster["_top1"]) == float(local["_top1"])
