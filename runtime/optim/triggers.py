"""When to stop, validate or checkpoint: triggers are values called with the training state.

The state has "epoch" (1-based, the epoch in progress or just finished), "iteration" (iterations
done), "loss" (the last training loss), "score" (the last validation score, or None) and
"epoch_end" (True right after the last iteration of an epoch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Trigger:
    name: str
    test: Callable[[dict], bool]

    def __call__(self, state: dict) -> bool:
        return bool(self.test(state))

    def __and__(self, other: "Trigger") -> "Trigger":
        return Trigger.and_(self, other)

    def __or__(self, other: "Trigger") -> "Trigger":
        return Trigger.or_(self, other)

    def __repr__(self):
        return self.name

    @staticmethod
    def every_epoch() -> "Trigger":
        return Trigger("every_epoch()", lambda s: s.get("epoch_end", False))

    @staticmethod
    def several_iteration(n: int) -> "Trigger":
        if n <= 0:
            raise ValueError(f"several_iteration: n must be positive, got {n}")
        return Trigger(f"several_iteration({n})", lambda s: s["iteration"] > 0 and s["iteration"] % n == 0)

    @staticmethod
    def max_epoch(n: int) -> "Trigger":
        # met once epoch n has finished (the state's epoch moves past n at that epoch's end)
        return Trigger(f"max_epoch({n})", lambda s: s["epoch"] > n or (s["epoch"] == n and s.get("epoch_end", False)))

    @staticmethod
    def max_iteration(n: int) -> "Trigger":
        return Trigger(f"max_iteration({n})", lambda s: s["iteration"] >= n)

    @staticmethod
    def min_loss(x: float) -> "Trigger":
        return Trigger(f"min_loss({x})", lambda s: s.get("loss") is not None and s["loss"] < x)

    @staticmethod
    def max_score(x: float) -> "Trigger":
        return Trigger(f"max_score({x})", lambda s: s.get("score") is not None and s["score"] > x)

    @staticmethod
    def and_(*triggers: "Trigger") -> "Trigger":
        return Trigger(" & ".join(map(repr, triggers)), lambda s: all(t(s) for t in triggers))

    @staticmethod
    def or_(*triggers: "Trigger") -> "Trigger":
        return Trigger(" | ".join(map(repr, triggers)), lambda s: any(t(s) for t in triggers))


# BigDL's names
EveryEpoch = Trigger.every_epoch
SeveralIteration = Trigger.several_iteration
MaxEpoch = Trigger.max_epoch
MaxIteration = Trigger.max_iteration
MinLoss = Trigger.min_loss
MaxScore = Trigger.max_score
TriggerAnd = Trigger.and_
TriggerOr = Trigger.or_
