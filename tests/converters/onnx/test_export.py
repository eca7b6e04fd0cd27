"""kindling export onnx: every module type of the runtime (runtime/nn.py's LAYERS, containers and
Graph included) exported, checked by onnx.checker (full_check), run by onnxruntime and compared with
kindling; the converted real LeNet too; export -> import gives the original back."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kindling
from caffe_nets import LENET
from kindling.cli import main
from kindling.converters import caffe
from kindling.converters import onnx as konnx
from kindling.converters.onnx.emit_extra import NOT_EXPORTED
from kindling.converters.onnx.exporter import to_onnx
from kindling.runtime import nn
from kindling.runtime.nn import LAYERS

RNG = np.random.default_rng(0)


def _randomized(model):
    """Weights and statistics that are not the initial ones, so every parameter counts."""
    for m in model.modules():
        for store in (m.params, m.buffers):
            for k, v in store.items():
                if v.dtype == np.float32 and k != "constant":
                    store[k] = (RNG.uniform(0.5, 1.5, v.shape) if k == "running_var" else
                                RNG.standard_normal(v.shape) * 0.5).astype(np.float32)
    return model


def seq(*modules):
    return nn.Sequential(*modules)


def graph(inputs, nodes, outputs):
    g = nn.Graph(inputs=inputs, outputs=outputs)
    for m, ins in nodes:
        g.add(m, ins)
    return g


X4 = {"x": [2, 4, 8, 8]}
# type -> (model, input shapes); models with several inputs are Graphs
CASES = {
    "Linear": (lambda: seq(nn.Linear(4 * 8 * 8, 6)), X4),
    "Conv2d": (lambda: seq(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)), X4),
    "ConvTranspose2d": (lambda: seq(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)), X4),
    "MaxPool2d": (lambda: seq(nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(global_pooling=True)), X4),
    "AvgPool2d": (lambda: seq(nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(2, 1, 0, count_include_pad=False),
                              nn.AvgPool2d(global_pooling=True)), X4),
    "MaxUnpool2d": (lambda: graph(["x"], [(nn.MaxPool2d(2, 2, return_indices=True, name="pool"), ["x"]),
                                          (nn.MaxUnpool2d(2, name="unpool"), ["pool:0", "pool:1"])], ["unpool", "pool:1"]),
                    X4),
    "ReLU": (lambda: seq(nn.ReLU()), X4), "LeakyReLU": (lambda: seq(nn.LeakyReLU(0.2)), X4),
    "ELU": (lambda: seq(nn.ELU(0.7)), X4), "Sigmoid": (lambda: seq(nn.Sigmoid()), X4), "Tanh": (lambda: seq(nn.Tanh()), X4),
    "PReLU": (lambda: seq(nn.PReLU(4), nn.PReLU(1)), X4),
    "Softmax": (lambda: seq(nn.Softmax(1), nn.Softmax(-1)), X4), "LogSoftmax": (lambda: seq(nn.LogSoftmax(2)), X4),
    "Dropout": (lambda: seq(nn.Dropout(0.3)), X4),
    "BatchNorm2d": (lambda: seq(nn.BatchNorm2d(4), nn.BatchNorm2d(4, affine=False)), X4),
    "LocalResponseNorm": (lambda: seq(nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0), nn.LocalResponseNorm(4, 1e-2, 0.75, 1.0),
                                      nn.LocalResponseNorm(3, 1e-2, 0.75, 1.0, region="within")), X4),
    "Scale": (lambda: seq(nn.Scale([4]), nn.Scale([8, 8], bias=False, axis=2)), X4),
    "Power": (lambda: seq(nn.Power(2.0, 0.5, 3.0), nn.Power(1.0, 2.0, 0.0)), X4),
    "AbsVal": (lambda: seq(nn.AbsVal()), X4), "BNLL": (lambda: seq(nn.BNLL()), X4),
    "Bias": (lambda: seq(nn.Bias([4])), X4),
    "ScaleBy": (lambda: graph(["x", "s"], [(nn.ScaleBy(0, name="sb"), ["x", "s"])], ["sb"]),
                {"x": [2, 4, 8, 8], "s": [2, 4]}),
    "Axpy": (lambda: graph(["a", "x", "y"], [(nn.Axpy(name="axpy"), ["a", "x", "y"])], ["axpy"]),
             {"a": [2, 4], "x": [2, 4, 8, 8], "y": [2, 4, 8, 8]}),
    "Crop": (lambda: graph(["x", "ref"], [(nn.Crop(2, [1, 2], name="crop"), ["x", "ref"])], ["crop"]),
             {"x": [2, 4, 8, 8], "ref": [2, 4, 5, 4]}),
    "Permute": (lambda: seq(nn.Permute([0, 2, 3, 1])), X4),
    "Slice": (lambda: graph(["x"], [(nn.Slice(1, [1, 3], name="sl"), ["x"])], ["sl:0", "sl:1", "sl:2"]), X4),
    "ShuffleChannel": (lambda: seq(nn.ShuffleChannel(2)), X4),
    "Upsample": (lambda: seq(nn.Upsample(2)), X4),
    "Normalize": (lambda: seq(nn.Normalize(4, across_spatial=False, channel_shared=False),
                              nn.Normalize(4, across_spatial=True, channel_shared=True)), X4),
    "MVN": (lambda: seq(nn.MVN(True, False), nn.MVN(False, True), nn.MVN(True, True)), X4),
    "Exp": (lambda: seq(nn.Exp(2.0, 0.5, 0.1)), X4), "Log": (lambda: seq(nn.AbsVal(), nn.Log(10.0, 2.0, 1.0)), X4),
    "Threshold": (lambda: seq(nn.Threshold(0.2)), X4),
    "Reduction": (lambda: seq(nn.Reduction("asum", 2, 0.5)), X4),
    "ArgMax": (lambda: graph(["x"], [(nn.ArgMax(1, 1, name="a1"), ["x"]), (nn.ArgMax(3, 1, True, name="a3"), ["x"]),
                                     (nn.ArgMax(2, None, True, name="aflat"), ["x"]),
                                     (nn.ArgMax(1, None, name="aflat1"), ["x"])],
                               ["a1", "a3", "aflat", "aflat1"]), X4),
    "Tile": (lambda: seq(nn.Tile(1, 3)), X4),
    "Flatten": (lambda: seq(nn.Flatten(2, 3), nn.Flatten()), X4), "Reshape": (lambda: seq(nn.Reshape([0, 8, -1])), X4),
    "Identity": (lambda: seq(nn.Identity()), X4),
    "Sequential": (lambda: seq(nn.ReLU(), seq(nn.Sigmoid())), X4),
    "Concat": (lambda: seq(nn.Concat(nn.ReLU(), nn.Tanh(), axis=1)), X4),
    "Add": (lambda: seq(nn.Add(nn.ReLU(), nn.Identity(), coeffs=[0.5, 2.0]), nn.Add(nn.Sigmoid(), nn.Tanh(), nn.ReLU())),
            X4),
    "Mul": (lambda: seq(nn.Mul(nn.Sigmoid(), nn.Identity(), nn.Tanh())), X4),
    "Max": (lambda: seq(nn.Max(nn.Sigmoid(), nn.Tanh())), X4), "Min": (lambda: seq(nn.Min(nn.Sigmoid(), nn.Tanh())), X4),
    "Graph": (lambda: graph(["x"], [(nn.Conv2d(4, 4, 3, padding=1, name="c"), ["x"]), (nn.Add(name="sum"), ["c", "x"]),
                                    (nn.ReLU(name="r"), ["sum"])], ["r", "c"]), X4),
    "Clip": (lambda: seq(nn.Clip(-0.5, 0.7), nn.Clip(low=0.1)), X4), "ReLU6": (lambda: seq(nn.ReLU6()), X4),
    "Swish": (lambda: seq(nn.Swish(), nn.Swish(1.5)), X4),
    "HardSigmoid": (lambda: seq(nn.HardSigmoid(0.3, 0.4)), X4), "HardSwish": (lambda: seq(nn.HardSwish()), X4),
    "SELU": (lambda: seq(nn.SELU()), X4), "InstanceNorm": (lambda: seq(nn.InstanceNorm(4)), X4),
    "BinaryOp": (lambda: graph(["x", "y"], [(nn.BinaryOp("div", constant=np.full((4, 1, 1), 2.0), name="d"), ["x"]),
                                            (nn.BinaryOp("sub", constant=np.ones(8), constant_first=True, name="s"),
                                             ["d"]),
                                            (nn.BinaryOp("max", name="m"), ["s", "y"]),
                                            (nn.BinaryOp("matmul", constant=RNG.standard_normal((8, 3)), name="mm"),
                                             ["m"])], ["mm"]),
                 {"x": [2, 4, 8, 8], "y": [2, 4, 8, 8]}),
    "Constant": (lambda: graph(["x"], [(nn.Constant(value=RNG.standard_normal((1, 4, 1, 1)), name="c"), []),
                                       (nn.Add(name="plus"), ["x", "c"])], ["plus"]), X4),
    "Pad": (lambda: seq(nn.Pad([0, 0, 0, 0, 1, 0, 2, 1], mode="reflect"), nn.Pad([0, 0, 1, 0, 1, 1, 1, 1], 0.5),
                        nn.Pad([0, 0, 0, 0, -1, 1, 0, 0], mode="edge")), X4),
    "Resize": (lambda: seq(nn.Resize(scales=[2.0, 1.5], axes=[2, 3], mode="linear"),
                           nn.Resize(sizes=[0, 0, 5, 7], mode="nearest", coordinate_transformation_mode="asymmetric")),
               X4),
    "StridedSlice": (lambda: seq(nn.StridedSlice([1, -1], [3, -(1 << 62)], [1, 3], [1, -2])), X4),
    "Gather": (lambda: seq(nn.Gather(np.array([3, 0, 1]), axis=1)), X4),
    "ReduceAxes": (lambda: seq(nn.ReduceAxes("mean", [2, 3], True), nn.ReduceAxes("max", [1], False)), X4),
    "Mish": (lambda: seq(nn.Mish()), X4), "AlphaDropout": (lambda: seq(nn.AlphaDropout(0.2)), X4),
    # SSD's priors for a 4x4 feature map of a 32x24 image: a constant of the exported sizes
    "PriorBox": (lambda: graph(["x", "image"], [(nn.PriorBox([8.0], [16.0], [2.0], clip=True, name="priors"),
                                                 ["x", "image"])], ["priors"]),
                 {"x": [2, 4, 4, 4], "image": [2, 3, 32, 24]}),
    # criterions: a loss as a model of (input, target)
    "ClassNLLCriterion": (lambda: nn.ClassNLLCriterion(weights=[1.0, 2.0, 0.5, 1.0, 1.0]), {"input": [6, 5], "target": [6]}),
    "CrossEntropyCriterion": (lambda: nn.CrossEntropyCriterion(size_average=False), {"input": [6, 5], "target": [6]}),
    "MSECriterion": (lambda: nn.MSECriterion(), {"input": [6, 5], "target": [6, 5]}),
}


# What the export writes with ops the importer does not read (Greater, ArgMax/TopK, ScatterElements):
# these types come back from ONNX only as far as onnxruntime runs them
NOT_IMPORTED = {"Threshold", "ArgMax", "MaxUnpool2d", "ClassNLLCriterion", "CrossEntropyCriterion", "MSECriterion"}


def test_every_runtime_module_type_has_an_export_case():
    assert sorted(set(LAYERS) - set(CASES) - set(NOT_EXPORTED)) == []


@pytest.mark.parametrize("kind", sorted(NOT_EXPORTED))
def test_types_without_an_export_are_refused_naming_the_module(kind, tmp_path):
    make = {"Interp": lambda: nn.Interp(zoom=2, name="m"), "Reorg": lambda: nn.Reorg(2, name="m"),
            "ROIPooling": lambda: nn.ROIPooling(2, 2, 0.5, name="m"),
            "PSROIPooling": lambda: nn.PSROIPooling(1, 2, 0.5, name="m"),
            "DetectionOutput": lambda: nn.DetectionOutput(21, name="m")}[kind]
    with pytest.raises(konnx.OnnxError, match=rf"module 'm': {kind} has no ONNX export: .+"):
        konnx.export(nn.Sequential(make()), tmp_path / "x.onnx", input_shape=[1, 4, 8, 8])
    assert list(tmp_path.iterdir()) == []


def _inputs(shapes, model, batch):
    out = {}
    for name, shape in shapes.items():
        if name == "target" and type(model).__name__ != "MSECriterion":
            out[name] = RNG.integers(0, shape and 5, [batch]).astype(np.int64)
        else:
            out[name] = RNG.standard_normal([batch, *shape[1:]]).astype(np.float32)
    return out


def _kindling(model, feeds):
    if type(model).__name__ in ("ClassNLLCriterion", "CrossEntropyCriterion", "MSECriterion"):
        return [np.float32(model.forward(feeds["input"], feeds["target"]))]
    names = list(feeds)
    y = model.forward(feeds[names[0]] if len(names) == 1 else [feeds[n] for n in names])
    return [np.asarray(v) for v in (y if isinstance(y, list) else [y])]


@pytest.mark.parametrize("opset", [13, 17, 19])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_export_runs_in_onnxruntime_like_kindling(kind, opset, tmp_path):
    make, shapes = CASES[kind]
    model = _randomized(make()).evaluate()
    if isinstance(model, nn.Graph):
        assert list(shapes) == model.input_names
    path = konnx.export(model, tmp_path / f"{kind}.onnx", opset=opset, dynamic_batch=True, input_shape=dict(shapes))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        if kind in ("ClassNLLCriterion", "CrossEntropyCriterion", "MSECriterion") and batch == 1:
            continue
        feeds = _inputs(shapes, model, shapes["input"][0] if "target" in shapes else batch)
        theirs = sess.run(None, feeds)
        ours = _kindling(model, feeds)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape, f"{kind}: shape {a.shape} vs onnxruntime's {b.shape}"
            tol = 1e-4 * max(1.0, float(np.abs(b).max()))
            assert float(np.abs(a - b).max()) <= tol, f"{kind} (opset {opset}, batch {batch}): max diff {np.abs(a - b).max()}"
        if kind not in NOT_IMPORTED:  # and back: the imported model computes what the original did
            again = _kindling(konnx.convert(path).evaluate(), feeds)
            for a, b in zip(ours, again):
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(a).max())))


def test_real_lenet_exports_runs_in_onnxruntime_and_comes_back(tmp_path):
    model = caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel",
                          labels=[str(i) for i in range(10)], preprocessing={"scale": 1 / 255})
    out = tmp_path / "lenet.onnx"
    kdl = kindling.save(model, tmp_path / "lenet.kdl")
    assert main(["export", "onnx", str(kdl), "-o", str(out), "--dynamic-batch"]) == 0
    x = np.random.default_rng(3).random((7, 1, 28, 28), dtype=np.float32)
    theirs = ort.InferenceSession(str(out)).run(None, {"data": x})[0]
    ours = model.evaluate().forward(x)
    assert np.abs(theirs - ours).max() <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["kindling.labels"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'
    back = konnx.convert(out)
    assert [m.name for m in back.children()] == [m.name for m in model.children()]
    assert [type(m).__name__ for m in back.children()] == [type(m).__name__ for m in model.children()]
    np.testing.assert_array_equal(back.evaluate().forward(x), ours)
    assert back.metadata["labels"] == model.metadata["labels"]
    assert back.metadata["preprocessing"]["scale"] == pytest.approx(1 / 255)


def test_round_trip_of_a_graph_keeps_names_types_and_values(tmp_path):
    g = graph(["data"], [(nn.Conv2d(3, 8, 3, padding=1, name="conv"), ["data"]), (nn.BatchNorm2d(8, name="bn"), ["conv"]),
                         (nn.ReLU(name="relu"), ["bn"]), (nn.Conv2d(8, 8, 3, padding=1, name="conv2"), ["relu"]),
                         (nn.Add(name="residual"), ["conv2", "relu"]), (nn.MaxPool2d(2, 2, name="pool"), ["residual"]),
                         (nn.Concat(axis=1, name="cat"), ["pool", "pool"]), (nn.Linear(16 * 4 * 4, 5, name="fc"), ["cat"]),
                         (nn.Softmax(1, name="prob"), ["fc"])], ["prob"])
    model = _randomized(g).evaluate()
    back = konnx.convert(konnx.export(model, tmp_path / "g.onnx", input_shape=[1, 3, 8, 8]))
    assert isinstance(back, nn.Graph)
    assert [(m.name, type(m).__name__) for m in back.order()] == [(m.name, type(m).__name__) for m in model.order()]
    assert back.node_inputs == model.node_inputs
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value)
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(back.evaluate().forward(x), model.forward(x))


def test_export_refuses_a_model_without_input_shape_and_writes_nothing(tmp_path):
    model = seq(nn.ReLU())
    with pytest.raises(konnx.OnnxError, match="input shape is not recorded"):
        konnx.export(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    assert to_onnx(model, input_shapes=[1, 3, 4, 4]).graph.input[0].name == "input"
