""".safetensors files against the reference implementation (huggingface's safetensors package):
the same tensors from files it writes, and the same verdict on files it refuses."""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as reference_load
from safetensors.numpy import save_file
from safetensors.torch import save_file as torch_save_file

from kindling.converters import pytorch
from kindling.converters.pytorch import TorchError


def test_files_written_by_safetensors_read_back_exactly(torch, tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
               "half": torch.randn(7, generator=g).half(), "bf16": torch.randn(2, 5, generator=g).bfloat16(),
               "f64": torch.randn(3, generator=g, dtype=torch.float64), "steps": torch.tensor(12),
               "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 2), "u8": torch.arange(3, dtype=torch.uint8)}
    path = tmp_path / "m.safetensors"
    torch_save_file(tensors, path, metadata={"format": "pt", "note": "test"})
    got = pytorch.read_state_dict(path)
    assert sorted(got) == sorted(tensors)
    for k, t in tensors.items():
        want = (t.float() if t.is_floating_point() else t).numpy()
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k
    with pytorch.open_weights(path) as w:
        assert w.format == "safetensors" and w.metadata == {"format": "pt", "note": "test"}
        view = w["conv.weight"].mapped()  # zero-copy from the file
        assert not view.flags.writeable and np.array_equal(view, tensors["conv.weight"].numpy())
        del view


def _file(tmp_path, header, data=b"", name="x.safetensors", raw=False):
    h = header if raw else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


F32_2x3 = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}


@pytest.mark.parametrize("header, data, message", [
    ({"a": {**F32_2x3, "data_offsets": [0, 20]}}, bytes(20), r"tensor 'a': 20 bytes for a float32 tensor of shape "
                                                              r"\[2, 3\], which needs 24"),
    ({"a": F32_2x3, "b": {"dtype": "F32", "shape": [1], "data_offsets": [28, 32]}}, bytes(32),
     r"tensor 'b': data_offsets \[28, 32\] leave a hole or overlap \(the previous tensor ends at 24\)"),
    ({"a": F32_2x3, "b": {"dtype": "F32", "shape": [1], "data_offsets": [20, 24]}}, bytes(24), "hole or overlap"),
    ({"a": F32_2x3}, bytes(25), "cover 24 bytes of data but the file holds 25"),
    ({"a": F32_2x3}, bytes(23), "cover 24 bytes of data but the file holds 23"),
    ({"a": {**F32_2x3, "dtype": "X32"}}, bytes(24), "unknown or unsupported dtype 'X32'"),
    ({"a": {**F32_2x3, "shape": [-2, 3]}}, bytes(24), "a dimension must be a non-negative integer, got -2"),
    ({"a": {**F32_2x3, "shape": [2.0, 3]}}, bytes(24), "got 2.0"),
    ({"a": {**F32_2x3, "shape": [True, 3]}}, bytes(24), "got True"),
    ({"a": {"dtype": "F32", "shape": [2, 3]}}, bytes(24), "missing field 'data_offsets'"),
    ({"a": {**F32_2x3, "data_offsets": [0, 24, 3]}}, bytes(24), "a list of two integers"),
    ({"a": F32_2x3, "__metadata__": {"n": 1}}, bytes(24), "__metadata__ must map strings to strings"),
    ([1], b"", "not a JSON object"),
    ({"a": 5}, b"", "expected an object"),
])
def test_headers_the_reference_refuses_are_refused_naming_the_problem(tmp_path, header, data, message):
    path = _file(tmp_path, header, data)
    with pytest.raises(Exception):
        reference_load(path.read_bytes())
    with pytest.raises(TorchError, match=f"x.safetensors: .*{message}"):
        pytorch.open_weights(path)


def test_header_framing(tmp_path):
    ok = json.dumps({"a": F32_2x3}).encode()
    cases = {
        "too large": (struct.pack("<Q", 100_000_001) + b"{" + bytes(64), "larger than the limit of 100000000"),
        "past the end": (struct.pack("<Q", 500) + ok, "header of 500 bytes runs past the end"),
        "not utf-8": (struct.pack("<Q", 6) + b'{"\xff":}', "invalid safetensors header: 'utf-8' codec"),
        "not json": (struct.pack("<Q", 6) + b"{nope}", "invalid safetensors header"),
        "trailing NUL": (struct.pack("<Q", len(ok) + 1) + ok + b"\x00" + bytes(24), "invalid safetensors header"),
        "NaN": (struct.pack("<Q", 12) + b'{"a": NaN}  ', "NaN is not JSON"),
        "twice": (struct.pack("<Q", 2 * len(ok)) + ok[:-1] + b", " + ok[1:] + b" " + bytes(24), "appears twice"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / "h.safetensors"
        path.write_bytes(data)
        with pytest.raises(TorchError, match=message):
            pytorch.open_weights(path)


def test_what_the_reference_accepts_is_accepted(tmp_path):
    """Padding spaces, extra fields in an entry, empty tensors at the end, a null __metadata__, no tensors."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    cases = [
        (b'{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "extra": 1}}     ', a.tobytes()),
        (b'{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": null}\n', a.tobytes()),
        (b'{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},'
         b' "e": {"dtype": "F16", "shape": [0, 4], "data_offsets": [24, 24]}}', a.tobytes()),
    ]
    for header, data in cases:
        path = _file(tmp_path, header, data, raw=True)
        ref = reference_load(path.read_bytes())
        got = pytorch.read_state_dict(path)
        assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    path = _file(tmp_path, {}, b"", name="empty.safetensors")
    assert reference_load(path.read_bytes()) == {}
    with pytest.raises(TorchError, match="no state_dict found"):  # a weights file with no tensors
        pytorch.open_weights(path)


def test_numpy_written_files_and_tensor_sizes(tmp_path):
    arrays = {"w": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32),
              "i": np.arange(4, dtype=np.int32)}
    save_file(arrays, tmp_path / "n.safetensors")
    got = pytorch.read_state_dict(tmp_path / "n.safetensors")
    assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in arrays.items())
