"""What distributed training keeps from local training: dropout drawn per sample (so equal to
local), frozen layers and lr multipliers; parameter averaging (k = 1 with SGD is synchronous,
k > 1 converges); and the one documented difference, BatchNorm's per-task batch statistics."""
import numpy as np
import pytest

from helpers import rel_error
from kindling.runtime import init, nn
from kindling.runtime.data import ArrayDataSet
from kindling.runtime.optim import SGD, Optimizer, Top1Accuracy, Trigger
from kindling.runtime.spark import DistriOptimizer


@pytest.fixture(scope="module")
def digits(spark):
    from sklearn.datasets import load_digits
    d = load_digits()
    x, y = (d.images / 16).astype(np.float32)[:, None], d.target
    x = ((x - x.mean()) / x.std()).astype(np.float32)
    frame = spark.createDataFrame([(xi.ravel().tolist(), int(yi)) for xi, yi in zip(x, y)],
                                  "features array<float>, label int").cache()
    return x, y, frame


def net(seed=3, dropout=False, batchnorm=False):
    init.seed(seed)
    layers = [nn.Conv2d(1, 8, 3, name="c1")]
    layers += [nn.BatchNorm2d(8, name="bn1")] if batchnorm else []
    layers += [nn.ReLU(name="r1"), nn.MaxPool2d(2, 2, name="p1"), nn.Flatten(name="f"), nn.Linear(72, 32, name="fc1"),
               nn.ReLU(name="r2")]
    layers += [nn.Dropout(0.3, name="drop")] if dropout else []
    layers += [nn.Linear(32, 10, name="fc2"), nn.LogSoftmax(name="out")]
    return nn.Sequential(*layers)


def run_both(digits, make, iterations=10, batch=24, method=lambda: SGD(learningrate=0.05, momentum=0.9), **spark):
    x, y, frame = digits
    local = make()
    Optimizer(local, ArrayDataSet(x, y), nn.ClassNLLCriterion(), method(), Trigger.max_iteration(iterations), batch,
              seed=9, workers=0).optimize()
    dist = make()
    DistriOptimizer(dist, frame, nn.ClassNLLCriterion(), method(), Trigger.max_iteration(iterations), batch, seed=9,
                    feature_shape=(1, 8, 8), **spark).optimize()
    return local, dist


def worst(a, b):
    return max(rel_error(b.state_dict()[k], v) for k, v in a.state_dict().items())


def test_dropout_masks_follow_the_sample_so_distributed_equals_local(digits):
    local, dist = run_both(digits, lambda: net(dropout=True))
    assert worst(local, dist) <= 1e-5
    plain, _ = run_both(digits, net, iterations=10)
    assert worst(local, plain) > 1e-3, "dropout did change the run"


def test_frozen_layers_and_lr_multipliers_behave_as_locally(digits):
    def make():
        m = net()
        m.freeze("c1")
        m.find("fc1").set_mult("weight", lr_mult=3.0, decay_mult=0.0)
        return m
    local, dist = run_both(digits, make, method=lambda: SGD(learningrate=0.05, momentum=0.9, weightdecay=1e-3))
    assert np.array_equal(dist.find("c1").params["weight"], make().find("c1").params["weight"])
    assert worst(local, dist) <= 1e-5


def test_averaging_every_step_with_sgd_is_synchronous(digits):
    sync, averaged = (run_both(digits, net, **kw)[1] for kw in ({}, {"averaging_frequency": 1}))
    assert worst(sync, averaged) <= 1e-5


def test_averaging_every_four_steps_converges_on_the_digits(digits):
    x, y, frame = digits
    model = net()
    opt = DistriOptimizer(model, frame, nn.ClassNLLCriterion(), SGD(learningrate=0.1, momentum=0.9),
                          Trigger.max_epoch(4), 32, seed=1, feature_shape=(1, 8, 8), averaging_frequency=4)
    opt.set_validation(Trigger.every_epoch(), frame, [Top1Accuracy()])
    opt.optimize()
    losses = [h["loss"] for h in opt.history]
    print(f"\naveraging every 4 steps, 4 epochs: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}, "
          f"top-1 {opt.last_validation['results']['Top1Accuracy']:.4f}")
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
    assert opt.last_validation["results"]["Top1Accuracy"] >= 0.85
    # the driver's copy is the tasks' average: it scores what the distributed validation said
    local = model.evaluate(ArrayDataSet(x, y), [Top1Accuracy()], batch_size=256)
    assert local[0][1].result()[0] == pytest.approx(opt.last_validation["results"]["Top1Accuracy"], abs=1e-9)


def test_batchnorm_uses_per_task_batch_statistics_the_one_difference(digits):
    """Each task normalises with the statistics of its own share of the batch (as BigDL and
    Horovod without SyncBatchNorm do): one task equals local training, two differ a little."""
    one_local, one_task = run_both(digits, lambda: net(batchnorm=True), num_tasks=1)
    assert worst(one_local, one_task) <= 1e-5
    local, two_tasks = run_both(digits, lambda: net(batchnorm=True), num_tasks=2)
    sa, sb = local.state_dict(), two_tasks.state_dict()
    va = np.concatenate([v.ravel() for v in sa.values()])
    gap = float(np.linalg.norm(va - np.concatenate([sb[k].ravel() for k in sa])) / np.linalg.norm(va))
    print(f"\nBatchNorm, 10 iterations at batch 24 on 2 tasks vs local: weights {gap:.2e} apart (L2, relative)")
    assert 1e-5 < gap < 0.05


def test_a_free_size_net_reads_flat_features_at_its_preprocessing_size(digits):
    """A converted fully convolutional net records -1 for H and W; flat features are read at the
    size its preprocessing records (no feature_shape=), and train as locally."""
    x, y, frame = digits

    def make():
        init.seed(5)
        m = nn.Sequential(nn.Conv2d(1, 8, 3, name="c1"), nn.ReLU(name="r1"), nn.Conv2d(8, 10, 1, name="c2"),
                          nn.AvgPool2d(6, name="gap"), nn.Flatten(name="f"), nn.LogSoftmax(name="out"))
        m.metadata = {"input_shape": [-1, 1, -1, -1], "preprocessing": {"input_size": [8, 8]}}
        return m
    local = make()
    Optimizer(local, ArrayDataSet(x, y), nn.ClassNLLCriterion(), SGD(learningrate=0.05), Trigger.max_iteration(6),
              24, seed=9, workers=0).optimize()
    dist = make()
    DistriOptimizer(dist, frame, nn.ClassNLLCriterion(), SGD(learningrate=0.05), Trigger.max_iteration(6), 24,
                    seed=9).optimize()
    assert worst(local, dist) <= 1e-5
