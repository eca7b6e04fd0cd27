"""The SparkSession a kindling command runs on: its master and --conf settings, on loopback when
the master is local, and a Ctrl-C that ends it as cleanly as it ends the rest of kindling."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

import py4j

from .java import check_java

# a file costs Spark 4 MB by default when it packs files into partitions, which cuts a folder of
# small images into many tiny tasks: count 128 KB
DEFAULTS = {"spark.sql.files.openCostInBytes": "131072"}
LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}

# set by Ctrl-C once a session is up: what breaks in py4j afterwards is the interrupt's aftermath
INTERRUPTED = threading.Event()
_PY4J = os.path.dirname(py4j.__file__)
# py4j logs every call a Ctrl-C cuts short with a traceback, partly on the root logger
_PY4J_LOGGERS = ("", "py4j.java_gateway", "py4j.clientserver")


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
    _note_interrupts()
    return spark


@contextmanager
def running(master: str | None, app_name: str, conf: list[str] = (), **settings: str):
    """``session(...)`` for the length of a command: stopped at the end if this command started it
    (not when spark-submit or a notebook did). After a Ctrl-C, whatever py4j raises on the way out
    (its connection was cut mid-call) ends the command as the interrupt it is."""
    from pyspark.sql import SparkSession
    INTERRUPTED.clear()  # an earlier command's interrupt (a notebook runs many) is not this one's
    started = SparkSession.getActiveSession() is None
    spark = session(master, app_name, conf, **settings)
    try:
        yield spark
    except Exception as e:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt from e
        raise
    finally:
        if started:
            _stop(spark)


def _stop(spark):
    try:
        spark.stop()
    except Exception:
        if not INTERRUPTED.is_set():
            raise


def _note_interrupts():
    """Puts kindling's SIGINT handler in place of pyspark's. Both cancel the running jobs and end
    in KeyboardInterrupt, but pyspark's raises wherever the main thread is, also halfway through a
    py4j call or a py4j finalizer, which desynchronises the connection (the next call can wait
    forever) and prints py4j's tracebacks. kindling's raises once the main thread is out of py4j."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread has handlers
        return
    signal.signal(signal.SIGINT, _interrupted)
    for name in _PY4J_LOGGERS:
        logger = logging.getLogger(name)
        if _after_interrupt not in logger.filters:
            logger.addFilter(_after_interrupt)


def _interrupted(signum, frame):
    if not INTERRUPTED.is_set():
        INTERRUPTED.set()
        threading.Thread(target=_cancel_jobs, name="kindling-cancel-jobs", daemon=True).start()
    caller = _outside_py4j(frame)
    if caller is frame or caller is None:
        raise KeyboardInterrupt
    # raise in the frame that called into py4j, as soon as it runs again (the call returned or
    # failed because its job was cancelled): pdb's way, a trace function on that frame alone
    caller.f_trace, caller.f_trace_lines = _raise_interrupt, True
    sys.settrace(_no_new_frames)


def _no_new_frames(frame, event, arg):
    return None


def _raise_interrupt(frame, event, arg):
    sys.settrace(None)
    frame.f_trace = None
    raise KeyboardInterrupt


def _outside_py4j(frame):
    """The innermost frame of the stack that is not py4j's (``frame`` itself when it is not)."""
    while frame is not None and frame.f_code.co_filename.startswith(_PY4J):
        frame = frame.f_back
    return frame


def _cancel_jobs():
    """From a thread of its own: pinned-thread py4j gives it a connection of its own."""
    from pyspark import SparkContext
    sc = SparkContext._active_spark_context
    if sc is not None:
        try:
            sc.cancelAllJobs()
        except Exception:  # noqa: BLE001 - the context is stopping or gone: nothing left to cancel
            pass


def _after_interrupt(record: logging.LogRecord) -> bool:
    """False (drop) for py4j's records once the user interrupted."""
    return not (INTERRUPTED.is_set() and record.pathname.startswith(_PY4J))
