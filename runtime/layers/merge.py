"""Joins: Concat, Add, Mul, Max, Min. Each works two ways:

- with branches, ``Concat(branch_a, branch_b)`` feeds the same input to every branch and joins
  their outputs (BigDL's Concat / ConcatTable + CAddTable);
- with none, it joins a list of arrays (``multi_input``), which is how a Graph node uses it.
"""
from __future__ import annotations

import numpy as np

from ..module import Container
from ..parallel import pool
from ..workspace import gradient_buffer, gradient_scope


class _Join(Container):
    def __init__(self, *branches, name: str | None = None):
        super().__init__(*branches, name=name)
        self.multi_input = not branches

    # -- the join itself, over a list of arrays -------------------------------------------
    def join(self, xs: list) -> np.ndarray:
        raise NotImplementedError

    def join_backward(self, xs: list, grad_out) -> list:
        raise NotImplementedError

    def _check(self, xs):
        if len(xs) < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs at least one input")
        return [np.asarray(x, np.float32) for x in xs]

    # -- the module interface -----------------------------------------------------------------
    def forward(self, x):
        if self.multi_input:
            xs = self._check(x)
        else:
            xs = [b.forward(x) for b in self.modules_list]
        self._branch_outputs = xs
        self.output = self.join(xs)
        return self.output

    def backward(self, x, grad_out):
        grads = self.join_backward(self._branch_outputs, grad_out)
        if self.multi_input:
            return grads
        total = gradient_buffer(self, "grad_in", np.asarray(x, np.float32), avoid=grad_out)
        with gradient_scope(self, chain=False) as scope:  # each branch's gradient is added up at once
            for i, (b, g) in enumerate(zip(self.modules_list, grads)):
                scope.current = b
                _add_into(total, b.backward(x, g), first=i == 0)
        return total


class Concat(_Join):
    def __init__(self, *branches, axis: int = 1, name: str | None = None):
        super().__init__(*branches, name=name)
        self.axis = int(axis)

    def config(self):
        return {"axis": self.axis}

    def join(self, xs):
        try:
            if self.axis in (1, -3) and all(x.ndim == 4 for x in xs):
                return self._join_channels(xs)
            return np.concatenate(xs, axis=self.axis)
        except ValueError as e:
            raise ValueError(f"Concat {self.name!r}: cannot join shapes {[x.shape for x in xs]} on axis {self.axis}") from e

    def _join_channels(self, xs):
        """Channels of NCHW tensors, joined in NHWC memory (what convolutions work in), so neither
        this join nor the convolution after it transposes; images shared among the threads."""
        n, _, h, w = xs[0].shape
        if any(x.shape[0] != n or x.shape[2:] != (h, w) for x in xs):
            raise ValueError("shapes differ off the channel axis")
        out = self._buffer("out", (n, h, w, sum(x.shape[1] for x in xs)))
        bounds = np.cumsum([0] + [x.shape[1] for x in xs])

        def copy(_, lo, hi):
            for x, a, b in zip(xs, bounds[:-1], bounds[1:]):
                np.copyto(out[lo:hi, :, :, a:b], x[lo:hi].transpose(0, 2, 3, 1))
        pool.run(n, copy)
        return out.transpose(0, 3, 1, 2)

    def join_backward(self, xs, grad_out):
        bounds = np.cumsum([x.shape[self.axis] for x in xs])[:-1]
        return np.split(np.asarray(grad_out, np.float32), bounds, axis=self.axis)


