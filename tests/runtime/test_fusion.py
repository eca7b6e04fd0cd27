"""Inference-time fusion of Conv2d with BatchNorm2d, Scale and ReLU: same results as running the
layers one by one, and as PyTorch."""
import numpy as np
import pytest

from helpers import assert_close, to_numpy
from kindling.runtime import nn
from kindling.runtime.layers import fusion


def _block(groups=1, bias=True, affine=True):
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias, name="conv")
    bn = nn.BatchNorm2d(6, eps=1e-3, affine=affine, name="bn")
    bn.buffers["running_mean"][...] = rng.standard_normal(6)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2, 6)
    if affine:
        bn.params["weight"][...] = rng.uniform(0.5, 1.5, 6)
        bn.params["bias"][...] = rng.standard_normal(6)
    sc = nn.Scale(6, bias=True, name="sc")
    sc.params["weight"][...] = rng.uniform(0.5, 1.5, 6)
    sc.params["bias"][...] = rng.standard_normal(6)
    return [conv, bn, sc, nn.ReLU(name="relu"), nn.MaxPool2d(2, 2, name="pool")]


@pytest.mark.parametrize("layers", [
    lambda: _block(), lambda: _block(groups=2, bias=False, affine=False), lambda: _block()[:2] + _block()[4:],
    lambda: [_block()[0], nn.ReLU(name="r")], lambda: [nn.Conv2d(4, 4, 3, groups=4, name="dw"), nn.ReLU(name="r")],
], ids=["conv_bn_scale_relu", "grouped_no_bias_no_affine", "conv_bn", "conv_relu", "depthwise_relu"])
def test_fused_equals_layer_by_layer(layers):
    mods = layers()
    model = nn.Sequential(*mods, name="m").evaluate()
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    fused = np.array(model.forward(x))
    model.fuse = False
    plain = np.array(model.forward(x))
    assert_close(fused, plain, 1e-5)
    assert fusion.plan(mods, 0) is not None


def test_fused_block_matches_torch_and_backward_still_works(torch):
    mods = _block()
    model = nn.Sequential(*mods, name="m").evaluate()
    conv, bn, sc = mods[:3]
    t = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.BatchNorm2d(6, eps=1e-3))
    with torch.no_grad():
        t[0].weight.copy_(torch.from_numpy(conv.params["weight"]))
        t[0].bias.copy_(torch.from_numpy(conv.params["bias"]))
        for k in ("weight", "bias"):
            getattr(t[1], k).copy_(torch.from_numpy(bn.params[k]))
        t[1].running_mean.copy_(torch.from_numpy(bn.buffers["running_mean"]))
        t[1].running_var.copy_(torch.from_numpy(bn.buffers["running_var"]))
    t.eval()
    x = np.random.default_rng(2).standard_normal((2, 4, 8, 8)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.max_pool2d(torch.relu(
        t(tx) * torch.from_numpy(sc.params["weight"]).reshape(1, 6, 1, 1)
        + torch.from_numpy(sc.params["bias"]).reshape(1, 6, 1, 1)), 2)
    y = model.forward(x)
    assert_close(y, to_numpy(ty))
    gy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    assert_close(model.backward(x, gy), to_numpy(tx.grad))
    assert_close(conv.grads["weight"], to_numpy(t[0].weight.grad))


def test_training_never_fuses():
    mods = _block()
    model = nn.Sequential(*mods, name="m").train()
    model.forward(np.ones((1, 4, 8, 8), np.float32))
    assert len(model._inputs) == len(mods)


def test_graph_fuses_single_reader_chains_only():
    mods = _block()
    g = nn.Graph(inputs=["x"], outputs=["relu", "side"], name="g")
    g.add(mods[0], ["x"])
    g.add(mods[1], ["conv"])
    g.add(mods[2], ["bn"])
    g.add(mods[3], ["sc"])
    g.add(nn.Tanh(name="side"), ["bn"])  # bn has two readers: the chain stops there
    g.evaluate()
    x = np.random.default_rng(4).standard_normal((2, 4, 8, 8)).astype(np.float32)
    fused = [np.array(o) for o in g.forward(x)]
    assert [c.name for c in g._fusion_chains()["conv"]] == ["conv", "bn"]
    g.fuse = False
    plain = [np.array(o) for o in g.forward(x)]
    for a, b in zip(fused, plain):
        assert_close(a, b, 1e-5)
    chain = nn.Graph(inputs=["x"], outputs=["relu"], name="c")
    for m, src in zip(_block()[:4], ["x", "conv", "bn", "sc"]):
        chain.add(m, [src])
    chain.evaluate()
    assert [c.name for c in chain._fusion_chains()["conv"]] == ["conv", "bn", "sc", "relu"]
    y = np.array(chain.forward(x))
    chain.fuse = False
    assert_close(y, chain.forward(x), 1e-5)
