"""Trains the small net of test_standalone.py through DistriOptimizer on the master given as
argv[1] and writes the final weights to argv[2] (.npz): run in its own process, since a Python
process holds one SparkContext."""
import os
import sys

import numpy as np


def digits_frame(spark):
    from sklearn.datasets import load_digits
    d = load_digits()
    rows = [((im / 16).astype(np.float32).ravel().tolist(), int(t)) for im, t in zip(d.images[:400], d.target[:400])]
    # no repartition: the DataFrame's row order numbers the samples, and a shuffle's is not fixed
    return spark.createDataFrame(rows, "features array<float>, label int")


def small_net():
    from kindling.runtime import init, nn
    init.seed(8)
    return nn.Sequential(nn.Conv2d(1, 6, 3, name="c1"), nn.ReLU(name="r1"), nn.MaxPool2d(2, 2, name="p1"),
                         nn.Flatten(name="f"), nn.Dropout(0.2, name="drop"), nn.Linear(54, 10, name="fc"),
                         nn.LogSoftmax(name="out"))


def train(spark):
    from kindling.runtime import nn
    from kindling.runtime.optim import Adam, Top1Accuracy, Trigger
    from kindling.runtime.spark import DistriOptimizer
    df = digits_frame(spark)
    opt = DistriOptimizer(small_net(), df, nn.ClassNLLCriterion(), Adam(learningrate=0.01),
                          Trigger.max_iteration(12), 20, seed=6, feature_shape=(1, 8, 8), num_tasks=2)
    opt.set_validation(Trigger.several_iteration(6), df, [Top1Accuracy()])
    model = opt.optimize()
    return model, opt


if __name__ == "__main__":
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master(sys.argv[1]).appName("kindling-standalone-test")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.executor.cores", "1").config("spark.cores.max", "2")
             .config("spark.executor.memory", "1g").config("spark.pyspark.python", sys.executable).getOrCreate())
    try:
        model, opt = train(spark)
        np.savez(sys.argv[2], **model.state_dict(), _executors=np.array(sorted({h["executor"] for h in opt.engine.hellos})),
                 _blas=np.array([h["blas"] for h in opt.engine.hellos]),
                 _top1=np.array(opt.last_validation["results"]["Top1Accuracy"]))
    finally:
        spark.stop()
    os._exit(0)
