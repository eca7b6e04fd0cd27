"""Optim methods against torch.optim step by step, BigDL's extras against their closed forms,
multipliers, frozen modules, and exact state save/load."""
import numpy as np
import pytest

from kindling.runtime import nn
from kindling.runtime.optim import SGD, Adagrad, Adam, EpochStep, OptimMethod, RMSprop


def _run(torch, ours, theirs_factory, steps=50, seed=0):
    rng = np.random.default_rng(seed)
    lin = nn.Linear(6, 4, name="fc")
    tparams = [torch.nn.Parameter(torch.from_numpy(lin.params[k].copy())) for k in ("weight", "bias")]
    theirs = theirs_factory(tparams)
    for _ in range(steps):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in tparams]
        lin.grads = {"weight": grads[0].copy(), "bias": grads[1].copy()}
        ours.update(lin)
        for p, g in zip(tparams, grads):
            p.grad = torch.from_numpy(g.copy())
        theirs.step()
    return lin, tparams


CASES = {
    "sgd_plain": (lambda: SGD(learningrate=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    "sgd_momentum_nesterov_wd": (
        lambda: SGD(learningrate=0.05, momentum=0.9, dampening=0.0, nesterov=True, weightdecay=1e-3),
        lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "sgd_momentum_dampening": (lambda: SGD(learningrate=0.05, momentum=0.8, dampening=0.3),
                               lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3)),
    "adam": (lambda: Adam(learningrate=0.01, weightdecay=1e-3), lambda t, p: t.optim.Adam(p, lr=0.01, weight_decay=1e-3)),
    "rmsprop": (lambda: RMSprop(learningrate=0.01, decayrate=0.9), lambda t, p: t.optim.RMSprop(p, lr=0.01, alpha=0.9)),
    "adagrad": (lambda: Adagrad(learningrate=0.1, learningrate_decay=0.01, weightdecay=1e-3),
                lambda t, p: t.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=1e-3)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_for_50_steps(torch, case):
    ours, theirs = CASES[case]
    lin, tparams = _run(torch, ours(), lambda p: theirs(torch, p))
    for k, p in zip(("weight", "bias"), tparams):
        np.testing.assert_allclose(lin.params[k], p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_default_momentum_dampening_is_bigdls():
    """BigDL/Torch7: dampening defaults to the momentum, and the first step uses the raw gradient."""
    w = np.array([1.0], np.float32)
    m = nn.Linear(1, 1, bias=False, name="l")
    m.params["weight"] = w.reshape(1, 1).copy()
    sgd = SGD(learningrate=0.1, momentum=0.5)
    for g in (1.0, 1.0):
        m.grads = {"weight": np.array([[g]], np.float32)}
        sgd.update(m)
    # v1 = 1; v2 = 0.5*1 + (1-0.5)*1 = 1; w = 1 - 0.1 - 0.1
    assert m.params["weight"][0, 0] == pytest.approx(0.8)


def test_learning_rate_decay_and_epoch_step_closed_forms():
    sgd = SGD(learningrate=0.1, learningrate_decay=0.5)
    sgd.state["iteration"] = 4
    assert sgd.current_learning_rate() == pytest.approx(0.1 / (1 + 4 * 0.5))
    stepped = SGD(learningrate=0.1, learningrate_schedule=EpochStep(2, 0.1))
    for epoch, expected in ((1, 0.1), (2, 0.01), (3, 0.01), (4, 0.001)):
        stepped.set_epoch(epoch)
        assert stepped.current_learning_rate() == pytest.approx(expected)


def test_multipliers_and_frozen_modules():
    model = nn.Sequential(nn.Linear(2, 2, name="a"), nn.Linear(2, 2, name="b"), nn.Linear(2, 2, name="c"))
    model.find("a").set_mult("weight", lr_mult=10.0, decay_mult=0.0)
    model.freeze("c")
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for m in model.modules():
        m.grads = {k: np.ones_like(v) for k, v in m.params.items()}
    SGD(learningrate=0.01, weightdecay=0.5).update(model)
    after = model.state_dict()
    np.testing.assert_allclose(after["a.weight"], before["a.weight"] - 0.1)  # lr x10, no decay
    np.testing.assert_allclose(after["b.weight"], before["b.weight"] - 0.01 * (1 + 0.5 * before["b.weight"]), rtol=1e-6)
    assert np.array_equal(after["c.weight"], before["c.weight"])


@pytest.mark.parametrize("make", [lambda: SGD(learningrate=0.05, momentum=0.9, dampening=0.0, nesterov=True,
                                              learningrate_schedule=EpochStep(1, 0.5)),
                                  lambda: Adam(learningrate=0.01)], ids=["sgd", "adam"])
def test_state_save_load_continues_exactly(tmp_path, make):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 3)).astype(np.float32) for _ in range(10)]

    def fresh():
        m = nn.Linear(3, 3, bias=False, name="l")
        m.params["weight"] = np.eye(3, dtype=np.float32)
        return m

    straight, method = fresh(), make()
    for g in grads:
        straight.grads = {"weight": g.copy()}
        method.update(straight)
    resumed, first = fresh(), make()
    for g in grads[:5]:
        resumed.grads = {"weight": g.copy()}
        first.update(resumed)
    first.save(tmp_path / "optimMethod.5")
    second = OptimMethod.load(tmp_path / "optimMethod.5")
    assert type(second) is type(first) and second.hyper() == first.hyper()
    for g in grads[5:]:
        resumed.grads = {"weight": g.copy()}
        second.update(resumed)
    assert np.array_equal(resumed.params["weight"], straight.params["weight"])


def test_bad_hyper_parameters_are_named():
    with pytest.raises(ValueError, match="learningrate must be >= 0"):
        SGD(learningrate=-1)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0 and dampening 0"):
        SGD(momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="beta1 and beta2"):
        Adam(beta1=1.5)
