"""The transfer-learning story on real files: the real Caffe LeNet, a new last layer, fine-tuned on
scikit-learn's real digits written out as a JPEG class-folder tree."""
import logging
import subprocess
import sys

import numpy as np
import pytest

import kindling
from caffe_nets import LENET
from kindling.commands.demo import write_digits
from kindling.converters import caffe
from kindling.runtime import init, nn
from kindling.runtime.data import ImageFolder, Pipeline
from kindling.runtime.optim import SGD, Loss, Optimizer, Top1Accuracy, Trigger, TrainSummary, ValidationSummary
from kindling.runtime.optim.checkpoint import load_checkpoint

PRE = {"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


def _lenet_with_new_head():
    init.seed(0)
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", preprocessing=PRE)
    model.replace("ip2", nn.Linear(500, 10, name="ip2_digits"))
    model.replace("prob", nn.LogSoftmax(name="prob"))
    return model


@pytest.mark.parametrize("frozen", [(), ("conv1", "conv2")], ids=["all_layers", "convs_frozen"])
def test_fine_tuned_lenet_reaches_95_percent_on_held_out_digits(digits, tmp_path, frozen):
    model = _lenet_with_new_head()
    if frozen:
        model.freeze(*frozen)
    conv1 = model.find("conv1").params["weight"].copy()
    data = ImageFolder(digits, Pipeline.from_metadata(PRE))
    train, val = data.split(0.25, seed=0)
    opt = Optimizer(model, train, nn.ClassNLLCriterion(),
                    SGD(learningrate=0.01, momentum=0.9, dampening=0.0, nesterov=True, weightdecay=1e-4),
                    Trigger.max_epoch(3), batch_size=32, seed=0)
    opt.set_validation(Trigger.every_epoch(), val, [Top1Accuracy(), Loss()])
    opt.set_checkpoint(tmp_path / "ckpt", Trigger.every_epoch())
    opt.set_train_summary(TrainSummary(tmp_path / "logs", "run1"))
    opt.set_val_summary(ValidationSummary(tmp_path / "logs", "run1"))
    opt.optimize()
    result = model.evaluate(val, [Top1Accuracy()], batch_size=128)
    accuracy = result[0][1].result()[0]
    print(f"\nheld-out top-1 after 3 epochs ({'convs frozen' if frozen else 'all layers'}): {result}")
    assert accuracy >= 0.95
    assert np.array_equal(model.find("conv1").params["weight"], conv1) == bool(frozen)
    # the snapshot is validated: its metadata records the latest validation and its data set
    snaps = sorted((tmp_path / "ckpt").glob("model.*"), key=lambda p: int(p.name.split(".")[1]))
    meta = kindling.load(snaps[-1]).metadata
    assert meta["training"]["epoch"] == 3 and meta["training"]["validation"]["results"]["Top1Accuracy"] >= 0.95
    assert "validation" in meta["training"]["validation"]["dataset"] and meta["preprocessing"]["channel_order"] == "gray"
    # TensorBoard's own reader sees the summaries
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train_events = EventAccumulator(str(tmp_path / "logs" / "run1" / "train")).Reload()
    val_events = EventAccumulator(str(tmp_path / "logs" / "run1" / "validation")).Reload()
    assert {"Loss", "Throughput", "LearningRate"} <= set(train_events.Tags()["scalars"])
    assert len(train_events.Scalars("Loss")) == opt.optim_method.state["iteration"]
    assert [e.step for e in val_events.Scalars("Top1Accuracy")] == [
        s for s, _, _ in opt.val_summary.read_scalar("Top1Accuracy")]
    assert len(val_events.Scalars("Top1Accuracy")) == 3


def test_resume_gives_the_same_weights_as_a_straight_run(digits, tmp_path):
    data = ImageFolder(digits, Pipeline.from_metadata({**PRE, "input_size": [28, 28]}, train=True))
    train, _ = data.split(0.5, seed=1)

    def run(end, ckpt=None, resume=None):
        if resume:
            opt = Optimizer.resume(resume, train, nn.ClassNLLCriterion(), Trigger.max_iteration(end), 16, seed=5)
        else:
            opt = Optimizer(_lenet_with_new_head(), train, nn.ClassNLLCriterion(),
                            SGD(learningrate=0.01, momentum=0.9, dampening=0.0, nesterov=True, weightdecay=1e-4),
                            Trigger.max_iteration(end), 16, seed=5)
        if ckpt:
            opt.set_checkpoint(ckpt, Trigger.several_iteration(20))
        return opt.optimize()

    straight = run(40)
    run(20, ckpt=tmp_path / "ckpt")
    resumed = run(40, resume=tmp_path / "ckpt" / "model.20")
    for k, v in straight.state_dict().items():
        assert np.array_equal(v, resumed.state_dict()[k]), k
    model, method = load_checkpoint(tmp_path / "ckpt" / "model.20")
    assert method.state["iteration"] == 20 and model.metadata["training"]["iteration"] == 20


def test_a_corrupt_image_is_skipped_with_a_warning(digits, tmp_path, caplog):
    import shutil
    root = tmp_path / "d"
    for c in ("3", "7"):
        shutil.copytree(digits / c, root / c)
    bad = root / "3" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    data = ImageFolder(root, Pipeline.from_metadata(PRE))
    model = _lenet_with_new_head()
    opt = Optimizer(model, data, nn.ClassNLLCriterion(), SGD(learningrate=0.01), Trigger.max_epoch(1), 64, seed=0)
    with caplog.at_level(logging.WARNING, logger="kindling.data"):
        opt.optimize()
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)
    assert opt.optim_method.state["iteration"] == -(-len(data) // 64)
    strict = Optimizer(model, data, nn.ClassNLLCriterion(), SGD(learningrate=0.01), Trigger.max_epoch(1), 64, seed=0,
                       strict_data=True)
    with pytest.raises(ValueError, match="broken.jpg"):
        strict.optimize()


def test_kindling_train_command(digits, tmp_path):
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", preprocessing=PRE)
    kindling.save(model, tmp_path / "lenet.kdl")
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--model", tmp_path / "lenet.kdl", "--train", digits,
                        "--new-head", "ip2_digits:10", "--freeze", "conv1,conv2", "--epochs", "2", "--batch-size", "32",
                        "--lr", "0.01", "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4",
                        "--schedule", "epochstep:20:0.1", "--checkpoint", tmp_path / "ckpt", "--log-dir",
                        tmp_path / "logs", "--app-name", "run1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[Epoch 1 0/" in r.stderr and "Current nesterov is true." in r.stderr
    assert "Top1Accuracy is Accuracy(correct:" in r.stderr
    assert "replaced ip2 (10 outputs) by a new ip2_digits" in r.stdout
    final = float(r.stdout.split("Top1Accuracy ")[1].split(",")[0])
    assert final >= 0.9
    snap = kindling.load(sorted((tmp_path / "ckpt").glob("model.*"))[-1])
    assert snap.metadata["labels"] == [str(i) for i in range(10)] and snap.find("ip2_digits").frozen is False
    assert snap.find("conv1").frozen


def test_kindling_train_takes_a_labels_file_and_leaves_one_beside_the_snapshots(digits, tmp_path):
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", preprocessing=PRE)
    kindling.save(model, tmp_path / "lenet.kdl")
    classes = [str(i) for i in range(9, -1, -1)] + ["not yet collected"]  # reversed, and one class without images
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--model", tmp_path / "lenet.kdl", "--train", digits,
                        "--labels", tmp_path / "classes.txt", "--new-head", "ip2_digits:11", "--epochs", "1",
                        "--lr", "0.01", "--momentum", "0.9", "--checkpoint", tmp_path / "ckpt"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ckpt" / "labels.txt").read_text().splitlines() == classes
    snap = kindling.load(sorted((tmp_path / "ckpt").glob("model.*"))[-1])
    assert snap.metadata["labels"] == classes
    # resuming with other classes than the snapshot's is refused, naming both
    (tmp_path / "other.txt").write_text("a\nb\n")
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--resume", sorted((tmp_path / "ckpt").glob("model.*"))[-1],
                        "--train", digits, "--labels", tmp_path / "other.txt", "--epochs", "2", "--checkpoint",
                        tmp_path / "ckpt"], capture_output=True, text=True)
    assert r.returncode != 0 and "differs from the classes" in r.stderr
