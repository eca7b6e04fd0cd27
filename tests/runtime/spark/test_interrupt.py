"""Ctrl-C on a command that runs Spark: the command ends as interrupted (exit 130), promptly,
without py4j's tracebacks and without leaving Spark's JVM behind, wherever the interrupt lands.

pyspark's own handler raises KeyboardInterrupt wherever the main thread is; halfway through a py4j
call that printed tracebacks, ended in a Py4JError instead of the interrupt, or left the next call
waiting forever (seen at 1 in 6 interrupts of the loop below)."""
import os
import signal
import subprocess
import sys
import time

import pytest

# what a kindling command does with Spark, reduced to its two shapes: many short py4j calls (the
# driver's side of training), and one long job (scoring, evaluation)
SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")  # what the demo does: py4j's logs would show
from kindling.runtime.spark.session import running
try:
    with running("local[1]", "interrupt-test", ["spark.ui.enabled=false"]) as spark:
        print("ready", flush=True)
        if sys.argv[1] == "calls":
            while True:
                spark.sparkContext._jsc.sc().applicationId()
        spark.sparkContext.parallelize(range(2), 2).map(lambda x: __import__("time").sleep(300)).count()
except KeyboardInterrupt:
    sys.exit(130)
"""


def interrupt(tmp_path, shape, after_s):
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, shape], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=tmp_path, env=env, start_new_session=True)
    try:
        seen = []
        for line in p.stdout:
            seen.append(line)
            if line.startswith("ready"):
                break
        else:
            pytest.fail("the session did not start:\n" + "".join(seen)[-3000:])
        time.sleep(after_s)
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        sent = time.monotonic()
        rest, _ = p.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.pid, p.returncode, "".join(seen) + rest, took


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("shape, after_s", [("calls", 0.5), ("calls", 1.3), ("job", 2.0)])
def test_ctrl_c_ends_a_spark_command_cleanly(tmp_path, shape, after_s):
    pid, code, output, took = interrupt(tmp_path, shape, after_s)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert took < 30, f"{took:.0f} s from Ctrl-C to exit"  # the job sleeps 300 s: it was cancelled
    deadline = time.monotonic() + 15
    while group_alive(pid) and time.monotonic() < deadline:  # the JVM and Spark's Python workers
        time.sleep(0.2)
    assert not group_alive(pid), subprocess.run(["ps", "-o", "pid,args", "-g", str(pid)], capture_output=True,
                                                text=True).stdout
