"""A directed acyclic graph of named modules, for Inception, ResNet and SqueezeNet-style nets.

Every node is a module; its output is referred to by the module's name, or ``"name:i"`` for the
i-th output of a module with several (``num_outputs > 1``). The graph's own inputs are plain names.
Wiring is by name, as in Caffe's bottoms and tops::

    g = nn.Graph(inputs=["data"], outputs=["prob"])
    g.add(nn.Conv2d(3, 16, 3, name="conv1"), inputs=["data"])
    g.add(nn.ReLU(name="relu1"), inputs=["conv1"])
    ...
"""
from __future__ import annotations

import numpy as np

from .fusion import leads_chain, plan
from ..module import Container, Module


def _split_ref(ref: str) -> tuple[str, int | None]:
    node, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return node, int(index)
    return ref, None


class Graph(Container):
    #: in evaluate mode, Conv2d -> BatchNorm2d -> Scale -> ReLU chains run as one fused pass (fusion.py)
    fuse = True

    def __init__(self, *modules: Module, inputs, outputs, node_inputs: dict | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        self.input_names = [str(i) for i in ([inputs] if isinstance(inputs, str) else inputs)]
        self.output_names = [str(o) for o in ([outputs] if isinstance(outputs, str) else outputs)]
        if not self.input_names or not self.output_names:
            raise ValueError(f"Graph {self.name!r} needs at least one input and one output")
        self.node_inputs: dict[str, list[str]] = {}
        self._order: list[Module] | None = None
        for m in modules:
            self.add(m, inputs=(node_inputs or {}).get(m.name, []))
        if modules:  # built whole (a loaded file): its wiring is checked now, not at the first forward
            self.order()

    def config(self):
        return {"inputs": list(self.input_names), "outputs": list(self.output_names),
                "node_inputs": {k: list(v) for k, v in self.node_inputs.items()}}

    def add(self, module: Module, inputs) -> str:
        """Adds a node fed by ``inputs`` (graph input names or other nodes' outputs)."""
        if module.name in self.node_inputs or module.name in self.input_names:
            raise ValueError(f"Graph {self.name!r}: a node or input named {module.name!r} already exists")
        self.modules_list.append(module)
        self.node_inputs[module.name] = [inputs] if isinstance(inputs, str) else list(inputs)
        self._order = None
        return module.name

    def set_outputs(self, refs) -> None:
        """Makes ``refs`` (node names, "name:i", or graph inputs) the graph's outputs."""
        self.output_names = [str(r) for r in ([refs] if isinstance(refs, str) else refs)]
        self._order = None

    def replace(self, name: str, new: Module) -> Module:
        """Swaps node ``name`` for ``new``, keeping its wiring; consumers now read ``new.name``."""
        for i, m in enumerate(self.modules_list):
            if m.name == name:
                self.modules_list[i] = new
                self.node_inputs[new.name] = self.node_inputs.pop(name)
                rename = {name: new.name}
                for k, refs in self.node_inputs.items():
                    self.node_inputs[k] = [self._renamed(r, rename) for r in refs]
                self.output_names = [self._renamed(r, rename) for r in self.output_names]
                self._order = None
                return m
            if hasattr(m, "replace") and any(sub.name == name for sub in m.modules()):
                return m.replace(name, new)
        raise KeyError(f"no module named {name!r} in {self.name!r}")

    @staticmethod
    def _renamed(ref: str, rename: dict) -> str:
        node, index = _split_ref(ref)
        node = rename.get(node, node)
        return node if index is None else f"{node}:{index}"

    # ---- order ------------------------------------------------------------------------------
    def order(self) -> list[Module]:
        """Modules in an order where every node comes after its inputs (computed once)."""
        if self._order is not None:
            return self._order
        by_name = {m.name: m for m in self.modules_list}
        known = set(self.input_names) | set(by_name)
        for m in self.modules_list:
            for ref in self.node_inputs[m.name]:
                if _split_ref(ref)[0] not in known:
                    raise ValueError(f"Graph {self.name!r}: node {m.name!r} reads {ref!r}, which is no graph input "
                                     f"or node; known: {', '.join(sorted(known))}")
        for ref in self.output_names:
            if _split_ref(ref)[0] not in known:
                raise ValueError(f"Graph {self.name!r}: output {ref!r} is no graph input or node; "
                                 f"known: {', '.join(sorted(known))}")
        for m in self.modules_list:
            refs = self.node_inputs[m.name]
            if not m.multi_input and len(refs) != 1:
                raise ValueError(f"Graph {self.name!r}: node {m.name!r} takes one input, wired to {len(refs)}")
        for ref in [r for refs in self.node_inputs.values() for r in refs] + self.output_names:
            node, index = _split_ref(ref)
            outputs = by_name[node].num_outputs if node in by_name else 1
            if (outputs > 1) != (index is not None) or (index is not None and index >= outputs):
                raise ValueError(f"Graph {self.name!r}: {ref!r} does not name an output of {node!r}, which has "
                                 f"{outputs}" + (f" (read them as '{node}:0' .. '{node}:{outputs - 1}')"
                                                 if outputs > 1 else " (read it as {node!r})"))
        order, state = [], {}

        def visit(name, path):
            if state.get(name) == "done" or name not in by_name:
                return
            if state.get(name) == "visiting":
                raise ValueError(f"Graph {self.name!r} has a cycle: {' -> '.join([*path, name])}")
            state[name] = "visiting"
            for ref in self.node_inputs[name]:
                visit(_split_ref(ref)[0], [*path, name])
            state[name] = "done"
            order.append(by_name[name])

        for m in self.modules_list:
            visit(m.name, [])
        self._order = order
        return order

    # ---- computation ------------------------------------------------------------------------
    def _bind_inputs(self, x) -> dict:
        if isinstance(x, dict):
            missing = [n for n in self.input_names if n not in x]
            if missing:
                raise ValueError(f"Graph {self.name!r}: missing inputs {missing}; expected {self.input_names}")
            return {n: x[n] for n in self.input_names}
        if len(self.input_names) == 1:
            return {self.input_names[0]: x}
        if len(x) != len(self.input_names):
            raise ValueError(f"Graph {self.name!r} takes {len(self.input_names)} inputs {self.input_names}, "
                             f"got {len(x)}")
        return dict(zip(self.input_names, x))

    def value(self, values: dict, ref: str):
        """What ``ref`` names in ``values`` (graph inputs and node outputs by name; a node with
        several outputs holds a list, and "name:i" picks one)."""
        node, index = _split_ref(ref)
        if index is not None and node not in self.input_names:
            return values[node][index]
        return values[ref] if ref in values else values[node]

    def _node_input(self, values, m):
        refs = self.node_inputs[m.name]
        if getattr(m, "multi_input", False):
            return [self.value(values, r) for r in refs]
        if len(refs) != 1:
            raise ValueError(f"Graph {self.name!r}: node {m.name!r} ({type(m).__name__}) takes one input, "
                             f"wired to {refs}")
        return self.value(values, refs[0])

    def _fusion_chains(self) -> dict[str, list[Module]]:
        """Conv2d node -> the chain of nodes after it that each read only the previous one and
        feed nothing else (candidates for fusion.plan); computed with the order."""
        if getattr(self, "_chains", None) is not None and self._chains[0] is self._order:
            return self._chains[1]
        readers: dict[str, list[str]] = {}
        for name, refs in self.node_inputs.items():
            for r in refs:
                readers.setdefault(r, []).append(name)
        by_name = {m.name: m for m in self.modules_list}
        chains = {}
        for m in self.order():
            if not leads_chain(m):
                continue
            chain, cur = [m], m.name
            while len(chain) < 4 and cur not in self.output_names and len(readers.get(cur, [])) == 1:
                nxt = readers[cur][0]
                if self.node_inputs[nxt] != [cur]:
                    break
                chain.append(by_name[nxt])
                cur = nxt
            if len(chain) > 1:
                chains[m.name] = chain
        self._chains = (self._order, chains)
        return chains

    def forward(self, x):
        values = self._bind_inputs(x)
        fused = not self.training and self.fuse
        chains = self._fusion_chains() if fused else {}
        skip: set[str] = set()
        for m in self.order():
            if m.name in skip:
                continue
            p = plan(chains[m.name], 0) if m.name in chains else None
            if p is None:
                values[m.name] = m.forward(self._node_input(values, m))
                continue
            absorbed = chains[m.name][1:p[1]]
            y = m.forward(self._node_input(values, m), epilogue=p[0])
            skip.update(a.name for a in absorbed)
            values[absorbed[-1].name] = y  # readers only refer to the chain's last node
        self._values = None if fused else values
        outs = [self.value(values, r) for r in self.output_names]
        self.output = outs[0] if len(outs) == 1 else outs
        return self.output

    def backward(self, x, grad_out):
        values = getattr(self, "_values", None)
        if values is None:  # first backward after an evaluate-mode (fused) forward: rerun plainly
            fuse, self.fuse = self.fuse, False
            try:
                self.forward(x)
            finally:
                self.fuse = fuse
            values = self._values
        grads: dict[str, object] = {}

        def add_grad(ref, g):
            node, index = _split_ref(ref)
            if index is not None and node not in self.input_names:
                slot = grads.setdefault(node, {})
                slot[index] = g if index not in slot else slot[index] + g
            else:
                key = ref if ref in values else node
                grads[key] = g if key not in grads else grads[key] + g

        outs = [grad_out] if len(self.output_names) == 1 else list(grad_out)
        for ref, g in zip(self.output_names, outs):
            add_grad(ref, np.asarray(g, np.float32))
        for m in reversed(self.order()):
            g = grads.pop(m.name, None)
            if g is None:
                continue  # nothing downstream of this node reaches an output
            if isinstance(g, dict):  # a multi-output node: zeros for outputs nobody used
                g = [g.get(i, np.zeros_like(o)) for i, o in enumerate(values[m.name])]
            gx = m.backward(self._node_input(values, m), g)
            refs = self.node_inputs[m.name]
            if getattr(m, "multi_input", False):
                for ref, gi in zip(refs, gx):
                    add_grad(ref, gi)
            elif gx is not None:
                add_grad(refs[0], gx)
        gin = [grads.get(n, np.zeros_like(np.asarray(values[n], np.float32))) for n in self.input_names]
        return gin[0] if len(gin) == 1 else gin
