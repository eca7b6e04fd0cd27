"""`kindling train --master local[2]`: the issue's acceptance (the real Caffe LeNet with a new head,
fine-tuned on the digits JPEG tree, reaches held-out Top-1 >= 0.95) with the same snapshots,
labels.txt, log lines and TensorBoard files as a local run; one seed gives one run, bit for bit,
locally and on Spark; a resumed run ends where an uninterrupted one does."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import kindling
from caffe_nets import LENET
from kindling.converters import caffe
from kindling.runtime.optim.checkpoint import snapshots

PRE = {"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]}
ARGS = ["--new-head", "ip2_digits:10", "--epochs", "1", "--checkpoint-every", "20", "--batch-size", "32", "--lr", "0.01", "--momentum", "0.9",
        "--nesterov", "--weight-decay", "1e-4", "--seed", "5", "--app-name", "run"]


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "lenet.kdl"
    kindling.save(caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", preprocessing=PRE),
                  path)
    return path


def train(lenet_file, digits, out, *extra):
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--model", lenet_file, "--train", digits, *ARGS,
                        "--checkpoint", out / "ckpt", "--log-dir", out / "logs", *extra],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def final(out):
    return kindling.load(snapshots(out / "ckpt")[-1])


def same_bits(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def training_lines(stderr):
    return [line for line in stderr.splitlines() if re.match(r"\[Epoch \d+ \d+/\d+\]\[Iteration \d+\]", line)]


def tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    return EventAccumulator(str(folder)).Reload().Tags()["scalars"]


@pytest.fixture(scope="module")
def local_run(lenet_file, digits_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, train(lenet_file, digits_tree, out)


def test_one_seed_one_run_locally_and_resumed_equals_uninterrupted(lenet_file, digits_tree, local_run, tmp_path):
    out, _ = local_run
    again = tmp_path / "again"
    train(lenet_file, digits_tree, again)
    assert same_bits(final(out), final(again)), "two runs with --seed 5 differ"
    first = snapshots(out / "ckpt")[0]
    assert first.name == "model.20"
    resumed = tmp_path / "resumed"
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--resume", first, "--train", digits_tree,
                        *ARGS[2:], "--checkpoint", resumed / "ckpt"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in snapshots(resumed / "ckpt")] == ["model.40"]
    assert same_bits(final(out), final(resumed)), "resuming at iteration 20 ends elsewhere than the straight run"


def test_on_spark_local2_same_run_as_locally_and_95_percent(lenet_file, digits_tree, local_run, tmp_path):
    out, local = local_run
    spark = tmp_path / "spark"
    r = train(lenet_file, digits_tree, spark, "--master", "local[2]")
    accuracy = float(r.stdout.split("Top1Accuracy ")[1].split(",")[0])
    print(f"\nheld-out Top-1 after 1 epoch on Spark local[2]: {accuracy:.4f}")
    assert accuracy >= 0.95
    # the same files as a local run: snapshots, their validation record, labels.txt, TensorBoard
    assert [p.name for p in snapshots(spark / "ckpt")] == [p.name for p in snapshots(out / "ckpt")]
    assert (spark / "ckpt" / "labels.txt").read_text() == (out / "ckpt" / "labels.txt").read_text()
    meta = final(spark).metadata
    assert meta["labels"] == [str(i) for i in range(10)] and meta["preprocessing"]["channel_order"] == "gray"
    for part in ("train", "validation"):
        assert tags(spark / "logs" / "run" / part) == tags(out / "logs" / "run" / part)
    # the same log lines, numbers included (the losses agree to rounding)
    ours, theirs = training_lines(r.stderr), training_lines(local.stderr)
    assert [line.split("[Wall")[0] for line in ours] == [line.split("[Wall")[0] for line in theirs]
    assert "pre-flight executor 127.0.0.1:" in r.stderr
    losses = [float(re.search(r"Loss is ([0-9]+\.[0-9]+)", line).group(1)) for line in ours]
    assert losses == pytest.approx([float(re.search(r"Loss is ([0-9]+\.[0-9]+)", line).group(1)) for line in theirs], rel=1e-4)
    a, b = final(out), final(spark)
    for k, v in a.state_dict().items():
        assert np.abs(b.state_dict()[k] - v).max() <= 1e-5 * np.abs(v).max(), k
    # one seed, one run on Spark too
    again = tmp_path / "spark_again"
    train(lenet_file, digits_tree, again, "--master", "local[2]")
    assert same_bits(final(spark), final(again)), "two Spark runs with --seed 5 differ"
