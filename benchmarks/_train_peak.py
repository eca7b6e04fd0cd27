"""Peak memory of training one workload with one framework: what a child process started by
``benchmarks/runtime.py --peak-only`` runs (``_memory.run_measured``), and what kindling's
modules hold afterwards, by kind of buffer.

Both frameworks train the same architecture from ``_models`` on the same batch with SGD and
momentum 0.9, ClassNLL loss on the model's output (as the speed section does)."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

import _models

LR, MOMENTUM = 0.01, 0.9

# What a module's scratch entry is, by its key (runtime/layers/*: ``_buffer`` keys): kindling's
# memory beyond the weights, named so the table says where it goes.
KINDS = (
    (r"^out$|^idx$", "outputs"),
    (r"^grad_in$|^dxpad$", "input gradients"),
    (r"^xpad$", "padded inputs"),
    (r"^cols\d+$|^dslab\d+$|^dw_", "column blocks"),
    (r"^dwmat\d+$|^wmat$|^dweight$|^dbias$|^wgrad", "weight-shaped scratch"),
    (r"^gy$", "contiguous output gradients"),
    (r"^mask$|^taken$|^hit$|^tmp$", "masks and temporaries"),
)


def kind_of(key: str) -> str:
    return next((kind for pattern, kind in KINDS if re.search(pattern, key)), "other scratch")


def _base(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def held(model, optim=None) -> dict:
    """MB that ``model`` (and ``optim``) keep between steps, by kind (and the thread's workspace
    its layers share, runtime/workspace.py), and the five layers that keep the most scratch. Views of one buffer count once (by the address of its memory)."""
    seen: set[int] = set()
    kinds, layers = Counter(), Counter()

    def count(kind, a, layer=None):
        if not isinstance(a, np.ndarray):
            return
        b = _base(a)
        if b.ctypes.data in seen:
            return
        seen.add(b.ctypes.data)
        kinds[kind] += b.nbytes
        if layer:
            layers[layer] += b.nbytes

    modules = [m for top in model.modules() for m in (top, top.__dict__.get("_flipped_conv")) if m is not None]
    for m in modules:
        for a in m.params.values():
            count("weights", a)
        for a in m.buffers.values():
            count("weights", a)
        for a in m.grads.values():
            count("weight gradients", a)
    for m in modules:
        for key, a in m._scratch.items():
            count(kind_of(key), a, m.name.replace(".input_grad", ""))
    from kindling.runtime import workspace
    for a in workspace.for_this_thread()._flat.values():
        count("workspace (shared by the layers)", a)
    for m in model.modules():
        for a in getattr(m, "_gradient_slots", workspace.Workspace())._flat.values():
            count("input gradients (2 per level of the chain)", a)
    if optim is not None:
        for slots in optim.buffers.values():
            for a in slots.values():
                count("optimizer state", a)
        for a in optim.__dict__.get("_scratch", {}).values():
            count("optimizer state", a)
    mb = 1 / (1 << 20)
    return {"by_kind_mb": {k: round(v * mb, 1) for k, v in kinds.most_common()},
            "total_mb": round(sum(kinds.values()) * mb, 1),
            "top_layers_mb": {k: round(v * mb, 1) for k, v in layers.most_common(5)}}


def _data(shape, batch):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch)


def kindling(name: str, shape, batch: int, iterations: int, threads: int, reset_peak) -> dict:
    from kindling.runtime import blas, nn
    from kindling.runtime.optim import SGD
    blas.set_threads(threads)
    x, y = _data(shape, batch)
    model = getattr(_models, name)().train(True)
    model.propagate_down = False  # as PyTorch: the input needs no gradient
    criterion, optim = nn.ClassNLLCriterion(), SGD(learningrate=LR, momentum=MOMENTUM, dampening=0.0)
    reset_peak()
    for _ in range(iterations):
        model.zero_grad()
        out = model.forward(x)
        criterion.forward(out, y)
        model.backward(x, criterion.backward(out, y))
        optim.update(model)
    return {"held": held(model, optim)}


def torch(name: str, shape, batch: int, iterations: int, threads: int, reset_peak) -> dict:
    import torch as t
    t.set_num_threads(threads)
    x, y = _data(shape, batch)
    tmodel = _models.torch_twin(getattr(_models, name)()).train(True)  # the kindling model is dropped here
    tx, ty = t.from_numpy(x), t.from_numpy(y)
    opt, loss_fn = t.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM), t.nn.NLLLoss()
    reset_peak()  # from here on: the torch model, its data and what training adds
    for _ in range(iterations):
        opt.zero_grad()
        loss_fn(tmodel(tx), ty).backward()
        opt.step()
    return {}
