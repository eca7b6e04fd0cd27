"""Inverted dropout: in training, zero each value with probability p and scale the rest by
1/(1-p); in evaluate mode, the identity. Seeded, so a run can be repeated exactly: in training
the trainer gives each sample a key (seed, epoch, sample index) and a sample's mask is drawn from
that key and the layer's name, so it is the same whichever batch, position or Spark task the sample
is computed in; without keys the draws come from the layer's own generator (``seed``). AlphaDropout
is its form for SELU nets, drawn the same way."""
from __future__ import annotations

import zlib

import numpy as np

from ..module import Module, same_shape
from ..workspace import gradient_buffer


class Dropout(Module):
    output_shape = same_shape
    stochastic = True

    def __init__(self, p: float = 0.5, seed: int | None = None, name: str | None = None):
        super().__init__(name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{type(self).__name__} {self.name!r}: p must be in [0, 1), got {p}")
        self.p, self.seed = float(p), seed
        self._rng = np.random.default_rng(seed)
        self._keys = None

    def seed_batch(self, keys):
        self._keys = [tuple(int(v) for v in k) for k in keys]

    def _draws(self, shape):
        keys = self._keys
        out = self._buffer("draws", shape)
        if keys is None or len(keys) != shape[0]:
            return self._rng.random(shape, dtype=np.float32, out=out)
        layer = zlib.crc32(self.name.encode())
        for row, key in zip(out, keys):
            np.random.default_rng([*key, layer]).random(row.shape, dtype=np.float32, out=row)
        return out

    def config(self):
        return {"p": self.p, "seed": self.seed}

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if not self.training or self.p == 0.0:
            self.output = x
            return x
        self._mask = self._buffer_like("mask", x)
        # One draw per value, kept as the scale factor: 0 or 1/(1-p).
        np.greater_equal(self._draws(x.shape), self.p, out=self._mask, casting="unsafe")
        self._mask *= np.float32(1.0 / (1.0 - self.p))
        self.output = np.multiply(x, self._mask, out=self._buffer_like("out", x))
        return self.output

    def backward(self, x, grad_out):
        if not self.training or self.p == 0.0:
            return grad_out
        return np.multiply(grad_out, self._mask, out=gradient_buffer(self, "grad_in", self._mask, avoid=grad_out))


class AlphaDropout(Dropout):
    """Dropout for SELU nets (Klambauer et al.): dropped values are set to SELU's negative
    saturation -scale * alpha and the result is moved back to zero mean and unit variance; in
    evaluate mode, the identity. Seeded like Dropout (per-sample keys in training)."""
    SATURATION = -1.0507009873554804934193349852946 * 1.6732632423543772848170429916717

    def __init__(self, p: float = 0.5, seed: int | None = None, name: str | None = None):
        super().__init__(p, seed, name)
        q, s = 1.0 - self.p, self.SATURATION
        self._a = np.float32((q + s * s * q * self.p) ** -0.5)
        self._b = np.float32(-self._a * s * self.p)

    def forward(self, x):
        x = np.asarray(x, np.float32)
        if not self.training or self.p == 0.0:
            self.output = x
            return x
        self._keep = self._draws(x.shape) >= self.p
        self.output = (np.where(self._keep, x, np.float32(self.SATURATION)) * self._a + self._b).astype(np.float32)
        return self.output

    def backward(self, x, grad_out):
        if not self.training or self.p == 0.0:
            return grad_out
        return (np.asarray(grad_out, np.float32) * self._keep * self._a).astype(np.float32)
