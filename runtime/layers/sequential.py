"""A chain of modules: each one's output is the next one's input."""
from __future__ import annotations

from .fusion import plan
from ..module import Container, Module
from ..workspace import gradient_scope


class Sequential(Container):
    #: in evaluate mode, run Conv2d -> BatchNorm2d -> Scale -> ReLU runs as one fused pass (fusion.py)
    fuse = True

    @property
    def backward_reads_output(self) -> bool:
        """A chain's output is its last module's: read in backward exactly when that one reads it."""
        return self.modules_list[-1].backward_reads_output if self.modules_list else True

    def forward(self, x):
        if not self.training and self.fuse:
            return self._fused_forward(x)
        self._inputs = []
        before = None
        for m in self.modules_list:
            self._inputs.append(x)
            x = _run(m, x, before)
            before = m
        self.output = x
        return x

    def _fused_forward(self, x):
        mods, i = self.modules_list, 0
        self._inputs = None  # a backward after this recomputes the forward unfused
        while i < len(mods):
            p = plan(mods, i)
            if p is None:
                x = _run(mods[i], x, mods[i - 1] if i else None)
                i += 1
            else:
                x = mods[i].forward(x, epilogue=p[0])
                i += p[1]
        self.output = x
        return x

    def backward(self, x, grad_out):
        inputs = getattr(self, "_inputs", None)
        if inputs is None or len(inputs) != len(self.modules_list):
            fuse, self.fuse = self.fuse, False
            try:
                self.forward(x)
            finally:
                self.fuse = fuse
            inputs = self._inputs
        g = grad_out
        if self.modules_list:
            self.modules_list[0].propagate_down = self.propagate_down
        # Modules before the first one that trains need no gradient at all (a frozen feature
        # extractor under a new head): stop there instead of back-propagating through them.
        stop = self._first_needing_grad()
        with gradient_scope(self, chain=True) as scope:  # the children's input gradients share 2 buffers
            for i in range(len(self.modules_list) - 1, stop - 1, -1):
                scope.current = self.modules_list[i]
                g = self.modules_list[i].backward(inputs[i], g)
        return g if stop == 0 else None

    def _first_needing_grad(self) -> int:
        if not self.skip_frozen_prefix:
            return 0
        for i, m in enumerate(self.modules_list):
            if any(sub.params and sub.needs_param_grads for sub in m.modules()):
                return i
        return len(self.modules_list)

    def replace(self, name: str, new: Module) -> Module:
        """Swaps the direct or nested child called ``name`` for ``new``; returns the old module."""
        for i, m in enumerate(self.modules_list):
            if m.name == name:
                self.modules_list[i] = new
                return m
            if hasattr(m, "replace") and any(sub.name == name for sub in m.modules()):
                return m.replace(name, new)
        raise KeyError(f"no module named {name!r} in {self.name!r}")

    def __getitem__(self, i):
        return self.modules_list[i]

    def __len__(self):
        return len(self.modules_list)


def _run(m, x, before):
    """``m.forward(x)``; in place over x when x is an output nobody reads again (its producer's
    backward does not, and only m consumes it) and m may overwrite it (a ReLU): one activation
    kept, not two."""
    if m.runs_in_place and before is not None and not before.backward_reads_output:
        return m.forward(x, in_place=True)
    return m.forward(x)
