"""The shape probe: every module's traced shape equals what a real forward pass produces."""
import numpy as np
import pytest

from kindling.runtime import nn
from kindling.runtime.shapes import ShapeError, check, fits, free_dims, probe, trace


def _recorded_shapes(model, x):
    """Output shapes of every module from a real forward pass (each forward wrapped)."""
    seen = {}
    for m in model.modules():
        original = m.forward

        def wrapped(inp, m=m, original=original, **kw):
            y = original(inp, **kw)
            seen[m.name] = [o.shape for o in y] if isinstance(y, list) else y.shape
            return y
        m.forward = wrapped
    model.train()  # training mode: no fusion, so every module runs its own forward
    model.forward(x)
    return seen


def _branchy():
    g = nn.Graph(inputs=["data"], outputs=["fc", "slice:1"], name="g")
    g.add(nn.Conv2d(3, 8, 3, stride=2, padding=1, name="conv"), ["data"])
    g.add(nn.ReLU(name="relu"), ["conv"])
    g.add(nn.MaxPool2d(3, 2, ceil_mode=True, return_indices=True, name="pool"), ["relu"])
    g.add(nn.Slice(1, [3], name="slice"), ["pool:0"])
    g.add(nn.Concat(axis=1, name="cat"), ["slice:0", "pool:1"])
    g.add(nn.Sequential(nn.Flatten(name="flat"), nn.Linear(11 * 3 * 3, 5, name="fc"), name="head"), ["cat"])
    g.set_outputs(["head", "slice:1"])
    return g


@pytest.mark.parametrize("make, shape", [
    (_branchy, (2, 3, 13, 13)),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 5, name="c"), nn.AvgPool2d(2, 2, name="p"), nn.Flatten(name="f"),
                           nn.Linear(4 * 12 * 12, 3, name="l"), nn.LogSoftmax(name="s"), name="seq"), (3, 1, 28, 28)),
], ids=["graph_with_several_outputs", "sequential"])
def test_traced_shapes_equal_a_real_forward(make, shape):
    model = make()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    traced = trace(model, [shape])
    real = _recorded_shapes(model, x)
    for name, s in real.items():
        want = [tuple(v) for v in s] if isinstance(s, list) else tuple(s)
        assert traced[name] == want, name


def test_probe_names_the_module_and_shapes():
    with pytest.raises(ShapeError, match=r"'fc' \(Linear\) does not fit its input shape \(1, 7\): .*expects 5"):
        probe(nn.Linear(5, 2, name="fc"), [(1, 7)])


def test_probe_leaves_no_buffers_and_no_statistics_moved():
    bn = nn.BatchNorm2d(3, name="bn")
    before = {k: v.copy() for k, v in bn.buffers.items()}
    assert probe(bn, [(2, 3, 4, 4)]) == (2, 3, 4, 4)
    assert all(np.array_equal(before[k], bn.buffers[k]) for k in before) and not bn._scratch and bn.training
    assert bn.output is None  # an output would keep the probe's buffer alive (a converter probes every layer)


def test_probe_of_a_container_leaves_no_outputs_in_its_layers():
    seq = nn.Sequential(nn.ReLU(name="r"), nn.Scale([3], name="s"), name="seq")
    assert probe(seq, [(1, 3, 8, 8)]) == (1, 3, 8, 8)
    assert all(m.output is None and not m._scratch for m in seq.modules())


def _classifier(global_pooling: bool):
    pool = (nn.AvgPool2d(None, global_pooling=True, name="pool") if global_pooling
            else nn.AvgPool2d(2, 2, name="pool"))
    return nn.Sequential(nn.Conv2d(3, 4, 3, name="conv"), nn.ReLU(name="relu"), pool, nn.Flatten(name="flat"),
                         nn.Linear(4 if global_pooling else 4 * 3 * 3, 2, name="fc"), name="net")


def test_free_dims_are_those_no_layer_fixes():
    assert free_dims(_classifier(global_pooling=True), [1, 3, 8, 8]) == [-1, 3, -1, -1]
    assert free_dims(_classifier(global_pooling=False), [1, 3, 8, 8]) == [-1, 3, 8, 8]
    assert free_dims(nn.Sequential(nn.ReLU(name="r"), name="s"), [1, 5]) == [-1, -1]


def test_check_names_the_layer_and_leaves_a_model_in_use_as_it_was():
    model = _classifier(global_pooling=True).evaluate()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = model.forward(x).copy()
    kept = {m.name: (dict(m._scratch), m.output) for m in model.modules()}
    assert check(model, [(1, 3, 30, 20)])["fc"] == (1, 2)
    for m in model.modules():  # the same buffers, not reallocated ones
        scratch, output = kept[m.name]
        assert m._scratch.keys() == scratch.keys() and all(m._scratch[k] is v for k, v in scratch.items())
        assert m.output is output
    with pytest.raises(ShapeError, match=r"'conv' \(Conv2d\) does not fit its input shape \(1, 3, 2, 2\)"):
        check(model, [(1, 3, 2, 2)])
    assert not fits(model, [(1, 3, 2, 2)]) and fits(model, [(1, 3, 3, 3)])
    np.testing.assert_array_equal(model.forward(x), y)
