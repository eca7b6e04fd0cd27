"""Adam, RMSprop and Adagrad (rate = lr / (1 + iteration * learningrate_decay), as BigDL, unless a
schedule is given; Adam places epsilon as PyTorch does). Each update is a keyword-only function
over one array, in place."""
from __future__ import annotations

import math

import numpy as np

from .base import OptimMethod


def _check(name, **values):
    for arg, v in values.items():
        if v < 0:
            raise ValueError(f"{name}: {arg} must be >= 0, got {v}")


def adam_step(w, g, m, v, *, rate, beta1, beta2, epsilon, step, weight_decay, scratch):
    d = scratch
    np.copyto(d, g)
    if weight_decay:
        d += np.float32(weight_decay) * w
    m *= np.float32(beta1)
    m += np.float32(1 - beta1) * d
    v *= np.float32(beta2)
    v += np.float32(1 - beta2) * d * d
    # epsilon is added to the bias-corrected root, as PyTorch does (Torch7/BigDL add it before
    # the correction, which makes tiny gradients step differently early on)
    np.sqrt(v, out=d)
    d *= np.float32(1 / math.sqrt(1 - beta2 ** step))
    d += np.float32(epsilon)
    np.divide(m, d, out=d)
    w -= np.float32(rate / (1 - beta1 ** step)) * d


def rmsprop_step(w, g, square, *, rate, decay, epsilon, scratch):
    square *= np.float32(decay)
    square += np.float32(1 - decay) * g * g
    np.sqrt(square, out=scratch)
    scratch += np.float32(epsilon)
    np.divide(g, scratch, out=scratch)
    w -= np.float32(rate) * scratch


def adagrad_step(w, g, variance, *, rate, weight_decay, scratch):
    np.copyto(scratch, g)
    if weight_decay:
        scratch += np.float32(weight_decay) * w
    variance += scratch * scratch
    np.divide(scratch, np.sqrt(variance) + np.float32(1e-10), out=scratch)
    w -= np.float32(rate) * scratch


class _Decayed(OptimMethod):
    def _default_rate(self):
        return self.learningrate / (1 + self.state["iteration"] * self.learningrate_decay)


class Adam(_Decayed):
    def __init__(self, learningrate: float = 1e-3, learningrate_decay: float = 0.0, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-8, weightdecay: float = 0.0, learningrate_schedule=None):
        super().__init__(learningrate, learningrate_schedule)
        _check("Adam", learningrate_decay=learningrate_decay, epsilon=epsilon, weightdecay=weightdecay)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"Adam: beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        self.learningrate_decay, self.beta1, self.beta2 = float(learningrate_decay), float(beta1), float(beta2)
        self.epsilon, self.weightdecay = float(epsilon), float(weightdecay)

    def slot_names(self):
        return ("m", "v")

    def hyper(self):
        return {"learningrate": self.learningrate, "learningrate_decay": self.learningrate_decay, "beta1": self.beta1,
                "beta2": self.beta2, "epsilon": self.epsilon, "weightdecay": self.weightdecay}

    def _run(self, w, g, slots, scratch, *, rate, decay_mult, first):
        adam_step(w, g, slots["m"], slots["v"], rate=rate, beta1=self.beta1, beta2=self.beta2,
                  epsilon=self.epsilon, step=self.state["iteration"] + 1,
                  weight_decay=self.weightdecay * decay_mult, scratch=scratch)


class RMSprop(_Decayed):
    def __init__(self, learningrate: float = 1e-2, learningrate_decay: float = 0.0, decayrate: float = 0.99,
                 epsilon: float = 1e-8, learningrate_schedule=None):
        super().__init__(learningrate, learningrate_schedule)
        _check("RMSprop", learningrate_decay=learningrate_decay, decayrate=decayrate, epsilon=epsilon)
        self.learningrate_decay, self.decayrate, self.epsilon = float(learningrate_decay), float(decayrate), float(epsilon)

    def slot_names(self):
        return ("square",)

    def hyper(self):
        return {"learningrate": self.learningrate, "learningrate_decay": self.learningrate_decay,
                "decayrate": self.decayrate, "epsilon": self.epsilon}

    def _run(self, w, g, slots, scratch, *, rate, decay_mult, first):
        rmsprop_step(w, g, slots["square"], rate=rate, decay=self.decayrate, epsilon=self.epsilon, scratch=scratch)


class Adagrad(_Decayed):
    def __init__(self, learningrate: float = 1e-3, learningrate_decay: float = 0.0, weightdecay: float = 0.0,
                 learningrate_schedule=None):
        super().__init__(learningrate, learningrate_schedule)
        _check("Adagrad", learningrate_decay=learningrate_decay, weightdecay=weightdecay)
        self.learningrate_decay, self.weightdecay = float(learningrate_decay), float(weightdecay)

    def slot_names(self):
        return ("variance",)

    def hyper(self):
        return {"learningrate": self.learningrate, "learningrate_decay": self.learningrate_decay,
                "weightdecay": self.weightdecay}

    def _run(self, w, g, slots, scratch, *, rate, decay_mult, first):
        adagrad_step(w, g, slots["variance"], rate=rate, weight_decay=self.weightdecay * decay_mult, scratch=scratch)
