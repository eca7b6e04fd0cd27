"""Sequential, the joins and the Graph, against equivalent PyTorch modules with the same weights."""
import numpy as np
import pytest

from helpers import assert_close, to_numpy
from kindling.runtime import nn


def _copy_into_torch(torch, ours, theirs):
    with torch.no_grad():
        for k, v in ours.items():
            theirs[k].copy_(torch.from_numpy(np.asarray(v)))


def _param_grads(model):
    return {k: g for k, _, g in model.named_parameters()}


def _compare(torch, model, tmodel, mapping, x, rtol=1e-4):
    """mapping: kindling 'module.param' -> torch state_dict key. Forward, input grad, all param grads."""
    tstate = dict(tmodel.named_parameters())
    tstate.update(dict(tmodel.named_buffers()))
    ours = model.state_dict()
    _copy_into_torch(torch, {k: ours[k] for k in mapping}, {k: tstate[v] for k, v in mapping.items()})
    xs = x if isinstance(x, list) else [x]
    txs = [torch.from_numpy(np.ascontiguousarray(a)).requires_grad_() for a in xs]
    ty = tmodel(*txs)
    y = model.forward(x)
    assert_close(y, to_numpy(ty), rtol, "forward")
    gy = np.random.default_rng(9).standard_normal(np.shape(y)).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    model.zero_grad()
    gx = model.backward(x, gy)
    for g, t in zip(gx if isinstance(x, list) else [gx], txs):
        assert_close(g, to_numpy(t.grad), rtol, "grad input")
    tparams = dict(tmodel.named_parameters())
    for k, v in mapping.items():
        if v in tparams:
            assert_close(_param_grads(model)[k], to_numpy(tparams[v].grad), rtol, f"grad {k}")


def resnet_block_graph(c):
    g = nn.Graph(inputs=["x"], outputs=["out"], name="block")
    g.add(nn.Conv2d(c, c, 3, padding=1, bias=False, name="conv1"), ["x"])
    g.add(nn.BatchNorm2d(c, name="bn1"), ["conv1"])
    g.add(nn.ReLU(name="relu1"), ["bn1"])
    g.add(nn.Conv2d(c, c, 3, padding=1, bias=False, name="conv2"), ["relu1"])
    g.add(nn.BatchNorm2d(c, name="bn2"), ["conv2"])
    g.add(nn.Add(name="add"), ["bn2", "x"])
    g.add(nn.ReLU(name="out"), ["add"])
    return g


@pytest.mark.parametrize("training", [True, False])
def test_resnet_basic_block_graph_matches_torch(torch, training):
    tn = torch.nn

    class Block(tn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = tn.Conv2d(c, c, 3, padding=1, bias=False), tn.BatchNorm2d(c)
            self.conv2, self.bn2 = tn.Conv2d(c, c, 3, padding=1, bias=False), tn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)

    model, tmodel = resnet_block_graph(4), Block(4)
    model.train(training)
    tmodel.train(training)
    mapping = {f"{m}.{p}": f"{m}.{p}" for m in ("conv1", "conv2") for p in ("weight",)}
    mapping.update({f"{m}.{p}": f"{m}.{p}" for m in ("bn1", "bn2") for p in ("weight", "bias", "running_mean", "running_var")})
    rng = np.random.default_rng(0)
    for m in ("bn1", "bn2"):
        model.find(m).params["weight"][...] = rng.uniform(0.5, 1.5, 4)
        model.find(m).buffers["running_var"][...] = rng.uniform(0.5, 1.5, 4)
    _compare(torch, model, tmodel, mapping, rng.standard_normal((2, 4, 6, 5)).astype(np.float32))


