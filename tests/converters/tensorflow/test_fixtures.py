"""The committed graphs (tests/fixtures/tensorflow, written by make_graphs.py with TensorFlow) against
what TensorFlow computed with them, layer by layer, without TensorFlow: Keras applications
(MobileNetV2, MobileNetV3-Small), Keras 3 blocks, a TF1-style graph, and one graph per known trap,
each within 1e-5 absolute at every layer."""
import numpy as np
import pytest

from kindling.converters import tensorflow as tfc
from kindling.converters.verify import NpzReference, verify
from kindling.runtime import nn
from tf_graphs import FIXTURES, stored

APPS = ["mobilenet_v2", "mobilenet_v3_small", "keras_blocks", "tf1_graph"]
TRAPS = sorted(p.stem for p in FIXTURES.glob("trap_*.pb"))


def _verified(name: str, atol: float):
    model = tfc.convert(FIXTURES / f"{name}.pb")
    report = verify(model, NpzReference(FIXTURES / f"{name}.npz", ["x"]), atol=atol, rtol=0)
    assert report.first_failure is None, report.table()
    compared = [r for r in report.rows if r.max_abs is not None]
    assert compared and len(compared) == len(report.rows), report.table()
    return model, report


@pytest.mark.parametrize("name", APPS)
def test_keras_and_tf1_graphs_match_tensorflow_at_every_layer(name):
    model, report = _verified(name, 1e-4)
    assert len(report.rows) >= {"mobilenet_v2": 150, "mobilenet_v3_small": 150}.get(name, 20)
    want = stored(name)
    out = np.asarray(model.evaluate().forward(want["x"]))
    name_out = model.metadata["output_names"][0]
    assert np.abs(out - want[f"{name_out}:0"]).max() <= 1e-4


@pytest.mark.parametrize("name", TRAPS)
def test_known_trap_within_1e5_of_tensorflow(name):
    _verified(name, 1e-5)


@pytest.mark.parametrize("name", ["tf1_graph", "keras_blocks", "mobilenet_v3_small", "trap_same_pool"])
def test_converted_models_survive_save_and_load(tmp_path, name):
    import kindling
    model = tfc.convert(FIXTURES / f"{name}.pb")
    kindling.save(model, tmp_path / "m.kdl")
    loaded = kindling.load(tmp_path / "m.kdl")
    x = stored(name)["x"]
    before, after = (m.evaluate().forward(x) for m in (model, loaded))
    before, after = (y if isinstance(y, list) else [y] for y in (before, after))
    assert len(before) == len(after) and all(np.array_equal(a, b) for a, b in zip(before, after))
    assert loaded.metadata == model.metadata


