"""Checks before a barrier stage starts, each failing at once with the setting to change.

Barrier mode needs every task running at the same time: it cannot run with dynamic allocation,
and with fewer free task slots than tasks Spark retries its own slot check for minutes before
giving up (XGBoost users saw a silent hang). Then, once the tasks have said hello, each executor's
memory is set against what its tasks will hold: the model, its gradients, the optimizer state it
owns, the exchanged vectors and a batch's activations."""
from __future__ import annotations

import logging
import math
import time

import numpy as np

log = logging.getLogger("kindling.spark")

MB = 1 << 20


def task_slots(sc) -> int | None:
    """Tasks the cluster can run at once (Spark's own barrier check), or None if it cannot tell."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # an older or different Spark: fall back to cores / task.cpus
        try:
            return sc.defaultParallelism // int(sc.getConf().get("spark.task.cpus", "1"))
        except Exception:
            return None


def barrier_problem(conf, slots: int | None, tasks: int) -> str | None:
    """Why barrier mode cannot run ``tasks`` tasks with this configuration, or None."""
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        return ("distributed training runs in Spark's barrier execution mode, which cannot run with "
                "spark.dynamicAllocation.enabled=true: set it to false (and give the executors "
                "spark.executor.instances)")
    if slots is not None and slots < tasks:
        cpus = conf.get("spark.task.cpus", "1")
        return (f"{tasks} barrier tasks need {tasks} task slots at once, the cluster has {slots} "
                f"(spark.task.cpus={cpus}): give more executors or cores (spark.executor.instances, "
                f"spark.executor.cores, --master local[{tasks * int(cpus)}]) or use num_tasks={slots}")
    return None


def check_barrier(sc, tasks: int | None, wait: float = 30.0) -> int:
    """The number of barrier tasks to run (``tasks`` or every free slot); raises ValueError naming
    the setting when barrier mode cannot run them. Waits up to ``wait`` seconds for executors of a
    cluster that is still registering them."""
    conf = sc.getConf()
    deadline = time.monotonic() + wait
    slots = task_slots(sc)
    while (slots is not None and slots < (tasks or 1) and time.monotonic() < deadline
           and not sc.master.startswith("local")):
        time.sleep(0.5)
        slots = task_slots(sc)
    problem = barrier_problem(conf, slots, tasks or 1)
    if problem:
        raise ValueError(problem)
    if tasks is None:
        if not slots:
            raise ValueError("the cluster has no free task slots (no executors registered?)")
        return slots
    return tasks


def worker_memory() -> dict:
    """What this Python worker may use: the host's available memory and any address-space limit
    Spark set (spark.executor.pyspark.memory)."""
    out = {"available": None, "limit": None}
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        out["available"] = info.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        out["limit"] = None if soft == resource.RLIM_INFINITY else soft
    except (ImportError, ValueError, OSError):
        pass
    return out


def _nbytes(arrays) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays))


def activation_bytes(model, sample_shape) -> int | None:
    """Bytes of every module's output for one sample (a forward pass of one zero sample); the
    backward pass holds about as much again in gradients."""
    if not sample_shape:
        return None
    training = model.training
    model.evaluate()
    try:
        model.forward(np.zeros((1, *sample_shape), np.float32))
        return sum(np.asarray(m.output).nbytes for m in model.modules()
                   if isinstance(m.output, np.ndarray) and m is not model)
    except Exception:
        return None
    finally:
        model.train(training)


def per_task_bytes(model, method_slots: int, world: int, batch_size: int, per_sample: int | None,
                   averaging: bool) -> dict:
    params = _nbytes(w for _, w, _ in model.named_parameters())
    buffers = _nbytes(v for m in model.modules() for v in m.buffers.values())
    trainable = _nbytes(w for m in model.modules() if not m.frozen for w in m.params.values())
    share = 1 if averaging else world  # synchronous: each task holds the optimizer state of its shard
    per_task_batch = math.ceil(batch_size / world)
    return {"model": params + buffers, "gradients": trainable, "optimizer": method_slots * trainable // share,
            "exchange": 2 * trainable, "activations": None if per_sample is None else 3 * per_sample * per_task_batch}


def check_memory(hellos: list[dict], need: dict) -> list[str]:
    """One line per executor; raises ValueError for one whose tasks cannot fit."""
    per_task = sum(v for v in need.values() if v)
    lines, executors = [], {}
    for h in hellos:
        executors.setdefault(h["executor"], []).append(h)
    parts = " + ".join(f"{k} {v / MB:.1f} MB" for k, v in need.items() if v is not None)
    if need.get("activations") is None:
        parts += " + activations (unknown: the input shape is not recorded)"
    for executor, tasks in sorted(executors.items()):
        mem = tasks[0]["memory"]
        limits = [(mem["limit"] * len(tasks), "spark.executor.pyspark.memory") if mem.get("limit") else None,
                  (mem["available"], "memory available on its host") if mem.get("available") else None]
        limit = min((x for x in limits if x), default=None)
        total = per_task * len(tasks)
        line = (f"pre-flight executor {executor} ({tasks[0].get('blas', '?')}, {tasks[0].get('threads', 1)} thread(s) "
                f"per task): {len(tasks)} task(s) x ({parts}) = {total / MB:.1f} MB"
                + (f" of {limit[0] / MB:.0f} MB ({limit[1]})" if limit else ""))
        log.info("%s", line)
        lines.append(line)
        if limit and total > limit[0]:
            setting = ("spark.executor.pyspark.memory" if limit[1].startswith("spark") else
                       "spark.executor.memoryOverhead / the executors' memory (or fewer tasks per executor: "
                       "spark.task.cpus)")
            raise ValueError(f"{line}: does not fit; raise {setting}, or lower batch_size "
                             f"(activations grow with it)")
    return lines