def test_inception_block_with_branch_containers_matches_torch(torch):
    tn = torch.nn
    model = nn.Concat(
        nn.Sequential(nn.Conv2d(3, 4, 1, name="b1"), nn.ReLU(name="b1r"), name="branch1x1"),
        nn.Sequential(nn.Conv2d(3, 2, 1, name="b3a"), nn.ReLU(name="b3ar"), nn.Conv2d(2, 5, 3, padding=1, name="b3b"),
                      nn.ReLU(name="b3br"), name="branch3x3"),
        nn.Sequential(nn.Conv2d(3, 2, 1, name="b5a"), nn.ReLU(name="b5ar"), nn.Conv2d(2, 3, 5, padding=2, name="b5b"),
                      nn.ReLU(name="b5br"), name="branch5x5"),
        nn.Sequential(nn.MaxPool2d(3, 1, 1, name="pool"), nn.Conv2d(3, 2, 1, name="bp"), nn.ReLU(name="bpr"),
                      name="branch_pool"),
        axis=1, name="inception")

    class Inception(tn.Module):
        def __init__(self):
            super().__init__()
            self.b1, self.b3a, self.b3b = tn.Conv2d(3, 4, 1), tn.Conv2d(3, 2, 1), tn.Conv2d(2, 5, 3, padding=1)
            self.b5a, self.b5b, self.bp = tn.Conv2d(3, 2, 1), tn.Conv2d(2, 3, 5, padding=2), tn.Conv2d(3, 2, 1)

        def forward(self, x):
            r = torch.relu
            return torch.cat([r(self.b1(x)), r(self.b3b(r(self.b3a(x)))), r(self.b5b(r(self.b5a(x)))),
                              r(self.bp(tn.functional.max_pool2d(x, 3, 1, 1)))], 1)

    mapping = {f"{m}.{p}": f"{m}.{p}" for m in ("b1", "b3a", "b3b", "b5a", "b5b", "bp") for p in ("weight", "bias")}
    _compare(torch, model, Inception(), mapping, np.random.default_rng(1).standard_normal((2, 3, 7, 6)).astype(np.float32))


def test_graph_two_inputs_two_outputs_and_multi_output_node(torch):
    class Halves(nn.Module):
        """A tiny module with two outputs: the two halves of the channels."""
        num_outputs = 2

        def forward(self, x):
            c = x.shape[1] // 2
            self.output = [x[:, :c], x[:, c:]]
            return self.output

        def backward(self, x, grad_out):
            return np.concatenate(grad_out, axis=1)

    g = nn.Graph(inputs=["a", "b"], outputs=["mul", "tail"], name="g")
    g.add(nn.Linear(3, 4, name="fa"), ["a"])
    g.add(nn.Linear(2, 4, name="fb"), ["b"])
    g.add(Halves(name="split"), ["fa"])
    g.add(nn.Concat(axis=1, name="cat"), ["split:1", "split:0"])
    g.add(nn.Mul(name="mul"), ["cat", "fb"])
    g.add(nn.Tanh(name="tail"), ["split:1"])

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fa, self.fb = torch.nn.Linear(3, 4), torch.nn.Linear(2, 4)

        def forward(self, a, b):
            ya = self.fa(a)
            cat = torch.cat([ya[:, 2:], ya[:, :2]], 1)
            return cat * self.fb(b), torch.tanh(ya[:, 2:])

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32)
    t = Twin()
    mapping = {f"{m}.{p}": f"{m}.{p}" for m in ("fa", "fb") for p in ("weight", "bias")}
    state = g.state_dict()
    _copy_into_torch(torch, {k: state[k] for k in mapping}, {k: dict(t.named_parameters())[v] for k, v in mapping.items()})
    ta, tb = (torch.from_numpy(v).requires_grad_() for v in (a, b))
    tmul, ttail = t(ta, tb)
    mul, tail = g.forward({"a": a, "b": b})
    assert_close(mul, to_numpy(tmul))
    assert_close(tail, to_numpy(ttail))
    g1, g2 = (rng.standard_normal(v.shape).astype(np.float32) for v in (mul, tail))
    torch.autograd.backward([tmul, ttail], [torch.from_numpy(g1), torch.from_numpy(g2)])
    ga, gb = g.backward([a, b], [g1, g2])
    assert_close(ga, to_numpy(ta.grad))
    assert_close(gb, to_numpy(tb.grad))
    assert_close(g.find("fa").grads["weight"], to_numpy(t.fa.weight.grad))


