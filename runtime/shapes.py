"""Output shapes without real data: the one shape probe that converters use while they assemble a
net (each new module is probed once, which also checks that its weights fit its inputs) and that
``kindling info`` uses to show every module's output shape.

A module that knows its output shape says so (``Module.output_shape``: convolutions, pooling,
Linear) and nothing is computed; any other runs forward once in evaluate mode on a zero input that
is a broadcast view, so no memory is touched until a layer that must compute reads it.
Containers are walked as they run, so every module inside them gets its shape too.

Free dimensions follow one rule, read by every consumer: a converted net records -1 in its input
shape for each dimension it does not fix (the batch always; H and W unless a layer fixes them: an
InnerProduct after a non-global pooling, a Reshape with fixed dims, a Crop against a fixed
reference). ``free_dims`` finds them by probing: a dimension is free when the net also fits it
doubled (doubling keeps whatever divisibility the net's strides need). A model in use then checks
each new input size with ``check``, which names the layer that does not fit.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from . import memory
from .errors import KindlingError, TooLarge
from .layers.graph import Graph
from .layers.sequential import Sequential
from .module import Module

Shape = tuple  # of ints; a module with several outputs has a list of them


class ShapeError(KindlingError):
    """A module that does not fit its input shapes; ``detail`` is the module's own complaint."""

    def __init__(self, module: Module, shapes, detail: str):
        shown = [tuple(s) for s in shapes]
        super().__init__(f"{module.name!r} ({type(module).__name__}) does not fit its input shape"
                         f"{'s' if len(shown) > 1 else ''} {shown if len(shown) > 1 else shown[0]}: {detail}")
        self.module, self.shapes, self.detail = module, shown, detail


def zeros(shape) -> np.ndarray:
    return np.broadcast_to(np.float32(0), tuple(shape))


def shape_of(y) -> Shape | list[Shape]:
    return [tuple(np.shape(o)) for o in y] if isinstance(y, (list, tuple)) else tuple(np.shape(y))


def _as_list(shape) -> list[Shape]:
    return shape if isinstance(shape, list) else [shape]


def _fits(module: Module, shapes, out) -> Shape | list[Shape]:
    """``out`` when every output fits the memory this process has: a layer whose output at this
    batch cannot (a stride of 0 turned 65536, an upsampling by 2^20) fails here, named."""
    for s in _as_list(out):
        if any(d < 0 for d in s):
            raise ShapeError(module, shapes, f"its output shape {tuple(s)} has a negative dimension")
        try:
            memory.check(4 * math.prod(s), f"its output {tuple(s)} (float32)")
        except TooLarge as e:
            raise ShapeError(module, shapes, str(e)) from e
    return out


def probe(module: Module, shapes: list) -> Shape | list[Shape]:
    """The output shape (or shapes) of ``module`` for inputs of ``shapes`` (batch axis included)."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    try:
        if len(shapes) == 1:
            known = module.output_shape(shapes[0])
            if known is not None:
                return _fits(module, shapes, [tuple(s) for s in known] if isinstance(known, list) else tuple(known))
        training = module.training
        module.train(False)  # a probe must not move BatchNorm's running statistics
        try:
            with np.errstate(all="ignore"):
                xs = [zeros(s) for s in shapes]
                y = module.forward(xs if module.multi_input else xs[0])
        finally:
            module.train(training)
    except ShapeError:
        raise
    except (ValueError, IndexError, ArithmeticError) as e:  # ZeroDivisionError: a 0-d input, a 0 size
        raise ShapeError(module, shapes, f"{e}" if isinstance(e, ValueError) else f"{type(e).__name__}: {e}") from e
    except MemoryError as e:  # an output that _fits could not see coming (multi-input layers)
        raise ShapeError(module, shapes, f"its output does not fit in memory ({e})") from e
    finally:
        for m in module.modules():
            m._scratch.clear()  # buffers sized for a probe are not kept, nor outputs that refer to them
            m.output = None
    return _fits(module, shapes, shape_of(y))


def _sequential(seq: Sequential, shapes, out, seen) -> Shape | list[Shape]:
    shape: Shape | list[Shape] = shapes[0] if len(shapes) == 1 else list(shapes)
    for child in seq.children():
        if isinstance(shape, list) and not child.multi_input:
            raise ShapeError(child, shape, f"takes one input, and the module before it gives {len(shape)}")
        shape = _walk(child, _as_list(shape) if child.multi_input else [shape], out, seen)
    return shape


def _graph(graph: Graph, shapes, out, seen) -> Shape | list[Shape]:
    values: dict = dict(zip(graph.input_names, shapes))
    for m in graph.order():
        values[m.name] = _walk(m, [graph.value(values, r) for r in graph.node_inputs[m.name]], out, seen)
    outs = [graph.value(values, r) for r in graph.output_names]
    return outs[0] if len(outs) == 1 else outs


# containers whose children's shapes are traced as the container runs them
WALKERS = {Sequential: _sequential, Graph: _graph}


def _walk(module: Module, shapes, out: dict, seen: dict | None) -> Shape | list[Shape]:
    if seen is not None:
        seen[module.name] = [tuple(s) for s in shapes]
    walker = WALKERS.get(type(module))
    shape = walker(module, shapes, out, seen) if walker else probe(module, shapes)
    out[module.name] = shape
    return shape


def trace(model: Module, input_shapes: list, inputs: dict | None = None) -> dict[str, Shape | list[Shape]]:
    """Every module's output shape by name, for inputs of ``input_shapes`` (one per model input);
    ``inputs``, when given, is filled with each module's input shapes."""
    out: dict = {}
    _walk(model, [tuple(s) for s in input_shapes], out, inputs)
    return out


@contextlib.contextmanager
def _buffers_kept(model: Module):
    """A model in use keeps its buffers (and outputs, and the weight layouts evaluate mode built)
    through a probe, which would otherwise drop them."""
    saved = [(m, dict(m._scratch), m.output) for m in model.modules()]
    try:
        yield
    finally:
        for m, scratch, output in saved:
            m._scratch.clear()
            m._scratch.update(scratch)
            m.output = output


def check(model: Module, input_shapes: list, inputs: dict | None = None) -> dict[str, Shape | list[Shape]]:
    """``trace`` for a model in use: its buffers are left as they were. Raises ShapeError naming
    the first module that does not fit these input shapes."""
    out: dict = {}
    with _buffers_kept(model):
        _walk(model, [tuple(s) for s in input_shapes], out, inputs)
    return out


def fits(model: Module, input_shapes: list) -> bool:
    """Whether ``model`` fits these input shapes (``check`` without the error)."""
    try:
        check(model, input_shapes)
    except ShapeError:
        return False
    return True


def free_dims(model: Module, shape) -> list[int]:
    """``shape`` (one input, which the model fits) with -1 for the batch and for every other
    dimension the model also fits doubled: the dimensions no layer fixes."""
    shape = [int(d) for d in shape]
    free = [-1]
    for i in range(1, len(shape)):
        doubled = [1, *shape[1:]]
        doubled[i] *= 2
        free.append(-1 if fits(model, [doubled]) else shape[i])
    return free
