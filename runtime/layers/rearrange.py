"""Layers that move values around: Crop, Permute, Slice, ShuffleChannel, Upsample (nearest), Tile."""
from __future__ import annotations

import numpy as np

from ..module import Module


class Crop(Module):
    """Two inputs (x, reference): x cropped to reference's shape from ``axis`` on, starting at
    ``offset`` (one value for every cropped axis, or one each), as Caffe's Crop."""
    multi_input = True

    def __init__(self, axis: int = 2, offset=(), name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)
        self.offset = [int(o) for o in offset]

    def config(self):
        return {"axis": self.axis, "offset": list(self.offset)}

    def _slices(self, x, ref):
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Crop {self.name!r}: axis {self.axis} is out of range for an input with {x.ndim} axes")
        axis = self.axis % x.ndim
        n = x.ndim - axis
        if self.offset and len(self.offset) not in (1, n):
            raise ValueError(f"Crop {self.name!r}: {len(self.offset)} offsets for {n} cropped axes")
        offs = (self.offset * n if len(self.offset) == 1 else self.offset) or [0] * n
        sl = [slice(None)] * axis
        for i, o in enumerate(offs):
            d = axis + i
            if o + ref.shape[d] > x.shape[d]:
                raise ValueError(f"Crop {self.name!r}: offset {o} + size {ref.shape[d]} exceeds {x.shape[d]} on axis {d}")
            sl.append(slice(o, o + ref.shape[d]))
        return tuple(sl)

    def forward(self, xs):
        x, ref = xs[0], xs[1]
        self.output = np.asarray(x, np.float32)[self._slices(x, ref)]
        return self.output

    def backward(self, xs, grad_out):
        x, ref = xs[0], xs[1]
        gx = np.zeros(np.shape(x), np.float32)
        gx[self._slices(x, ref)] = grad_out
        return [gx, np.zeros(np.shape(ref), np.float32)]


class Permute(Module):
    def __init__(self, order, name: str | None = None):
        super().__init__(name)
        self.order = [int(o) for o in order]

    def config(self):
        return {"order": list(self.order)}

    def _full(self, ndim):
        # Caffe lets the order name only the leading axes; the rest stay in place.
        return self.order + [a for a in range(ndim) if a not in self.order]

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = x.transpose(self._full(x.ndim))
        return self.output

    def backward(self, x, grad_out):
        return np.asarray(grad_out).transpose(np.argsort(self._full(np.ndim(x))))


class Slice(Module):
    """Splits along ``axis`` at ``slice_points`` (or into ``num_outputs`` equal parts)."""

    def __init__(self, axis: int = 1, slice_points=(), num_outputs: int | None = None, name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)
        self.slice_points = [int(p) for p in slice_points]
        self.num_outputs = len(self.slice_points) + 1 if self.slice_points else int(num_outputs or 2)
        if self.num_outputs < 2:
            raise ValueError(f"Slice {self.name!r}: gives at least 2 outputs, got num_outputs {self.num_outputs}")

    def config(self):
        return {"axis": self.axis, "slice_points": list(self.slice_points), "num_outputs": self.num_outputs}

    def _points(self, size):
        if self.slice_points:
            return self.slice_points
        if size % self.num_outputs:
            raise ValueError(f"Slice {self.name!r}: axis size {size} does not split into {self.num_outputs} equal parts")
        step = size // self.num_outputs
        return [step * i for i in range(1, self.num_outputs)]

    def forward(self, x):
        x = np.asarray(x, np.float32)
        self.output = np.split(x, self._points(x.shape[self.axis]), axis=self.axis)
        return self.output

    def backward(self, x, grad_out):
        return np.concatenate([np.asarray(g, np.float32) for g in grad_out], axis=self.axis)


