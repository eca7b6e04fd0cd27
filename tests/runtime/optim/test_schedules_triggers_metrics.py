import numpy as np
import pytest

from kindling.runtime.optim import (Exponential, Loss, MultiStep, Plateau, Poly, SequentialSchedule, Step, Top1Accuracy,
                                    Top5Accuracy, TopKAccuracy, Trigger, Warmup)
from kindling.runtime.optim.schedules import from_config, parse


def S(iteration=0, epoch=1):
    return {"iteration": iteration, "epoch": epoch}


@pytest.mark.parametrize("schedule,state,expected", [
    (Step(10, 0.5), S(25), 0.1 * 0.5 ** 2),
    (MultiStep([5, 12], 0.1), S(12), 0.1 * 0.1 ** 2),
    (MultiStep([5, 12], 0.1), S(11), 0.1 * 0.1),
    (Poly(2.0, 100), S(50), 0.1 * 0.5 ** 2),
    (Poly(2.0, 100), S(101), 0.0),
    (Exponential(10, 0.5), S(15), 0.1 * 0.5 ** 1.5),
    (Exponential(10, 0.5, stair_case=True), S(15), 0.1 * 0.5),
    (Warmup(0.01), S(3), 0.1 + 0.03),
])
def test_schedule_closed_forms(schedule, state, expected):
    assert schedule.rate(0.1, state) == pytest.approx(expected)
    assert from_config({"config": schedule.config()}).rate(0.1, state) == pytest.approx(expected)


def test_sequential_schedule_warmup_then_poly():
    s = SequentialSchedule(5).add(Warmup(0.01), 3).add(Poly(1.0, 10), 10)
    rates = [s.rate(0.1, S(i)) for i in range(6)]
    assert rates[:3] == pytest.approx([0.1, 0.11, 0.12])
    assert rates[3:] == pytest.approx([0.1, 0.1 * 0.9, 0.1 * 0.8])  # Poly counts from its own start


def test_plateau_reduces_after_patience_and_saves_state():
    p = Plateau(factor=0.5, patience=2, mode="max")
    for score in (0.5, 0.6, 0.6, 0.6):
        p.on_validation(score)
    assert p.rate(0.1, S()) == pytest.approx(0.05)
    q = from_config({"config": p.config(), "state": p.state()})
    assert q.rate(0.1, S()) == pytest.approx(0.05)


def test_parse_command_line_schedules():
    assert parse("epochstep:20:0.1").rate(1.0, S(epoch=40)) == pytest.approx(0.01)
    assert parse("multistep:100,200:0.5").rate(1.0, S(150)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="--schedule"):
        parse("cosine:1")


def test_triggers():
    assert Trigger.every_epoch()({**S(10), "epoch_end": True}) and not Trigger.every_epoch()(S(10))
    assert [i for i in range(1, 10) if Trigger.several_iteration(3)(S(i))] == [3, 6, 9]
    assert Trigger.max_epoch(2)({**S(50, 2), "epoch_end": True}) and not Trigger.max_epoch(2)(S(50, 2))
    assert Trigger.max_iteration(5)(S(5)) and not Trigger.max_iteration(5)(S(4))
    assert Trigger.min_loss(0.1)({**S(), "loss": 0.05}) and not Trigger.min_loss(0.1)({**S(), "loss": 0.2})
    assert Trigger.max_score(0.9)({**S(), "score": 0.95}) and not Trigger.max_score(0.9)({**S(), "score": None})
    both = Trigger.min_loss(0.1) & Trigger.max_epoch(2)
    either = Trigger.min_loss(0.1) | Trigger.max_iteration(3)
    assert not both({**S(3, 1), "loss": 0.05}) and both({**S(3, 3), "loss": 0.05})
    assert either(S(3)) and either({**S(1), "loss": 0.01}) and not either({**S(1), "loss": 1.0})


def test_metrics_against_independent_counts():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((200, 12)).astype(np.float32)
    target = rng.integers(0, 12, 200)
    ranks = np.argsort(-scores, axis=1)
    top1 = Top1Accuracy()(scores, target)
    top5 = Top5Accuracy()(scores[:120], target[:120]) + Top5Accuracy()(scores[120:], target[120:])
    assert top1.total == (ranks[:, 0] == target).sum()
    assert top5.total == sum(t in r[:5] for r, t in zip(ranks, target)) and top5.count == 200
    assert TopKAccuracy(12)(scores, target).total == 200
    assert str(Top1Accuracy()) == "Top1Accuracy" and str(Top5Accuracy()) == "Top5Accuracy"
    assert str(top1) == f"Accuracy(correct: {int(top1.total)}, count: 200, accuracy: {top1.total / 200:.4f})"
    logp = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    loss = Loss()(logp, target)
    assert loss.result()[0] == pytest.approx(-logp[np.arange(200), target].mean(), rel=1e-5)