class Add(_Join):
    """Sum of the inputs, each weighted by ``coeffs`` when given (Caffe's Eltwise SUM coeff)."""
    backward_reads_output = False

    def __init__(self, *branches, coeffs=None, name: str | None = None):
        super().__init__(*branches, name=name)
        self.coeffs = None if coeffs is None else [float(c) for c in coeffs]

    def config(self):
        return {"coeffs": self.coeffs}

    def _coeffs(self, n):
        if self.coeffs is not None and len(self.coeffs) != n:
            raise ValueError(f"Add {self.name!r}: {len(self.coeffs)} coeffs for {n} inputs")
        return self.coeffs or [1.0] * n

    def join(self, xs):
        shape = np.broadcast_shapes(*[x.shape for x in xs])
        coeffs = self._coeffs(len(xs))
        if not shape or any(x.shape != shape for x in xs):  # broadcasting (or scalars): one plain pass
            out = self._buffer("out", shape)
            _weighted_sum(xs, coeffs, out)
            return out
        # Same shapes (a residual sum): keep the inputs' memory order (NHWC under an NCHW view,
        # as convolutions return it), so neither this sum nor the next convolution transposes,
        # and share the images among kindling's threads.
        out = xs[0] if self._sums_in_place(xs) else self._buffer_like("out", xs[0])
        pool.run(shape[0], lambda _, lo, hi: _weighted_sum([x[lo:hi] for x in xs], coeffs, out[lo:hi]))
        return out

    def _sums_in_place(self, xs) -> bool:
        """In training, the sum is written over the first branch's output when nothing reads that
        again (the branch's backward does not, and only this sum consumes it), as torchvision's
        BasicBlock adds in place: one activation per residual block fewer."""
        first = None if self.multi_input else self.modules_list[0]
        return (self.training and first is not None and not first.backward_reads_output
                and xs[0].flags.writeable and not any(np.may_share_memory(xs[0], x) for x in xs[1:]))

    def join_backward(self, xs, grad_out):
        g = np.asarray(grad_out, np.float32)
        return [_unbroadcast(g if c == 1.0 else g * np.float32(c), x.shape) for x, c in zip(xs, self._coeffs(len(xs)))]


class Mul(_Join):
    def join(self, xs):
        out = np.array(xs[0], np.float32, copy=True)
        for x in xs[1:]:
            out = out * x
        return out

    def join_backward(self, xs, grad_out):
        g = np.asarray(grad_out, np.float32)
        grads = []
        for i, x in enumerate(xs):
            others = np.ones((), np.float32)
            for j, y in enumerate(xs):
                if j != i:
                    others = others * y
            grads.append(_unbroadcast(g * others, x.shape))
        return grads


class Max(_Join):
    """Elementwise maximum with broadcasting; the gradient goes to the first input holding the
    maximum (Caffe's Eltwise MAX)."""
    reduce = staticmethod(np.maximum)

    def join(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = self.reduce(out, x)
        return np.array(out, np.float32, copy=True) if out is xs[0] else out

    def join_backward(self, xs, grad_out):
        g = np.asarray(grad_out, np.float32)
        taken = np.zeros(self.output.shape, bool)
        grads = []
        for x in xs:
            hit = (x == self.output) & ~taken
            taken |= hit
            grads.append(_unbroadcast(np.where(hit, g, np.float32(0)), x.shape))
        return grads


class Min(Max):
    """Elementwise minimum with broadcasting; the gradient goes to the first input holding it."""
    reduce = staticmethod(np.minimum)


def _add_into(total: np.ndarray, g, first: bool) -> None:
    """``total = g`` or ``total += g``, the batch shared among kindling's threads (a residual
    block's input gradient: as large as the block's activations)."""
    g = np.asarray(g, np.float32)
    if g.shape != total.shape or total.ndim == 0:
        np.copyto(total, g) if first else np.add(total, g, out=total)
        return
    op = np.copyto if first else (lambda out, src: np.add(out, src, out=out))
    pool.run(total.shape[0], lambda _, lo, hi: op(total[lo:hi], g[lo:hi]))


def _weighted_sum(xs, coeffs, out) -> None:
    for i, (x, c) in enumerate(zip(xs, coeffs)):
        if i == 0:
            np.multiply(x, np.float32(c), out=out) if c != 1.0 else np.copyto(out, x)
        elif c == 1.0:
            out += x
        else:
            out += np.float32(c) * x


def _unbroadcast(g: np.ndarray, shape) -> np.ndarray:
    """Sums a gradient back down to the shape of an input that was broadcast."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra else g
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g
