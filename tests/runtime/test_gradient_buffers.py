"""Input gradients along a Sequential share two buffers per level of nesting
(runtime/workspace.py): a model nesting Sequentials, residual joins with a Sequential, a bare
Identity and a Sequential as branches, a Graph, pass-through modules (Flatten) and the in-place
ReLU still gets PyTorch's gradients; what a model returns stays valid until its own next
backward; and the buffers are the model's, not one per layer."""
import numpy as np
import pytest

from helpers import assert_close, to_numpy
from kindling.runtime import nn


def _block(name, cin, cout, stride):
    body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, name=f"{name}.conv1"), nn.ReLU(name=f"{name}.relu1"),
                         nn.Conv2d(cout, cout, 3, 1, 1, name=f"{name}.conv2"), name=f"{name}.body")
    shortcut = (nn.Identity(name=f"{name}.short") if stride == 1 and cin == cout else
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, name=f"{name}.down"), name=f"{name}.short"))
    return nn.Sequential(nn.Add(body, shortcut, name=f"{name}.add"), nn.ReLU(name=f"{name}.relu"), name=name)


def _graph(c):
    g = nn.Graph(inputs=["x"], outputs=["out"], name="graph")
    g.add(nn.Conv2d(c, c, 3, padding=1, name="g.conv"), ["x"])
    g.add(nn.ReLU(name="g.relu"), ["g.conv"])
    g.add(nn.Add(name="g.add"), ["g.relu", "x"])
    g.add(nn.ReLU(name="out"), ["g.add"])
    return g


def _model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, name="c0"), nn.ReLU(name="r0"), _block("b1", 8, 8, 1),
                         _block("b2", 8, 16, 2), _graph(16), nn.MaxPool2d(2, 2, name="pool"),
                         nn.Flatten(name="flat"), nn.Linear(16 * 2 * 2, 10, name="fc"), name="net")


def _torch_twin(torch, model):
    tn, F = torch.nn, torch.nn.functional
    convs = {m.name: m for m in model.modules() if isinstance(m, nn.Conv2d)}

    class Twin(tn.Module):
        def __init__(self):
            super().__init__()
            self.convs = tn.ModuleDict()
            for name, m in convs.items():
                t = tn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
                with torch.no_grad():
                    t.weight.copy_(torch.from_numpy(m.params["weight"]))
                    t.bias.copy_(torch.from_numpy(m.params["bias"]))
                self.convs[name.replace(".", "_")] = t
            fc = model.find("fc")
            self.fc = tn.Linear(64, 10)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(fc.params["weight"]))
                self.fc.bias.copy_(torch.from_numpy(fc.params["bias"]))

        def c(self, name, x):
            return self.convs[name.replace(".", "_")](x)

        def forward(self, x):
            x = F.relu(self.c("c0", x))
            x = F.relu(self.c("b1.conv2", F.relu(self.c("b1.conv1", x))) + x)
            x = F.relu(self.c("b2.conv2", F.relu(self.c("b2.conv1", x))) + self.c("b2.down", x))
            x = F.relu(F.relu(self.c("g.conv", x)) + x)
            return self.fc(torch.flatten(F.max_pool2d(x, 2, 2), 1))
    return Twin()


def _backward(model, x, gy):
    model.zero_grad()
    model.forward(x)
    return model.backward(x, gy)


