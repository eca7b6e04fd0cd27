"""The flat update (OptimMethod.update over FlatParameters) against the per-array path (apply over
entries, what a Spark task runs on its owned slices): bit for bit over multi-step training on real
digits, through freezing, unfreezing, a replaced head, assigned weights and a reloaded state; and
the module's parameters, the flat buffers and a checkpoint agreeing."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from kindling.runtime import format as kdl
from kindling.runtime import init, nn
from kindling.runtime.optim import SGD, Adagrad, Adam, OptimMethod, RMSprop
from kindling.runtime.optim.engine import compute_gradients, prepare_for_training

METHODS = {
    "sgd_nesterov_wd": lambda: SGD(learningrate=0.05, momentum=0.9, dampening=0.0, nesterov=True, weightdecay=1e-3),
    "sgd_bigdl_dampening": lambda: SGD(learningrate=0.05, momentum=0.8, weightdecay=5e-4),
    "sgd_plain_decay": lambda: SGD(learningrate=0.1, learningrate_decay=0.01),
    "adam": lambda: Adam(learningrate=0.01, weightdecay=1e-3),
    "rmsprop": lambda: RMSprop(learningrate=0.01, decayrate=0.9),
    "adagrad": lambda: Adagrad(learningrate=0.1, weightdecay=1e-3),
}


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images[:, None].astype(np.float32) / 16, d.target.astype(np.int64))


def _net():
    """A small CNN with Caffe's bias multipliers on one layer (two runs in the flat buffer)."""
    init.seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, name="conv1"), nn.ReLU(name="relu1"),
                          nn.MaxPool2d(2, 2, name="pool1"), nn.Conv2d(6, 8, 3, name="conv2"), nn.ReLU(name="relu2"),
                          nn.Flatten(name="flat"), nn.Linear(32, 16, name="fc1"), nn.ReLU(name="relu3"),
                          nn.Linear(16, 10, name="fc2"), name="net")
    model.find("conv2").set_mult("bias", lr_mult=2.0, decay_mult=0.0)
    prepare_for_training(model)
    return model


def _twin(model):
    twin = _net()
    twin.load_state_dict(model.state_dict())
    for a, b in zip(model.modules(), twin.modules()):
        b.frozen, b.lr_mult, b.decay_mult = a.frozen, dict(a.lr_mult), dict(a.decay_mult)
    return twin


class Pair:
    """The same training on two models: one updated per array, one through the flat buffers."""

    def __init__(self, make_method, digits):
        self.x, self.y = digits
        self.per, self.flat = _net(), _net()
        self.per_method, self.flat_method = make_method(), make_method()
        self.criterion = nn.CrossEntropyCriterion()
        self.batch = 0

    def steps(self, n):
        for _ in range(n):
            lo = (self.batch * 32) % (len(self.y) - 32)
            self.batch += 1
            x, y = self.x[lo:lo + 32], self.y[lo:lo + 32]
            compute_gradients(self.per, self.criterion, x, y)
            self.per_method.apply(self.per_method.entries(self.per))
            compute_gradients(self.flat, self.criterion, x, y)
            self.flat_method.update(self.flat)

    def both(self, f):
        f(self.per)
        f(self.flat)

    def assert_identical(self):
        for (k, a, _), (_, b, _) in zip(self.per.named_parameters(), self.flat.named_parameters()):
            np.testing.assert_array_equal(a, b, err_msg=k)
        assert self.per_method.buffers.keys() == self.flat_method.buffers.keys()
        for k, slots in self.per_method.buffers.items():
            for s, a in slots.items():
                np.testing.assert_array_equal(a, self.flat_method.buffers[k][s], err_msg=f"{k}/{s}")
        assert self.per_method.state == self.flat_method.state


@pytest.mark.parametrize("method", METHODS)
def test_multi_step_training_equals_the_per_array_update_bit_for_bit(digits, method):
    pair = Pair(METHODS[method], digits)
    pair.steps(12)
    pair.assert_identical()
    flat = pair.flat_method.flat_parameters(pair.flat)
    assert flat is not None and len(flat.runs) == 2  # (1, 1) and conv2.bias's (2, 0)
    assert not np.array_equal(pair.flat.find("fc1").params["weight"], _net().find("fc1").params["weight"])