class ShuffleChannel(Module):
    """ShuffleNet's channel shuffle: (N, g, C/g, H, W) -> (N, C/g, g, H, W)."""

    def __init__(self, group: int, name: str | None = None):
        super().__init__(name)
        self.group = int(group)
        if self.group < 1:
            raise ValueError(f"ShuffleChannel {self.name!r}: group must be positive, got {self.group}")

    def config(self):
        return {"group": self.group}

    def _shuffle(self, x, g):
        n, c = x.shape[:2]
        if c % g:
            raise ValueError(f"ShuffleChannel {self.name!r}: {c} channels do not split into {g} groups")
        return x.reshape(n, g, c // g, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)

    def forward(self, x):
        self.output = self._shuffle(np.asarray(x, np.float32), self.group)
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        return self._shuffle(g, g.shape[1] // self.group)


class Upsample(Module):
    """Nearest-neighbour upsampling by an integer factor (the YOLOv3-Caffe Upsample layer)."""

    def __init__(self, scale: int = 2, name: str | None = None):
        super().__init__(name)
        self.scale = int(scale)
        if self.scale < 1:
            raise ValueError(f"Upsample {self.name!r}: scale must be positive, got {self.scale}")

    def config(self):
        return {"scale": self.scale}

    def output_shape(self, shape) -> tuple:
        if len(shape) != 4:
            raise ValueError(f"Upsample {self.name!r} expects (N, C, H, W), got {tuple(shape)}")
        return (*shape[:2], shape[2] * self.scale, shape[3] * self.scale)

    def forward(self, x):
        s = self.scale
        self.output = np.asarray(x, np.float32).repeat(s, axis=2).repeat(s, axis=3)
        return self.output

    def backward(self, x, grad_out):
        g = np.asarray(grad_out, np.float32)
        n, c, h, w = g.shape
        s = self.scale
        return g.reshape(n, c, h // s, s, w // s, s).sum(axis=(3, 5))


class Tile(Module):
    """``tiles`` copies of x side by side along ``axis`` (Caffe's Tile; numpy's tile on one axis)."""

    def __init__(self, axis: int = 1, tiles: int = 1, name: str | None = None):
        super().__init__(name)
        self.axis, self.tiles = int(axis), int(tiles)
        if self.tiles < 1:
            raise ValueError(f"Tile {self.name!r}: tiles must be positive, got {self.tiles}")

    def config(self):
        return {"axis": self.axis, "tiles": self.tiles}

    def _axis(self, ndim):
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"Tile {self.name!r}: axis {self.axis} is out of range for an input with {ndim} axes")
        return self.axis % ndim

    def output_shape(self, shape) -> tuple:
        a = self._axis(len(shape))
        return (*shape[:a], shape[a] * self.tiles, *shape[a + 1:])

    def forward(self, x):
        x = np.asarray(x, np.float32)
        reps = [1] * x.ndim
        reps[self._axis(x.ndim)] = self.tiles
        self.output = np.tile(x, reps)
        return self.output

    def backward(self, x, grad_out):
        shape = np.shape(x)
        a = self._axis(len(shape))
        g = np.asarray(grad_out, np.float32)
        return g.reshape(*shape[:a], self.tiles, *shape[a:]).sum(axis=a)


class Reorg(Module):
    """YOLOv2's passthrough (darknet's reorg, as the Caffe ports copy it): (N, C, H, W) to
    (N, C * s * s, H / s, W / s). Darknet reads its input as (N, C / s^2, H * s, W * s) and writes
    channel block k = dy * s + dx with that view's rows h * s + dy and columns w * s + dx, which is
    not a plain space-to-depth; ``reverse`` undoes it (the same move the other way)."""

    def __init__(self, stride: int, reverse: bool = False, name: str | None = None):
        super().__init__(name)
        self.stride, self.reverse = int(stride), bool(reverse)
        if self.stride < 1:
            raise ValueError(f"Reorg {self.name!r}: stride must be positive, got {stride}")

    def config(self):
        return {"stride": self.stride, "reverse": self.reverse}

    def output_shape(self, shape):
        n, c, h, w = self._check(shape)
        s = self.stride
        return (n, c // (s * s), h * s, w * s) if self.reverse else (n, c * s * s, h // s, w // s)

    def _check(self, shape):
        s = self.stride
        if len(shape) != 4 or shape[1] % (s * s) or (not self.reverse and (shape[2] % s or shape[3] % s)):
            raise ValueError(f"Reorg {self.name!r}: needs (N, C, H, W) with C divisible by {s * s}"
                             f"{'' if self.reverse else f' and H, W by {s}'}, got {tuple(shape)}")
        return shape

    def _move(self, x, into_blocks: bool):
        """The darknet move on (N, C, H, W) memory: into_blocks gathers the (C / s^2, H * s, W * s)
        view into channel blocks; the other way scatters them back."""
        n, c, h, w = x.shape
        s = self.stride
        t = c // (s * s)
        if into_blocks:
            view = x.reshape(n, t, h, s, w, s)          # the input as (N, C/s^2, H*s, W*s), rows and cols split
            return view.transpose(0, 3, 5, 1, 2, 4).reshape(n, c, h, w)
        blocks = x.reshape(n, s, s, t, h, w)
        return blocks.transpose(0, 3, 4, 1, 5, 2).reshape(n, c, h, w)

    def forward(self, x):
        x = np.ascontiguousarray(x, np.float32)
        n, c, h, w = self._check(x.shape)
        s = self.stride
        if self.reverse:  # the top is the bigger plane: the input's memory read as channel blocks
            out = self._move(x.reshape(n, c, h, w), into_blocks=False)
            self.output = out.reshape(n, c // (s * s), h * s, w * s)
        else:
            self.output = self._move(x, into_blocks=True).reshape(n, c * s * s, h // s, w // s)
        return self.output

    def backward(self, x, grad_out):
        g = np.ascontiguousarray(grad_out, np.float32).reshape(np.shape(x))
        return self._move(g, into_blocks=self.reverse)