@pytest.mark.parametrize("name", ["tf1_graph", "keras_blocks", "mobilenet_v2"])
def test_converted_models_train(name):
    """Every weight is an array of its own (a constant parsed from the file is a read-only view), so
    a training step runs: forward with batch statistics, backward, an SGD update in place."""
    model = tfc.convert(FIXTURES / f"{name}.pb")
    assert all(a.flags.writeable and a.flags.c_contiguous for m in model.modules()
               for a in [*m.params.values(), *m.buffers.values()])
    x = stored(name)["x"]
    y = model.train().forward(x)
    model.zero_grad()
    model.backward(x, np.random.default_rng(0).standard_normal(np.shape(y)).astype(np.float32))
    grads = {k: g for k, _, g in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert np.abs(next(iter(grads.values()))).max() > 0  # the gradient reaches the first layer
    before = {k: w.copy() for k, w, _ in model.named_parameters()}
    for _, w, g in model.named_parameters():
        w -= np.float32(0.1) * g  # the update every optimizer makes, in place
    assert all(np.array_equal(w, before[k] - np.float32(0.1) * grads[k]) for k, w, _ in model.named_parameters())


def _modules(model):
    return {m.name: m for m in model.modules()}


def test_same_pooling_at_stride_1_pads_with_minus_infinity_and_stride_2_uses_ceil_mode():
    m = _modules(tfc.convert(FIXTURES / "trap_same_pool.pb"))
    assert m["max2s1/pad"].value == -np.inf and m["max2s1/pad"].pads == [0, 0, 0, 0, 0, 1, 0, 1]
    assert m["avg2s2"].ceil_mode and not m["avg2s2"].count_include_pad
    assert not m["avg3s1"].count_include_pad and m["avg3s1"].padding == (1, 1)


def test_uneven_same_convolution_gets_its_own_padding():
    m = _modules(tfc.convert(FIXTURES / "trap_same_conv.pb"))
    pads = [x for x in m.values() if isinstance(x, nn.Pad)]
    assert pads and all(p.pads[:4] == [0, 0, 0, 0] for p in pads)
    assert [0, 0, 0, 0, 0, 1, 1, 1] in [p.pads for p in pads]  # 8 rows at k3 s2: 0 above, 1 below


def test_dilated_convolution_and_flatten_and_batch_norms_become_single_modules():
    dilated = [m for m in tfc.convert(FIXTURES / "trap_dilated.pb").modules() if isinstance(m, nn.Conv2d)]
    assert sorted(c.dilation for c in dilated) == [(2, 2), (3, 3)]
    flat = tfc.convert(FIXTURES / "trap_flatten_7x5.pb")
    assert [type(c).__name__ for c in flat.children()] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    fused = tfc.convert(FIXTURES / "trap_batchnorm.pb")
    assert [type(c).__name__ for c in fused.children()] == ["BatchNorm2d", "Scale"]
    keras3 = tfc.convert(FIXTURES / "trap_keras3_batchnorm.pb")
    assert [type(c).__name__ for c in keras3.children()] == ["Conv2d", "Scale"]


def test_depthwise_multiplier_2_orders_output_channels_as_tensorflow():
    conv = next(m for m in tfc.convert(FIXTURES / "trap_depthwise_multiplier.pb").modules() if isinstance(m, nn.Conv2d))
    assert (conv.in_channels, conv.out_channels, conv.groups) == (3, 6, 3)


def test_batch_size_is_free_where_keras_computes_it_from_shape():
    """tf1_graph flattens with reshape(x, stack([shape(x)[0], -1])): any batch size works."""
    model = tfc.convert(FIXTURES / "tf1_graph.pb").evaluate()
    x = np.concatenate([stored("tf1_graph")["x"]] * 3)[:5]
    together = np.array(model.forward(x))
    one_by_one = np.concatenate([np.array(model.forward(x[i:i + 1])) for i in range(5)])
    assert together.shape == (5, 6) and np.abs(together - one_by_one).max() <= 1e-6


def test_metadata_records_layout_inputs_outputs_and_the_file():
    model = tfc.convert(FIXTURES / "keras_blocks.pb", labels=list("abcde"))
    meta = model.metadata
    assert meta["input_names"] == ["x"] and meta["output_names"] == ["Identity"]
    assert meta["input_shape"] == [-1, 3, 15, 13]
    assert meta["extra"] == {"source_layout": "NHWC", "layout": "NCHW"}
    assert meta["source"]["framework"] == "tensorflow" and len(meta["source"]["files"][0]["sha256"]) == 64
    assert meta["labels"] == list("abcde")


def test_inputs_and_outputs_cut_the_graph():
    """--outputs stops at an inner tensor; --inputs starts from one (the nodes before it go)."""
    full = tfc.convert(FIXTURES / "trap_flatten_7x5.pb")
    head = tfc.convert(FIXTURES / "trap_flatten_7x5.pb", outputs=["Relu:0"])
    assert [type(c).__name__ for c in head.children()] == ["Conv2d", "ReLU"]
    tail = tfc.convert(FIXTURES / "trap_flatten_7x5.pb", inputs=["Relu"], input_shapes={"Relu": [1, 4, 7, 5]})
    assert [type(c).__name__ for c in tail.children()] == ["Flatten", "Linear"]
    x = stored("trap_flatten_7x5")["x"]
    assert np.abs(np.array(tail.evaluate().forward(np.array(head.evaluate().forward(x))))
                  - np.array(full.evaluate().forward(x))).max() <= 1e-6
