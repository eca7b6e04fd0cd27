"""Stochastic gradient descent with BigDL's (Torch7 optim.sgd's) semantics.

    rate  = lr / (1 + iteration * learningrate_decay)      (or the schedule's rate)
    g    += weightdecay * decay_mult * w
    v     = g on the first step, then momentum * v + (1 - dampening) * g
    g     = g + momentum * v if nesterov else v
    w    -= rate * lr_mult * g

dampening defaults to the momentum (Torch7/BigDL; PyTorch's default is 0): pass dampening=0.0
for PyTorch's behaviour. Nesterov needs momentum > 0 and dampening 0, as in both.
"""
from __future__ import annotations

import numpy as np

from .base import OptimMethod


def sgd_step(w: np.ndarray, g: np.ndarray, buf: np.ndarray | None, *, rate: float, weight_decay: float,
             momentum: float, dampening: float, nesterov: bool, first: bool, scratch: np.ndarray) -> None:
    """One in-place step on ``w``; ``buf`` is the momentum buffer (None without momentum);
    ``scratch`` holds the decayed gradient so the accumulated gradient itself is left alone.
    Every product is rounded to float32 before it is added, in place where the operand is no
    longer needed (the same bits as ``a + f * b`` with a temporary)."""
    d = scratch
    if not weight_decay and not momentum:  # plain SGD: one product, one subtraction
        np.multiply(g, np.float32(rate), out=d)
        w -= d
        return
    if weight_decay:
        np.multiply(w, np.float32(weight_decay), out=d)
        d += g
    else:
        np.copyto(d, g)
    if momentum:
        if first:
            np.copyto(buf, d)
        else:
            buf *= np.float32(momentum)
            if dampening:  # nesterov has none, so d is not needed after this
                d *= np.float32(1 - dampening)
            buf += d
        if nesterov:
            d += np.float32(momentum) * buf
            d *= np.float32(rate)
        else:
            np.multiply(buf, np.float32(rate), out=d)
    else:
        d *= np.float32(rate)
    w -= d


class SGD(OptimMethod):
    def __init__(self, learningrate: float = 1e-3, learningrate_decay: float = 0.0, weightdecay: float = 0.0,
                 momentum: float = 0.0, dampening: float | None = None, nesterov: bool = False,
                 learningrate_schedule=None):
        super().__init__(learningrate, learningrate_schedule)
        dampening = momentum if dampening is None else dampening
        for arg, v in (("learningrate_decay", learningrate_decay), ("weightdecay", weightdecay),
                       ("momentum", momentum), ("dampening", dampening)):
            if v < 0:
                raise ValueError(f"SGD: {arg} must be >= 0, got {v}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov needs momentum > 0 and dampening 0 (got momentum {momentum}, "
                             f"dampening {dampening})")
        self.learningrate_decay, self.weightdecay = float(learningrate_decay), float(weightdecay)
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), bool(nesterov)

    def hyper(self):
        return {"learningrate": self.learningrate, "learningrate_decay": self.learningrate_decay,
                "weightdecay": self.weightdecay, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}

    def slot_names(self):
        return ("momentum",) if self.momentum else ()

    def _default_rate(self):
        return self.learningrate / (1 + self.state["iteration"] * self.learningrate_decay)

    def _run(self, w, g, slots, scratch, *, rate, decay_mult, first):
        sgd_step(w, g, slots.get("momentum"), rate=rate, weight_decay=self.weightdecay * decay_mult,
                 momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov, first=first,
                 scratch=scratch)

    def hyper_parameters(self):
        return {"learning rate": self.current_learning_rate(), "weight decay": self.weightdecay,
                "momentum": self.momentum, "nesterov": self.nesterov}
