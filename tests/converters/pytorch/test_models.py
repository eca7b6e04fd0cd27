"""Models trained elsewhere in PyTorch, brought into a kindling model by name: LeNet and a ResNet-18
(both written here, in torch and in kindling, with torchvision's module names), in .pt and
.safetensors, compared with torch's forward; and PyTorch's pooling traps (ceil_mode,
count_include_pad=False) in models converted from .pt files, within 1e-5."""
import numpy as np
import pytest
from safetensors.torch import save_file

from kindling.converters import pytorch
from kindling.runtime import nn
from torch_nets import kindling_lenet, kindling_resnet18, randomize, torch_lenet, torch_outputs, torch_resnet18


def save_as(torch, sd, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


def max_rel(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_resnet18_from_pytorch_computes_what_torch_computes(torch, tmp_path, suffix):
    reference = randomize(torch, torch_resnet18(torch))
    path = save_as(torch, reference.state_dict(), tmp_path / f"resnet18{suffix}")
    model = kindling_resnet18()
    report = pytorch.load_weights(model, path, match_all=True)
    assert len(report["loaded"]) == 41 and report["skipped"] == [] and report["unused"] == []  # 20 convs, 20 BNs, fc
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = torch_outputs(torch, reference, x)
    got = model.evaluate().forward(x)
    assert max_rel(got, want) <= 1e-5, max_rel(got, want)
    bn = model.find("layer3.0.bn2")
    assert np.array_equal(bn.buffers["running_var"], reference.layer3[0].bn2.running_var.numpy())


def test_every_weighted_layer_shares_pytorchs_layout(torch, tmp_path):
    """Grouped, dilated and depthwise convolutions, a strided grouped transposed convolution, per-channel
    PReLU, BatchNorm without affine parameters and Linear without bias: loaded by name, same function."""
    tn = torch.nn
    reference = randomize(torch, tn.Sequential(
        tn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), tn.PReLU(8), tn.Conv2d(8, 8, 3, groups=8),
        tn.BatchNorm2d(8, affine=False), tn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        tn.Flatten(), tn.Linear(6 * 12 * 12, 5, bias=False)), seed=4)
    path = save_as(torch, reference.state_dict(), tmp_path / "layers.pt")
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, name="0"), nn.PReLU(8, name="1"),
        nn.Conv2d(8, 8, 3, groups=8, name="2"), nn.BatchNorm2d(8, affine=False, name="3"),
        nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2, name="4"), nn.Flatten(name="5"),
        nn.Linear(6 * 12 * 12, 5, bias=False, name="6"), name="m")
    report = pytorch.load_weights(model, path, match_all=True)
    assert report["loaded"] == ["0", "1", "2", "3", "4", "6"]
    x = np.random.default_rng(5).standard_normal((2, 4, 8, 8)).astype(np.float32)
    want = torch_outputs(torch, reference, x)
    assert max_rel(model.evaluate().forward(x), want) <= 1e-5


def test_lenet_round_trip_is_exact_and_its_report_names_what_was_loaded(torch, tmp_path):
    reference = randomize(torch, torch_lenet(torch))
    path = save_as(torch, reference.state_dict(), tmp_path / "lenet.pth")
    model = kindling_lenet()
    report = pytorch.load_weights(model, path)
    assert report == {"loaded": ["conv1", "conv2", "fc1", "fc2"], "skipped": [], "unused": [], "notes": []}
    for key, t in reference.state_dict().items():
        module, _, param = key.rpartition(".")
        assert np.array_equal(model.find(module).params[param], t.numpy()), key
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert np.abs(model.forward(x) - torch_outputs(torch, reference, x)).max() <= 1e-5


def test_half_and_bfloat16_checkpoints_are_widened(torch, tmp_path):
    reference = randomize(torch, torch_lenet(torch))
    for dtype in (torch.float16, torch.bfloat16):
        sd = {k: v.to(dtype) for k, v in reference.state_dict().items()}
        path = save_as(torch, {"model": sd, "epoch": 3}, tmp_path / f"lenet-{dtype}.pt")
        model = kindling_lenet()
        report = pytorch.load_weights(model, path)
        assert report["notes"] == ["took the state_dict under 'model' (the file also holds epoch)"]
        assert np.array_equal(model.find("fc1").params["weight"], sd["fc1.weight"].float().numpy())


