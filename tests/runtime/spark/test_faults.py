"""Faults: a task's Python worker killed mid-training (Spark retries the barrier stage; training
resumes from the last synchronised state and ends as an uninterrupted run), the barrier
pre-flight, and the memory pre-flight."""
import logging
import os
import signal

import numpy as np
import pytest

from kindling.runtime import init, nn
from kindling.runtime.optim import SGD, Trigger
from kindling.runtime.spark import DistriOptimizer
from kindling.runtime.spark.preflight import check_memory, per_task_bytes, activation_bytes


def small_net():
    init.seed(2)
    return nn.Sequential(nn.Conv2d(1, 6, 3, name="c1"), nn.ReLU(name="r1"), nn.MaxPool2d(2, 2, name="p1"),
                         nn.Flatten(name="f"), nn.Linear(54, 10, name="fc"), nn.LogSoftmax(name="out"))


@pytest.fixture(scope="module")
def digits_df(spark):
    from sklearn.datasets import load_digits
    d = load_digits()
    rows = [((im / 16).astype(np.float32).ravel().tolist(), int(t)) for im, t in zip(d.images[:300], d.target[:300])]
    return spark.createDataFrame(rows, "features array<float>, label int")


def test_a_killed_python_worker_is_replaced_and_training_ends_as_if_nothing_happened(digits_df, tmp_path, caplog):
    def make(end, checkpoint_trigger):
        opt = DistriOptimizer(small_net(), digits_df, nn.ClassNLLCriterion(), SGD(learningrate=0.1, momentum=0.9),
                              Trigger.max_iteration(end), 16, seed=4, feature_shape=(1, 8, 8))
        opt.set_checkpoint(tmp_path / f"ckpt{end}", checkpoint_trigger)
        return opt

    straight = make(16, Trigger.several_iteration(5))
    straight.optimize()

    killed = []

    def kill_at_seven_once(state):
        if state["iteration"] == 7 and not killed:  # first attempt only
            pid = faulty.engine.hellos[1]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return state["iteration"] > 0 and state["iteration"] % 5 == 0  # pulls (checkpoints) at 5, 10, 15

    faulty = make(16, Trigger("kill at 7, checkpoint every 5", kill_at_seven_once))
    with caplog.at_level(logging.WARNING, logger="kindling.spark"):
        faulty.optimize()
    assert killed and faulty.engine.recoveries == 1
    assert faulty.engine.replayed == 2, "iterations 6 and 7 ran after the last synchronised state (5)"
    assert any("lost a task" in r.getMessage() for r in caplog.records)
    assert faulty.engine.hellos[1]["pid"] != killed[0]
    for k, v in straight.model.state_dict().items():
        assert np.array_equal(faulty.model.state_dict()[k], v), k
    assert sorted(p.name for p in (tmp_path / "ckpt16").iterdir()) == [
        "model.10", "model.15", "model.5", "optimMethod.10", "optimMethod.15", "optimMethod.5"]


def test_more_tasks_than_slots_fail_at_once_naming_the_slots(digits_df):
    opt = DistriOptimizer(small_net(), digits_df, nn.ClassNLLCriterion(), SGD(learningrate=0.1),
                          Trigger.max_iteration(1), 16, feature_shape=(1, 8, 8), num_tasks=3)
    with pytest.raises(ValueError, match=r"3 barrier tasks need 3 task slots at once, the cluster has 2"):
        opt.optimize()


def test_dynamic_allocation_is_refused_naming_the_setting(spark):
    from pyspark import SparkConf

    from kindling.runtime.spark.preflight import barrier_problem
    conf = SparkConf(loadDefaults=False).set("spark.dynamicAllocation.enabled", "true")
    assert "spark.dynamicAllocation.enabled" in barrier_problem(conf, slots=2, tasks=2)
    assert barrier_problem(SparkConf(loadDefaults=False), slots=2, tasks=2) is None


def test_memory_preflight_refuses_what_cannot_fit(digits_df, caplog):
    opt = DistriOptimizer(small_net(), digits_df, nn.ClassNLLCriterion(), SGD(learningrate=0.1, momentum=0.9),
                          Trigger.max_iteration(1), 16, feature_shape=(1, 8, 8))
    with caplog.at_level(logging.INFO, logger="kindling.spark"):
        opt.optimize()
    hellos = opt.engine.hellos  # what the real tasks reported about their memory
    assert len(opt.engine.preflight) == 1 and "pre-flight executor" in opt.engine.preflight[0]
    model = small_net()
    per_sample = activation_bytes(model, (1, 8, 8))
    fits = per_task_bytes(model, 1, 2, 16, per_sample, averaging=False)
    check_memory(hellos, fits)
    available = hellos[0]["memory"]["available"]
    huge_batch = 2 * available // per_sample  # activations beyond the host's memory
    with pytest.raises(ValueError, match="does not fit; raise .*lower batch_size"):
        check_memory(hellos, per_task_bytes(model, 1, 2, huge_batch, per_sample, averaging=False))


def test_repeated_optimize_calls_continue_in_one_flat_checkpoint_folder(digits_df, tmp_path):
    def make(end):
        return DistriOptimizer(small_net(), digits_df, nn.ClassNLLCriterion(), SGD(learningrate=0.1, momentum=0.9),
                               Trigger.max_iteration(end), 16, seed=4, feature_shape=(1, 8, 8))
    opt = make(4)
    opt.set_checkpoint(tmp_path / "ckpt", Trigger.several_iteration(2))
    opt.optimize()
    opt.end_trigger = Trigger.max_iteration(8)
    opt.optimize()  # a new barrier stage, from the driver's copy
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        f"{kind}.{i}" for kind in ("model", "optimMethod") for i in (2, 4, 6, 8))
    straight = make(8)
    straight.optimize()
    for k, v in straight.model.state_dict().items():
        assert np.array_equal(opt.model.state_dict()[k], v), k
