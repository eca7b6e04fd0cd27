"""Learning-rate schedules, BigDL's set. Each is a value with ``rate(base_lr, state) -> float``,
a pure function of the optimisation state (iteration, epoch) so resuming from a checkpoint gives
exactly the rates an uninterrupted run would; Plateau also keeps what it saw of the validation
score, and saves it."""
from __future__ import annotations

import math


class Schedule:
    def rate(self, base: float, state: dict) -> float:
        raise NotImplementedError

    def config(self) -> dict:
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class Default(Schedule):
    """lr / (1 + iteration * decay)."""

    def __init__(self, decay: float = 0.0):
        self.decay = float(decay)

    def rate(self, base, state):
        return base / (1 + state["iteration"] * self.decay)


class Step(Schedule):
    """lr * gamma ^ floor(iteration / step_size)."""

    def __init__(self, step_size: int, gamma: float):
        if step_size <= 0:
            raise ValueError(f"Step: step_size must be positive, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def rate(self, base, state):
        return base * self.gamma ** (state["iteration"] // self.step_size)


class EpochStep(Schedule):
    """lr * gamma ^ floor(epoch / step_size), epochs counted from 1 as in BigDL."""

    def __init__(self, step_size: int, gamma: float):
        if step_size <= 0:
            raise ValueError(f"EpochStep: step_size must be positive, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def rate(self, base, state):
        return base * self.gamma ** (state["epoch"] // self.step_size)


class MultiStep(Schedule):
    """lr * gamma ^ (number of step_sizes reached by the iteration)."""

    def __init__(self, step_sizes, gamma: float):
        self.step_sizes, self.gamma = sorted(int(s) for s in step_sizes), float(gamma)

    def rate(self, base, state):
        return base * self.gamma ** sum(1 for s in self.step_sizes if state["iteration"] >= s)


class Poly(Schedule):
    """lr * (1 - iteration / max_iteration) ^ power, then 0."""

    def __init__(self, power: float, max_iteration: int):
        self.power, self.max_iteration = float(power), int(max_iteration)

    def rate(self, base, state):
        it = state["iteration"]
        return 0.0 if it > self.max_iteration else base * (1 - it / self.max_iteration) ** self.power


class Exponential(Schedule):
    """lr * decay_rate ^ (iteration / decay_step), the exponent floored with stair_case."""

    def __init__(self, decay_step: int, decay_rate: float, stair_case: bool = False):
        self.decay_step, self.decay_rate, self.stair_case = int(decay_step), float(decay_rate), bool(stair_case)

    def rate(self, base, state):
        p = state["iteration"] / self.decay_step
        return base * self.decay_rate ** (math.floor(p) if self.stair_case else p)


class Warmup(Schedule):
    """lr + delta * iteration (used first in a SequentialSchedule)."""

    def __init__(self, delta: float):
        self.delta = float(delta)

    def rate(self, base, state):
        return base + self.delta * state["iteration"]


class Plateau(Schedule):
    """Multiplies the rate by ``factor`` when the monitored validation score has not improved by
    ``epsilon`` for ``patience`` validations (BigDL's Plateau / Keras' ReduceLROnPlateau)."""

    def __init__(self, monitor: str = "score", factor: float = 0.1, patience: int = 10, mode: str = "max",
                 epsilon: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"Plateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"Plateau: factor must be in (0, 1), got {factor}")
        self.monitor, self.factor, self.patience, self.mode = monitor, float(factor), int(patience), mode
        self.epsilon, self.cooldown, self.min_lr = float(epsilon), int(cooldown), float(min_lr)
        self._s = {"best": None, "wait": 0, "cooldown": 0, "scale": 1.0}

    def rate(self, base, state):
        return max(base * self._s["scale"], self.min_lr)

    def on_validation(self, score: float, method=None) -> None:
        s = self._s
        better = s["best"] is None or (score > s["best"] + self.epsilon if self.mode == "max"
                                       else score < s["best"] - self.epsilon)
        if s["cooldown"] > 0:
            s["cooldown"] -= 1
            s["wait"] = 0
        if better:
            s["best"], s["wait"] = score, 0
        elif s["cooldown"] == 0:
            s["wait"] += 1
            if s["wait"] >= self.patience:
                s["scale"] *= self.factor
                s["wait"], s["cooldown"] = 0, self.cooldown

    def state(self):
        return dict(self._s)

    def load_state(self, state):
        self._s = dict(state)


class SequentialSchedule(Schedule):
    """Runs schedules one after another: each for its ``max_iteration`` iterations, counting its
    iterations (and epochs) from where it starts."""

    def __init__(self, iteration_per_epoch: int, schedules=()):
        self.iteration_per_epoch = int(iteration_per_epoch)
        self._parts: list[tuple[Schedule, int]] = [(s, int(n)) for s, n in schedules]

    def add(self, schedule: Schedule, max_iteration: int) -> "SequentialSchedule":
        self._parts.append((schedule, int(max_iteration)))
        return self

    def rate(self, base, state):
        start = 0
        for i, (schedule, n) in enumerate(self._parts):
            if state["iteration"] < start + n or i == len(self._parts) - 1:
                it = state["iteration"] - start
                local = {**state, "iteration": it, "epoch": it // max(self.iteration_per_epoch, 1) + 1}
                return schedule.rate(base, local)
            start += n
        return base

    def on_validation(self, score, method=None):
        for schedule, _ in self._parts:
            if hasattr(schedule, "on_validation"):
                schedule.on_validation(score, method)

    def config(self):
        return {"type": "SequentialSchedule", "iteration_per_epoch": self.iteration_per_epoch,
                "schedules": [[s.config(), n] for s, n in self._parts]}

    def state(self):
        return {"parts": [s.state() for s, _ in self._parts]}

    def load_state(self, state):
        for (s, _), st in zip(self._parts, state.get("parts", [])):
            s.load_state(st)


TYPES = {cls.__name__: cls for cls in (Default, Step, EpochStep, MultiStep, Poly, Exponential, Warmup, Plateau,
                                       SequentialSchedule)}


def from_config(d: dict) -> Schedule:
    """Rebuilds a schedule saved with an optim method's state."""
    config = dict(d["config"]) if "config" in d else dict(d)
    kind = TYPES.get(config.pop("type", None))
    if kind is None:
        raise ValueError(f"unknown schedule {d!r}")
    if kind is SequentialSchedule:
        parts = [(from_config(c), n) for c, n in config.pop("schedules")]
        schedule = SequentialSchedule(config["iteration_per_epoch"], parts)
    else:
        schedule = kind(**config)
    if "state" in d:
        schedule.load_state(d["state"])
    return schedule


def parse(text: str) -> Schedule:
    """The command line's form: epochstep:20:0.1, step:1000:0.5, multistep:100,200:0.1,
    poly:0.5:10000, exponential:1000:0.9, plateau:0.1:10."""
    kind, *args = text.strip().split(":")
    makers = {
        "epochstep": lambda a, b: EpochStep(int(a), float(b)),
        "step": lambda a, b: Step(int(a), float(b)),
        "multistep": lambda a, b: MultiStep([int(v) for v in a.split(",")], float(b)),
        "poly": lambda a, b: Poly(float(a), int(b)),
        "exponential": lambda a, b: Exponential(int(a), float(b)),
        "plateau": lambda a, b: Plateau(factor=float(a), patience=int(b)),
    }
    if kind.lower() not in makers or len(args) != 2:
        raise ValueError(f"--schedule {text!r}: expected one of {', '.join(k + ':A:B' for k in makers)}")
    return makers[kind.lower()](*args)