@pytest.mark.parametrize("steps", [1, 3])
def test_gradients_of_a_nested_model_match_torch(torch, steps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    gy = rng.standard_normal((2, 10)).astype(np.float32)
    model = _model()
    twin = _torch_twin(torch, model)
    tx = torch.from_numpy(x).requires_grad_()
    twin(tx).backward(torch.from_numpy(gy))
    for _ in range(steps):  # the same again: buffers reused from the step before give the same result
        gx = _backward(model, x, gy)
    assert_close(gx, to_numpy(tx.grad), 1e-4, "grad input")
    tparams = dict(twin.named_parameters())
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            key = f"convs.{m.name.replace('.', '_')}"
            assert_close(m.grads["weight"], to_numpy(tparams[f"{key}.weight"].grad), 1e-4, f"{m.name}.weight")
            assert_close(m.grads["bias"], to_numpy(tparams[f"{key}.bias"].grad), 1e-4, f"{m.name}.bias")
    assert_close(model.find("fc").grads["weight"], to_numpy(tparams["fc.weight"].grad), 1e-4, "fc.weight")


def test_a_returned_gradient_stays_until_the_models_own_next_backward():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    gy = rng.standard_normal((2, 10)).astype(np.float32)
    a, b = _model(), _model()
    ga = _backward(a, x, gy)
    kept = ga.copy()
    _backward(b, x, gy * 2)  # another model on the same thread
    np.testing.assert_array_equal(ga, kept)


def test_a_chain_keeps_two_gradient_buffers_per_level_not_one_per_layer():
    model = _model()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _backward(model, x, np.ones((2, 10), np.float32))
    own = [k for m in model.modules() for k in m._scratch if k in ("grad_in", "dxpad")]
    assert set(own) <= {"grad_in"} and len(own) == 3  # only the Graph's nodes keep their own: g.relu, g.add, out
    slots = model._gradient_slots._flat
    # levels: the model's children (0); the blocks' Add and ReLU (1); the branches' layers (2)
    assert sorted(key for key, _ in slots) == ["grad0.0", "grad0.1", "grad1.0", "grad1.1", "grad2.0", "grad2.1"]


def test_a_residual_sum_in_training_is_written_over_its_first_branchs_output():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    block = _block("b", 8, 8, 1)
    add, body = block.modules_list[0], block.modules_list[0].modules_list[0]
    block.train(True)
    out = add.forward(x)
    assert np.shares_memory(out, body.output)  # the body's conv2 output, which no backward reads
    assert not np.shares_memory(out, x)
    expected = body.modules_list[-1].forward(body.modules_list[1].forward(body.modules_list[0].forward(x))) + x
    assert_close(add.forward(x), expected, 1e-6, "sum")
    # an Identity first branch hands over the block's input itself: never written over
    ident = nn.Add(nn.Identity(name="i"), nn.Sequential(nn.Conv2d(8, 8, 1, name="c"), name="s"), name="a2")
    ident.train(True)
    kept = x.copy()
    ident.forward(x)
    np.testing.assert_array_equal(x, kept)
    block.train(False)
    assert not np.shares_memory(add.forward(x), body.output)


def test_batchnorm_in_a_chain_writes_its_input_gradient_into_the_chains_buffers(torch):
    """Conv2d -> BatchNorm2d -> ReLU -> Conv2d -> BatchNorm2d in training: PyTorch's input and
    parameter gradients, and neither BatchNorm2d keeps an input-gradient buffer of its own."""
    rng = np.random.default_rng(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, name="c1"), nn.BatchNorm2d(6, name="bn1"),
                          nn.ReLU(name="r1"), nn.Conv2d(6, 5, 3, padding=1, name="c2"),
                          nn.BatchNorm2d(5, name="bn2"), name="chain")
    tn = torch.nn
    twin = tn.Sequential(tn.Conv2d(3, 6, 3, padding=1), tn.BatchNorm2d(6), tn.ReLU(), tn.Conv2d(6, 5, 3, padding=1),
                         tn.BatchNorm2d(5))
    with torch.no_grad():
        for i, name in ((0, "c1"), (3, "c2")):
            twin[i].weight.copy_(torch.from_numpy(model.find(name).params["weight"]))
            twin[i].bias.copy_(torch.from_numpy(model.find(name).params["bias"]))
    x = rng.standard_normal((4, 3, 9, 7)).astype(np.float32)
    gy = rng.standard_normal((4, 5, 9, 7)).astype(np.float32)
    model.zero_grad()
    model.forward(x)
    gx = model.backward(x, gy)
    tx = torch.from_numpy(x).requires_grad_()
    twin(tx).backward(torch.from_numpy(gy))
    assert_close(gx, to_numpy(tx.grad), 1e-4, "grad input")
    assert_close(model.find("bn1").grads["weight"], to_numpy(twin[1].weight.grad), 1e-4, "bn1 grad weight")
    assert_close(model.find("c1").grads["weight"], to_numpy(twin[0].weight.grad), 1e-4, "c1 grad weight")
    assert [k for m in model.modules() for k in m._scratch if k == "grad_in"] == []