def test_module_parameters_flat_buffers_and_a_checkpoint_agree(digits, tmp_path):
    pair = Pair(METHODS["sgd_bigdl_dampening"], digits)
    pair.steps(3)
    method, model = pair.flat_method, pair.flat
    flat = method.flat_parameters(model)
    for e in flat.entries:
        w, g = e.module.params[e.name], e.module.grads[e.name]
        assert np.shares_memory(w, flat.params) and np.shares_memory(g, flat.grads)
        np.testing.assert_array_equal(flat.params[e.start:e.stop], w.reshape(-1))
        np.testing.assert_array_equal(flat.slots["momentum"][e.start:e.stop], method.buffers[e.key]["momentum"].reshape(-1))
    # the backward pass accumulates into the flat gradient buffer itself
    compute_gradients(model, pair.criterion, pair.x[:16], pair.y[:16])
    assert method.flat_parameters(model) is flat
    assert np.abs(flat.grads).sum() > 0
    np.testing.assert_array_equal(flat.grads, np.concatenate([e.module.grads[e.name].reshape(-1) for e in flat.entries]))
    model.zero_grad()
    assert not flat.grads.any()
    # checkpoints: the model file and the method's per-key state
    kdl.save(model, tmp_path / "m.kdl")
    loaded = kdl.load(tmp_path / "m.kdl")
    for (k, a, _), (_, b, _) in zip(model.named_parameters(), loaded.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    method.save(tmp_path / "method.npz")
    again = OptimMethod.load(tmp_path / "method.npz")
    assert again.buffers.keys() == method.buffers.keys()
    for k, slots in method.buffers.items():
        np.testing.assert_array_equal(again.buffers[k]["momentum"], slots["momentum"])


def test_a_state_saved_by_the_per_array_update_resumes_identically_on_the_flat_one(digits, tmp_path):
    """The saved format is per parameter key, as before: an existing checkpoint still loads."""
    pair = Pair(METHODS["adam"], digits)
    pair.steps(4)
    pair.per_method.save(tmp_path / "per.npz")
    pair.flat_method = OptimMethod.load(tmp_path / "per.npz")
    pair.flat = _twin(pair.per)
    pair.steps(4)
    pair.assert_identical()
    # and loading a state into a method whose store is built replaces the store's slots
    pair.flat_method.load_state_dict(pair.per_method.state_dict())
    pair.steps(2)
    pair.assert_identical()


@pytest.mark.parametrize("method", ["sgd_bigdl_dampening", "adam"])
def test_freezing_unfreezing_and_a_new_head_rebuild_the_store(digits, method):
    pair = Pair(METHODS[method], digits)
    pair.steps(3)
    before = pair.flat_method.flat_parameters(pair.flat)
    pair.both(lambda m: m.freeze("conv1"))
    frozen = pair.flat.find("conv1").params["weight"].copy()
    pair.steps(3)
    after = pair.flat_method.flat_parameters(pair.flat)
    assert after is not before and "conv1.weight" not in {e.key for e in after.entries}
    w = pair.flat.find("conv1").params["weight"]
    np.testing.assert_array_equal(w, frozen)
    assert not np.shares_memory(w, after.params) and not np.shares_memory(w, before.params)  # released
    pair.assert_identical()
    pair.both(lambda m: m.unfreeze("conv1"))
    pair.steps(2)
    pair.assert_identical()
    # a new head (fresh slots beside existing ones: SGD's first momentum step on those only)
    for model in (pair.per, pair.flat):
        init.seed(5)
        model.replace("fc2", nn.Linear(16, 10, name="head"))
    pair.steps(3)
    pair.assert_identical()
    assert "head.weight" in {e.key for e in pair.flat_method.flat_parameters(pair.flat).entries}


def test_weights_assigned_or_loaded_by_name_are_the_ones_trained(digits):
    pair = Pair(METHODS["sgd_nesterov_wd"], digits)
    pair.steps(2)
    rng = np.random.default_rng(1)
    new = rng.standard_normal(pair.flat.find("fc1").params["weight"].shape).astype(np.float32)
    pair.both(lambda m: m.find("fc1").params.__setitem__("weight", new.copy()))  # a converter's assignment
    bias = rng.standard_normal(10).astype(np.float32)
    pair.both(lambda m: m.load_state_dict({"fc2.bias": bias}, strict=False))  # in place, into the views
    pair.steps(2)
    pair.assert_identical()
    flat = pair.flat_method.flat_parameters(pair.flat)
    assert np.shares_memory(pair.flat.find("fc1").params["weight"], flat.params)


def test_one_array_in_two_modules_keeps_the_per_array_update(digits):
    """Weights shared by two modules cannot become two views: the method steps arrays as before."""
    pair = Pair(METHODS["sgd_plain_decay"], digits)
    pair.steps(1)

    def share(model):
        tied = np.linspace(-0.1, 0.1, 20, dtype=np.float32)
        model.find("fc1").params["bias"], model.find("fc2").params["bias"] = tied[:16], tied[4:14]
    pair.both(share)
    pair.steps(3)
    assert pair.flat_method.flat_parameters(pair.flat) is None
    pair.assert_identical()


@pytest.mark.parametrize("method", ["sgd_bigdl_dampening", "adam"])
def test_small_chunks_on_the_thread_pool_give_the_same_bits(digits, method, monkeypatch):
    """Chunk boundaries inside parameters and runs, chunks shared among the pool's threads."""
    from kindling.runtime.optim import base
    monkeypatch.setattr(base, "CHUNK", 97)
    monkeypatch.setattr(base, "MIN_CHUNKS", 2)
    pair = Pair(METHODS[method], digits)
    pair.steps(4)
    for model in (pair.per, pair.flat):
        init.seed(5)
        model.replace("fc2", nn.Linear(16, 10, name="head"))
    pair.steps(4)
    pair.assert_identical()
    assert len(pair.flat_method.flat_parameters(pair.flat).take_chunks(97)) > 10