def test_a_new_head_keeps_its_initialisation_and_renames_carry_weights_across(torch, tmp_path):
    reference = randomize(torch, torch_lenet(torch))
    path = save_as(torch, {f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "dp.pt")
    model = kindling_lenet()
    head = model.find("fc2")
    head.name = "fc2_digits"
    fresh = head.params["weight"].copy()
    report = pytorch.load_weights(model, path)
    assert report["skipped"] == ["fc2_digits"] and report["unused"] == ["fc2"]
    assert report["notes"] == ["stripped DataParallel's 'module.' prefix from 8 keys"]
    assert np.array_equal(head.params["weight"], fresh)
    with pytest.raises(pytorch.TorchError, match=r"dp\.pt: no weights for modules fc2_digits \(match_all=True\)"):
        pytorch.load_weights(kindling_lenet_renamed(), path, match_all=True)
    report = pytorch.load_weights(model, path, rename={"fc2": "fc2_digits"}, match_all=True)
    assert report["skipped"] == [] and np.array_equal(head.params["weight"], reference.fc2.weight.detach().numpy())


def kindling_lenet_renamed():
    model = kindling_lenet()
    model.find("fc2").name = "fc2_digits"
    return model


def test_mismatches_name_the_file_the_tensor_and_both_shapes_and_change_nothing(torch, tmp_path):
    reference = randomize(torch, torch_lenet(torch))
    path = save_as(torch, reference.state_dict(), tmp_path / "lenet.pt")
    model = nn.Sequential(nn.Conv2d(1, 20, 5, name="conv1"), nn.Conv2d(20, 50, 3, name="conv2"), name="m")
    before = model.find("conv1").params["weight"].copy()
    with pytest.raises(pytorch.TorchError, match=r"lenet\.pt: layer 'conv2' weight: the file has shape "
                                                 r"\[50, 20, 5, 5\], the model expects \[50, 20, 3, 3\]"):
        pytorch.load_weights(model, path)
    assert np.array_equal(model.find("conv1").params["weight"], before)  # checked before any copy
    no_bias = nn.Sequential(nn.Conv2d(1, 20, 5, bias=False, name="conv1"), name="m")
    with pytest.raises(pytorch.TorchError, match=r"layer 'conv1': the file has bias, which Conv2d 'conv1' does not "
                                                 r"\(it has weight\)"):
        pytorch.load_weights(no_bias, path)
    bn_path = save_as(torch, {"bn.weight": torch.ones(3), "bn.bias": torch.zeros(3)}, tmp_path / "bn.pt")
    with pytest.raises(pytorch.TorchError, match=r"bn\.pt: layer 'bn': the file has weight, bias but not "
                                                 r"running_mean, running_var for BatchNorm2d 'bn'"):
        pytorch.load_weights(nn.BatchNorm2d(3, name="bn"), bn_path)
    int_path = save_as(torch, {"fc.weight": torch.ones(2, 3, dtype=torch.int64), "fc.bias": torch.ones(2)},
                       tmp_path / "int.pt")
    with pytest.raises(pytorch.TorchError, match=r"int\.pt: layer 'fc' weight: the file has a int64 tensor"):
        pytorch.load_weights(nn.Linear(3, 2, name="fc"), int_path)


# ---- PyTorch's pooling traps, in models converted from .pt -------------------------------------------------
POOLS = {
    "max ceil_mode": lambda tn: tn.MaxPool2d(3, 2, ceil_mode=True),
    "max ceil_mode padded": lambda tn: tn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
    "avg count_include_pad=False": lambda tn: tn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
    "avg ceil_mode count_include_pad=False": lambda tn: tn.AvgPool2d(3, 2, padding=1, ceil_mode=True,
                                                                      count_include_pad=False),
    "avg ceil_mode count_include_pad": lambda tn: tn.AvgPool2d(2, 2, padding=1, ceil_mode=True),
}
KINDLING_POOLS = {
    "max ceil_mode": lambda: nn.MaxPool2d(3, 2, ceil_mode=True, name="pool"),
    "max ceil_mode padded": lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True, name="pool"),
    "avg count_include_pad=False": lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False, name="pool"),
    "avg ceil_mode count_include_pad=False": lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False,
                                                                  name="pool"),
    "avg ceil_mode count_include_pad": lambda: nn.AvgPool2d(2, 2, 1, ceil_mode=True, name="pool"),
}


@pytest.mark.parametrize("size", [(10, 13), (9, 9), (7, 12)])
@pytest.mark.parametrize("pool", POOLS)
def test_pooling_traps_in_a_converted_model_match_torch_within_1e_5(torch, tmp_path, pool, size):
    tn = torch.nn
    x = np.random.default_rng(3).standard_normal((2, 3, *size)).astype(np.float32)
    torch_pool = POOLS[pool](tn)
    features = torch_pool(torch.zeros(1, 4, *size)).numel()
    reference = randomize(torch, tn.Sequential(tn.Conv2d(3, 4, 3, padding=1), torch_pool, tn.Flatten(),
                                               tn.Linear(features, 5)), seed=2)
    want = torch_outputs(torch, reference, x)
    path = save_as(torch, reference.state_dict(), tmp_path / "pool.pt")
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, name="0"), KINDLING_POOLS[pool](), nn.Flatten(name="2"),
                          nn.Linear(features, 5, name="3"), name="m")
    pytorch.load_weights(model, path, match_all=True)
    got = model.evaluate().forward(x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5