def test_joins_with_branches_add_coeffs_mul_max(torch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    add = nn.Add(nn.Scale(3, name="s1"), nn.Identity(name="id"), coeffs=[0.5, -2.0], name="add")
    add.find("s1").params["weight"][...] = [1.0, 2.0, 3.0]
    y = add.forward(x)
    assert_close(y, 0.5 * x * np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1) - 2 * x)
    gx = add.backward(x, np.ones_like(y))
    assert_close(gx, 0.5 * np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1) * np.ones_like(x) - 2)
    a, b = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    ta, tb = (torch.from_numpy(v).requires_grad_() for v in (a, b))
    for ours, theirs in ((nn.Max(), torch.maximum(ta, tb)), (nn.Mul(), ta * tb)):
        out = ours.forward([a, b])
        assert_close(out, to_numpy(theirs))
        gy = rng.standard_normal(out.shape).astype(np.float32)
        ta.grad = tb.grad = None
        theirs.backward(torch.from_numpy(gy))
        ga, gb = ours.backward([a, b], gy)
        assert_close(ga, to_numpy(ta.grad))
        assert_close(gb, to_numpy(tb.grad))


def test_graph_errors_name_the_problem():
    g = nn.Graph(inputs=["data"], outputs=["fc"], name="net")
    g.add(nn.Linear(2, 2, name="fc"), ["nope"])
    with pytest.raises(ValueError, match="'nope'.*known: data, fc"):
        g.forward(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="already exists"):
        g.add(nn.ReLU(name="fc"), ["data"])
    cyc = nn.Graph(inputs=["x"], outputs=["a"], name="cyc")
    cyc.add(nn.ReLU(name="a"), ["b"])
    cyc.add(nn.ReLU(name="b"), ["a"])
    with pytest.raises(ValueError, match="cycle"):
        cyc.forward(np.zeros(2, np.float32))


def test_replace_keeps_wiring_for_a_new_head():
    g = resnet_block_graph(2)
    old = g.replace("conv2", nn.Conv2d(2, 2, 3, padding=1, bias=False, name="conv2_new"))
    assert old.name == "conv2" and g.node_inputs["bn2"] == ["conv2_new"]
    g.forward(np.zeros((1, 2, 4, 4), np.float32))
    seq = nn.Sequential(nn.Linear(4, 3, name="fc7"), nn.Linear(3, 10, name="fc8"))
    seq.replace("fc8", nn.Linear(3, 5, name="fc8_new"))
    assert seq.forward(np.zeros((2, 4), np.float32)).shape == (2, 5)


def test_frozen_prefix_is_not_backpropagated_when_asked():
    seq = nn.Sequential(nn.Linear(4, 3, name="a"), nn.ReLU(name="r"), nn.Linear(3, 2, name="b"))
    seq.freeze("a")
    seq.skip_frozen_prefix = True
    x = np.ones((2, 4), np.float32)
    seq.forward(x)
    assert seq.backward(x, np.ones((2, 2), np.float32)) is None
    assert "weight" not in seq.find("a").grads and "weight" in seq.find("b").grads


def test_evaluate_mode_relu_runs_over_a_linear_output_only(torch):
    """In evaluate mode as in training, a ReLU overwrites an output that only it reads (a
    Linear's); never the caller's input, nor the output of a module that hands its input on."""
    lin = nn.Linear(6, 5, name="fc")
    model = nn.Sequential(lin, nn.ReLU(name="relu"), name="m").evaluate()
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    y = model.forward(x)
    tl = torch.nn.Linear(6, 5)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(lin.params["weight"]))
        tl.bias.copy_(torch.from_numpy(lin.params["bias"]))
        assert_close(y, to_numpy(torch.relu(tl(torch.from_numpy(x)))))
    assert np.shares_memory(y, lin.output)
    keep = x.copy()
    passthrough = nn.Sequential(nn.Identity(name="id"), nn.ReLU(name="relu"), name="p").evaluate()
    assert_close(passthrough.forward(x), np.maximum(keep, 0))
    assert np.array_equal(x, keep)
