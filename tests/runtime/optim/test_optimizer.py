"""The Optimizer loop against a plain PyTorch loop, step by step: same initial weights, same
batches in the same order.

Both frameworks are deterministic here, but they sum in different orders; over tens of steps a
1e-7 difference can flip a max-pool tie or a ReLU at zero (digits have flat black backgrounds),
after which the trajectories part. The seeds are fixed; with other seeds the agreement is the
same for most runs and within ~1e-3 for the rest."""
import logging

import numpy as np
import pytest

from helpers import to_numpy
from kindling.runtime import init, nn
from kindling.runtime.data import ArrayDataSet, epoch_order
from kindling.runtime.optim import SGD, Adam, EpochStep, Optimizer, Trigger

N, BATCH, STEPS = 192, 32, 50


def lenet():
    init.seed(0)  # the same starting weights every run (both frameworks then compute deterministically)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, name="conv1"), nn.MaxPool2d(2, 2, name="pool1"), nn.ReLU(name="r1"),
        nn.Conv2d(6, 12, 5, name="conv2"), nn.MaxPool2d(2, 2, name="pool2"), nn.ReLU(name="r2"),
        nn.Flatten(name="flat"), nn.Linear(192, 32, name="ip1"), nn.ReLU(name="r3"),
        nn.Linear(32, 10, name="ip2"), nn.LogSoftmax(name="prob"), name="lenet")


def torch_lenet(torch, model):
    tn = torch.nn
    t = tn.Sequential(tn.Conv2d(1, 6, 5), tn.MaxPool2d(2, 2), tn.ReLU(), tn.Conv2d(6, 12, 5), tn.MaxPool2d(2, 2),
                      tn.ReLU(), tn.Flatten(), tn.Linear(192, 32), tn.ReLU(), tn.Linear(32, 10), tn.LogSoftmax(1))
    with torch.no_grad():
        for i, name in ((0, "conv1"), (3, "conv2"), (7, "ip1"), (9, "ip2")):
            for p in ("weight", "bias"):
                getattr(t[i], p).copy_(torch.from_numpy(model.find(name).params[p]))
    return t, {"conv1": t[0], "conv2": t[3], "ip1": t[7], "ip2": t[9]}


def data():
    """Real handwritten digits (scikit-learn's), stretched to 28x28, scaled to [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR),
                             np.float32) / 255 for im in d.images[:N]])[:, None]
    return x, d.target[:N]


CASES = {
    "sgd_nesterov_wd_epochstep": (
        lambda: SGD(learningrate=0.02, momentum=0.9, dampening=0.0, nesterov=True, weightdecay=1e-4,
                    learningrate_schedule=EpochStep(3, 0.5)),
        lambda t, params: t.optim.SGD(params, lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda epoch: 0.02 * 0.5 ** (epoch // 3), ()),
    "adam": (lambda: Adam(learningrate=1e-3), lambda t, params: t.optim.Adam(params, lr=1e-3), None, ()),
    "sgd_frozen_convs": (
        lambda: SGD(learningrate=0.05, momentum=0.9, dampening=0.0),
        lambda t, params: t.optim.SGD(params, lr=0.05, momentum=0.9), None, ("conv1", "conv2")),
}


@pytest.mark.parametrize("case", CASES)
def test_optimizer_follows_pytorch_step_by_step(torch, case):
    make, tmake, lr_of_epoch, frozen = CASES[case]
    model = lenet()
    tmodel, tlayers = torch_lenet(torch, model)
    model.freeze(*frozen) if frozen else None
    tparams = [p for name, layer in tlayers.items() if name not in frozen for p in layer.parameters()]
    for name in frozen:
        for p in tlayers[name].parameters():
            p.requires_grad_(False)
    topt = tmake(torch, tparams)
    x, y = data()
    opt = Optimizer(model, ArrayDataSet(x, y), nn.ClassNLLCriterion(), make(), Trigger.max_iteration(STEPS), BATCH,
                    seed=7, workers=0)
    opt.optimize()
    # the same batches, in the same order, through PyTorch
    losses, it, epoch = [], 0, 1
    loss_fn = torch.nn.NLLLoss()
    while it < STEPS:
        order = epoch_order(N, 7, epoch)
        if lr_of_epoch:
            for g in topt.param_groups:
                g["lr"] = lr_of_epoch(epoch)
        for b in range(0, N, BATCH):
            idx = order[b:b + BATCH]
            topt.zero_grad()
            loss = loss_fn(tmodel(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            topt.step()
            losses.append(float(loss.detach()))
            it += 1
            if it == STEPS:
                break
        epoch += 1
    ours = [h["loss"] for h in opt.history]
    assert len(ours) == STEPS
    np.testing.assert_allclose(ours, losses, rtol=1e-4)
    for name, layer in tlayers.items():
        for p in ("weight", "bias"):
            np.testing.assert_allclose(model.find(name).params[p], to_numpy(getattr(layer, p)), rtol=1e-4, atol=1e-5)
    if frozen:
        assert "weight" not in model.find("conv1").grads, "frozen layers are not even differentiated"


def test_log_line_is_bigdls(caplog):
    x, y = data()
    opt = Optimizer(lenet(), ArrayDataSet(x[:64], y[:64]), nn.ClassNLLCriterion(),
                    SGD(learningrate=1e-4, weightdecay=1e-4, momentum=0.8, dampening=0.0, nesterov=True),
                    Trigger.max_iteration(2), 16, workers=0)
    with caplog.at_level(logging.INFO, logger="kindling.optim"):
        opt.optimize()
    first = caplog.records[0].getMessage()
    assert first.startswith("[Epoch 1 0/64][Iteration 1][Wall Clock ")
    assert "Train 16 in " in first and "records/second. Loss is " in first
    assert first.endswith("Current learning rate is 1.0E-4. Current weight decay is 1.0E-4. "
                          "Current momentum is 0.8. Current nesterov is true.")
    assert caplog.records[1].getMessage().startswith("[Epoch 1 16/64][Iteration 2]")
