"""No allocation in the steady state: once warmed up, a training iteration (forward, loss,
backward, SGD-momentum update) works in the buffers the layers, criterion and optimizer keep,
so it allocates no new arrays of the size of an activation.

Measured with tracemalloc, which numpy reports its array data to: the peak of traced memory
during an iteration above what was traced at its start. numpy's own per-call buffers (casting
chunks of ``np.getbufsize()`` elements, a setting of the calling thread) are made small for the
measurement, and the pieces of work run on this thread (``pool.serial``, the same cut into
per-thread pieces and partial sums), so they stay under the bound whatever the batch; every
layer's output here is at least twice the bound, so a layer allocating its output (or an input
gradient, or a mask of its size) would fail it."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from kindling.runtime import nn
from kindling.runtime.optim import SGD
from kindling.runtime.parallel import pool

BATCH = 64
BOUND = 32 << 10  # bytes a warmed-up iteration may allocate above what it started with


def _small_cnn(batchnorm: bool):
    layers = [nn.Conv2d(3, 8, 3, padding=1, name="conv1")]
    layers += [nn.BatchNorm2d(8, name="bn1")] if batchnorm else []
    layers += [nn.ReLU(name="relu1"), nn.MaxPool2d(2, 2, name="pool1"),
               nn.Conv2d(8, 16, 3, padding=1, name="conv2"), nn.ReLU(name="relu2"),
               nn.Dropout(0.25, seed=0, name="drop"), nn.MaxPool2d(2, 2, name="pool2"),
               nn.Flatten(name="flatten"), nn.Linear(16 * 4 * 4, 512, name="fc1"), nn.ReLU(name="relu3"),
               nn.Linear(512, 10, name="fc2"), nn.LogSoftmax(name="prob")]
    return nn.Sequential(*layers, name="small_cnn")


def _iteration(model, update: bool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    criterion = nn.ClassNLLCriterion()
    optim = SGD(learningrate=0.01, momentum=0.9, dampening=0.0)

    def step():
        model.zero_grad()
        out = model.forward(x)
        criterion.forward(out, y)
        model.backward(x, criterion.backward(out, y))
        if update:
            optim.update(model)
    return step


def _allocated_per_step(model, update: bool = True, steps: int = 3) -> int:
    """The largest rise of traced memory above its level at the start of a warmed-up step."""
    step = _iteration(model, update)
    bufsize = np.getbufsize()
    np.setbufsize(1024)
    with pool.serial():
        step()
        step()  # a second warm-up: buffers made on first use (momentum, gradient partial sums) exist
        tracemalloc.start()
        try:
            return _worst_step(step, steps)
        finally:
            tracemalloc.stop()
            np.setbufsize(bufsize)


def _worst_step(step, steps: int) -> int:
    worst = 0
    for _ in range(steps):
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        worst = max(worst, tracemalloc.get_traced_memory()[1] - start)
    return worst


def _smallest_output(model) -> int:
    return min(m.output.nbytes for m in model.modules() if not m.children() and m.name != "fc2"
               and m.name != "prob")


def test_a_warm_forward_loss_and_backward_allocate_no_activation():
    model = _small_cnn(batchnorm=False)
    allocated = _allocated_per_step(model, update=False)
    assert _smallest_output(model) >= 2 * BOUND  # the bound would catch any of these outputs
    assert allocated < BOUND, f"a warmed-up forward and backward allocated {allocated / 1024:.0f} KB"


def test_a_warm_training_iteration_with_its_sgd_update_allocates_no_activation():
    allocated = _allocated_per_step(_small_cnn(batchnorm=False))
    assert allocated < BOUND, f"a warmed-up iteration allocated {allocated / 1024:.0f} KB"


def test_a_warm_training_iteration_with_batchnorm_allocates_no_activation():
    allocated = _allocated_per_step(_small_cnn(batchnorm=True), update=False)
    assert allocated < BOUND, f"a warmed-up iteration allocated {allocated / 1024:.0f} KB"


def test_the_measurement_sees_a_layer_that_allocates_its_output():
    """The same measurement on a model whose ReLU makes a new output array every step fails."""
    class AllocatingReLU(nn.ReLU):
        runs_in_place = False

        def forward(self, x):
            self.output = np.maximum(x, 0)
            return self.output

    model = _small_cnn(batchnorm=False)
    model.modules_list[1] = AllocatingReLU(name="relu1")
    assert _allocated_per_step(model, update=False) >= BOUND
