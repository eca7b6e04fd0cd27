"""Stored outputs for ``kindling convert torch --verify --reference FILE.npz``: run where PyTorch is,
on the model the weights came from, they record every named module's output under its module name,
which is the name a converted model's ``sources`` points at.

    import numpy as np, torch
    from kindling.converters.pytorch import reference_outputs
    np.savez("reference.npz", **reference_outputs(torch_model, {"data": x}))

kindling never imports torch: the model is driven through its own methods (named_modules, forward
hooks), and the inputs become tensors through one of its parameters (``new_tensor``).
"""
from __future__ import annotations

import numpy as np


def _arrays(name: str, y) -> dict[str, np.ndarray]:
    if isinstance(y, (tuple, list)):
        return {f"{name}:{i}": o.detach().cpu().float().numpy() for i, o in enumerate(y) if hasattr(o, "detach")}
    return {name: y.detach().cpu().float().numpy()} if hasattr(y, "detach") else {}


def reference_outputs(torch_model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs (by name) and every named module's output (by module name) of ``torch_model`` in
    eval mode, as float32 arrays: what ``--reference FILE.npz`` compares a converted model with. A
    module called more than once in a forward (torchvision's ResNet blocks reuse ``relu``) is
    recorded at its last call."""
    like = next(iter(torch_model.parameters()), None)
    if like is None:
        raise ValueError("reference_outputs: the model has no parameters to take the device and dtype from")
    outputs: dict[str, np.ndarray] = {}
    hooks = [module.register_forward_hook(lambda m, args, y, name=name: outputs.update(_arrays(name, y)))
             for name, module in torch_model.named_modules() if name]
    was_training = torch_model.training
    torch_model.eval()
    try:
        torch_model(*[like.new_tensor(np.asarray(x, np.float32)) for x in inputs.values()])
    finally:
        for h in hooks:
            h.remove()
        torch_model.train(was_training)
    return {**{k: np.asarray(v, np.float32) for k, v in inputs.items()}, **outputs}
