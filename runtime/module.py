"""The Module contract every layer and container follows.

A module owns named parameters (trained), their gradients, and buffers (state that is saved but
not trained, such as BatchNorm's running statistics). ``forward(x)`` computes and caches what
backward needs; ``backward(x, grad_out)`` returns the gradient w.r.t. ``x`` and *accumulates*
parameter gradients into ``self.grads`` (Torch/BigDL order and semantics).

Parameters are addressed by the module's unique name, not by its position: ``conv1.weight``.
That is what lets Caffe, TensorFlow or PyTorch weights be copied into a model by layer name.

In training, the optim method puts views of its flat buffers into ``params`` and ``grads``
(``kindling.runtime.optim.flat``): read parameters through the dicts rather than keeping an array
from before training, and replace one by assigning to the dict (the method notices and rebuilds).
"""
from __future__ import annotations

import itertools
import re
from collections import defaultdict
from typing import Any, Iterator

import numpy as np

_name_counters: dict[str, itertools.count] = defaultdict(lambda: itertools.count(1))


def _auto_name(cls: type) -> str:
    snake = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls.__name__).lower()
    return f"{snake}{next(_name_counters[snake])}"


class Module:
    """Base of all layers. Subclasses set ``params``/``buffers`` in ``__init__`` and implement
    ``forward`` and ``backward``; containers also override ``children``."""

    #: Set by subclasses whose forward takes a list of arrays (Add, Concat without branches).
    multi_input = False
    #: How many arrays forward returns; a module with several returns a list (Slice, MaxPool2d
    #: with its argmax mask), and a Graph refers to output i as "name:i".
    num_outputs = 1
    #: Set by the trainer on a container: leading layers that have nothing to train are not
    #: back-propagated at all (a frozen feature extractor under a new head).
    skip_frozen_prefix = False
    #: Scratch entries derived from the weights alone in evaluate mode (never written once built):
    #: inference replicas share them (runtime/predict.py) instead of each rebuilding a copy.
    shared_scratch: tuple[str, ...] = ()
    #: Set by subclasses that draw random numbers in training (Dropout). The trainer calls
    #: ``seed_batch(keys)`` before each forward, one key per sample, so that every draw is a
    #: function of the run's seed and the sample, whichever process or batch it is computed in.
    stochastic = False
    #: False where backward never reads ``self.output`` (nor returns it): a training Sequential
    #: may then let the next module overwrite it in place (``runs_in_place``).
    backward_reads_output = True
    #: Set by elementwise modules whose backward needs only their output (ReLU): ``forward(x,
    #: in_place=True)`` then writes the result over ``x``, as PyTorch's ``inplace=True`` does.
    runs_in_place = False

    def __init__(self, name: str | None = None):
        self.name = name or _auto_name(type(self))
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self.frozen = False
        # Caffe's lr_mult / decay_mult, per parameter name ("weight", "bias"); 1.0 when absent.
        self.lr_mult: dict[str, float] = {}
        self.decay_mult: dict[str, float] = {}
        self.output: Any = None
        # Caffe's propagate_down: False when nobody needs the gradient w.r.t. this module's input
        # (the first layer of a model in training); a layer may then skip computing it.
        self.propagate_down = True
        self._scratch: dict[str, np.ndarray] = {}

    # ---- computation -------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, x, grad_out):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x):
        return self.forward(x)

    def output_shape(self, shape):
        """The output shape for an input of ``shape`` when the module knows it without computing
        (heavy layers: convolutions, pooling, Linear), a list of shapes for several outputs, or
        None: then a shape probe runs forward on zeros (kindling.runtime.shapes)."""
        return None
    def seed_batch(self, keys) -> None:
        """Per-sample random keys for the next training forward (used where ``stochastic``)."""

    @property
    def needs_param_grads(self) -> bool:
        """False while frozen: the layer skips computing its parameter gradients. (Evaluate mode
        still computes them, as in PyTorch: fine-tuning may run BatchNorm on its global statistics.)"""
        return not self.frozen

    def _accumulate(self, pname: str, grad: np.ndarray) -> None:
        """Add ``grad`` into ``self.grads[pname]`` (allocated once, reused across iterations)."""
        buf = self.grads.get(pname)
        if buf is None:
            self.grads[pname] = np.array(grad, dtype=self.params[pname].dtype, order="C", copy=True)
        else:
            buf += grad

    def _buffer(self, key: str, shape: tuple, dtype=np.float32) -> np.ndarray:
        """A scratch or output array reused across iterations; reallocated only when the shape
        changes. Outputs are therefore valid until the module's next forward (as in Torch and
        BigDL): copy what you want to keep."""
        buf = self._scratch.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = self._scratch[key] = np.empty(shape, dtype)
        return buf

    def _buffer_like(self, key: str, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Like ``_buffer`` but with ``x``'s memory order, so elementwise work on an NCHW view
        of NHWC memory (what Conv2d returns) stays a straight pass with no transpose."""
        buf = self._scratch.get(key)
        if (buf is None or buf.shape != x.shape or buf.dtype != dtype
                or np.argsort(buf.strides).tolist() != np.argsort(x.strides).tolist()):
            buf = self._scratch[key] = np.empty_like(x, dtype=dtype, order="K")
        return buf

    # ---- structure ---------------------------------------------------------------------
    def children(self) -> list["Module"]:
        return []

    def modules(self) -> Iterator["Module"]:
        """This module and every module below it, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def find(self, name: str) -> "Module":
        for m in self.modules():
            if m.name == name:
                return m
        raise KeyError(f"no module named {name!r} in {self.name!r}; "
                       f"known: {', '.join(m.name for m in self.modules())}")

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """Yields ``(f"{module}.{param}", weight, grad)`` for every parameter in the tree."""
        for m in self.modules():
            for pname, w in m.params.items():
                yield f"{m.name}.{pname}", w, m.grads.get(pname)

    def parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """BigDL's shape: ``{layer: {param: ndarray}}``."""
        return {m.name: dict(m.params) for m in self.modules() if m.params}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers, keyed ``module.name``."""
        out = {}
        for m in self.modules():
            for k, v in itertools.chain(m.params.items(), m.buffers.items()):
                out[f"{m.name}.{k}"] = v
        return out

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> dict[str, list[str]]:
        """Copies arrays into this tree in place. Collects every problem and raises once."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [f"size mismatch for {k}: model has {own[k].shape}, given {np.shape(v)}"
                      for k, v in state.items() if k in own and own[k].shape != np.shape(v)]
        errors = list(mismatched)
        if strict and (missing or unexpected):
            errors += [f"missing: {', '.join(missing)}"] if missing else []
            errors += [f"unexpected: {', '.join(unexpected)}"] if unexpected else []
        if errors:
            raise ValueError(f"cannot load state into {self.name!r}: " + "; ".join(errors))
        for k, v in state.items():
            if k in own:
                own[k][...] = v
        return {"missing": missing, "unexpected": unexpected}

    # ---- modes, freezing, gradients ----------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def evaluate(self, *args, **kwargs):
        """With no arguments: switch to inference mode (BigDL's ``evaluate()``). With a data
        set and metrics: run validation (``kindling.runtime.optim.evaluate``)."""
        if args or kwargs:
            from kindling.runtime.optim.validation import evaluate
            return evaluate(self, *args, **kwargs)
        return self.train(False)

    def freeze(self, *names: str) -> "Module":
        """Freezes the named modules (all of this tree when none are named): their parameters
        get no gradient and no update."""
        targets = [self.find(n) for n in names] if names else [self]
        for t in targets:
            for m in t.modules():
                m.frozen = True
        return self

    def unfreeze(self, *names: str) -> "Module":
        targets = [self.find(n) for n in names] if names else [self]
        for t in targets:
            for m in t.modules():
                m.frozen = False
        return self

    def zero_grad(self) -> None:
        for m in self.modules():
            for g in m.grads.values():
                g.fill(0)

    zero_grad_parameters = zero_grad  # BigDL's name

    def set_mult(self, pname: str, lr_mult: float = 1.0, decay_mult: float = 1.0) -> "Module":
        self.lr_mult[pname] = float(lr_mult)
        self.decay_mult[pname] = float(decay_mult)
        return self

    # ---- serialisation -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments (besides ``name``) that rebuild this module; JSON-able values
        (numbers, strings, bools, lists of those, None). Containers do not list children here."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args}{', ' if args else ''}name={self.name!r})"


def same_shape(self, shape) -> tuple:
    """``output_shape`` of an elementwise module without weights: the input's shape, with nothing
    to check, so a shape probe need not compute it (``output_shape = same_shape``)."""
    return tuple(shape)


class Container(Module):
    """A module made of child modules. Children are rebuilt from the saved graph and passed to
    the constructor as the first positional arguments."""

    def __init__(self, *modules: Module, name: str | None = None):
        super().__init__(name)
        self.modules_list: list[Module] = list(modules)

    def children(self) -> list[Module]:
        return self.modules_list

    def add(self, module: Module) -> "Container":
        self.modules_list.append(module)
        return self
