"""torch.save files read without torch, against torch.load of the same file: dtypes, views, shared
storages, byte order, the legacy format, checkpoints and wrapper prefixes."""
import io
import zipfile

import numpy as np
import pytest

from kindling.converters import pytorch
from kindling.converters.pytorch import TorchError

FORMATS = {"zip": True, "legacy": False}


def save(torch, obj, path, fmt="zip"):
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return path


def expected(torch, t) -> np.ndarray:
    """What kindling should give for a tensor: float32 for floating types, else as stored."""
    return (t.float() if t.is_floating_point() else t).contiguous().numpy()


def assert_same(torch, got: dict, want: dict):
    assert list(got) == list(want)
    for k, t in want.items():
        e = expected(torch, t)
        assert got[k].dtype == e.dtype and got[k].shape == e.shape, k
        assert np.array_equal(got[k], e), k


@pytest.fixture
def varied(torch):
    """A state_dict with every dtype kindling reads, views of all kinds and shared storages."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32), "u8": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
        "slice": base[2:5, 1::3],              # storage offset and strides
        "transposed": base.t(),                # shares base's storage
        "base": base,
        "column": base[:, 4],
        "expanded": torch.randn(3, 1, generator=g).expand(3, 4),  # stride 0
        "half_view": torch.randn(4, 4, generator=g).half()[1:, ::2],
        "bf16_view": torch.randn(4, 4, generator=g).bfloat16().t(),
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_view_and_shared_storage_reads_as_torch_load_gives_it(torch, tmp_path, varied, fmt):
    path = save(torch, varied, tmp_path / "w.pt", fmt)
    assert_same(torch, pytorch.read_state_dict(path), torch.load(path))
    with pytorch.open_weights(path) as w:
        assert w.format == f"torch.save {fmt}"
        assert w["transposed"].storage is w["base"].storage is w["slice"].storage  # one storage, read per view
        assert w["slice"].offset == 15 and w["slice"].stride == (7, 3)


def test_a_state_dict_of_parameters_as_modules_save_it(torch, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    path = save(torch, model.state_dict(), tmp_path / "m.pt")
    got = pytorch.read_state_dict(path)
    assert_same(torch, got, model.state_dict())
    assert got["1.num_batches_tracked"].dtype == np.int64


def test_parameters_with_python_state_and_mapped_views(torch, tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 3))
    p.note = "a Python attribute: saved through _rebuild_parameter_with_state"
    path = save(torch, {"p": p, "t": torch.randn(2, 5)}, tmp_path / "p.pt")
    with pytorch.open_weights(path) as w:
        assert np.array_equal(w["p"].numpy(), p.detach().numpy())
        view = w["t"].mapped()
        assert not view.flags.writeable and np.array_equal(view, torch.load(path)["t"].numpy())
        del view


def _rewritten(src, dst, change):
    """A copy of a torch zip with ``change(name, data) -> data`` applied to each record."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info)))
    return dst


def test_a_big_endian_file_reads_as_torch_reads_it(torch, tmp_path, varied):
    """torch.save on a big-endian machine writes byteorder 'big' and big-endian storages."""
    sd = {k: varied[k] for k in ("f32", "f16", "bf16", "f64", "i64", "slice", "base")}
    src = save(torch, sd, tmp_path / "le.pt")
    itemsize = {k: t.element_size() for k, t in sd.items()}
    sizes = {}
    with pytorch.open_weights(src) as w:
        for k, t in w.items():
            sizes[t.storage.name.rsplit("/", 1)[-1]] = itemsize[k]

    def swap(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        key = name.rsplit("/", 1)[-1]
        if "/data/" in name and sizes.get(key, 1) > 1:
            return np.frombuffer(data, f"<u{sizes[key]}").byteswap().tobytes()
        return data

    dst = _rewritten(src, tmp_path / "be.pt", swap)
    assert_same(torch, pytorch.read_state_dict(dst), torch.load(dst))
    assert_same(torch, pytorch.read_state_dict(dst), sd)


def test_compressed_records_are_read_and_checked(torch, tmp_path, varied):
    src = save(torch, {"f32": varied["f32"], "slice": varied["slice"]}, tmp_path / "w.pt")
    dst = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    assert_same(torch, pytorch.read_state_dict(dst), torch.load(src))
    with pytest.raises(TorchError, match="stored compressed"), pytorch.open_weights(dst) as w:
        w["f32"].mapped()


def test_a_flipped_bit_in_a_storage_fails_its_crc(torch, tmp_path):
    path = save(torch, {"w": torch.ones(64)}, tmp_path / "w.pt")
    with pytorch.open_weights(path) as w:
        offset = w["w"].storage.offset
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(TorchError, match=r"w\.pt: tensor 'w': w/data/0 is corrupt: its CRC-32"):
        pytorch.read_state_dict(path)


def test_files_saved_without_crcs_read(torch, tmp_path, varied):
    """torch.serialization.set_crc32_options(False) writes 0 for every record's CRC-32."""
    torch.serialization.set_crc32_options(False)
    try:
        path = save(torch, varied, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(path) as z:
        assert {i.CRC for i in z.infolist()} == {0}
    assert_same(torch, pytorch.read_state_dict(path), torch.load(path))


# ---- checkpoints and prefixes -------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["state_dict", "model", "net", "model_state_dict"])
def test_a_checkpoint_gives_its_state_dict_with_a_note(torch, tmp_path, key):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = {"epoch": 90, "arch": "resnet18", key: model.state_dict(), "best_acc1": torch.tensor(71.2),
            "optimizer": opt.state_dict(), "config": {"lr": 0.1, "milestones": [30, 60], "betas": (0.9, 0.99)},
            "numpy_scalars": [np.float64(0.5), np.int64(3), np.float32(1.25)], "numpy_array": np.arange(6.0).reshape(2, 3),
            "blob": b"\x00\x01bytes", "classes": {"cat", "dog"}, "complex": 1 + 2j, "device": torch.device("cpu")}
    path = save(torch, ckpt, tmp_path / "ckpt.pth")
    with pytorch.open_weights(path) as w:
        assert sorted(w) == ["bias", "weight"]
        assert w.notes[0].startswith(f"took the state_dict under {key!r} (the file also holds epoch, arch")
        assert np.array_equal(w["weight"].numpy(), model.weight.detach().numpy())


@pytest.mark.parametrize("fmt", FORMATS)
def test_dataparallel_and_compile_prefixes_are_stripped_with_a_note(torch, tmp_path, fmt):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    wrapped = torch.nn.DataParallel(model)
    path = save(torch, {"state_dict": wrapped.state_dict()}, tmp_path / "dp.pt", fmt)
    with pytorch.open_weights(path) as w:
        assert sorted(w) == ["0.bias", "0.weight"]
        assert "stripped DataParallel's 'module.' prefix from 2 keys" in w.notes
    compiled = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    path = save(torch, compiled, tmp_path / "compiled.pt", fmt)
    with pytorch.open_weights(path) as w:
        assert sorted(w) == ["0.bias", "0.weight"] and "torch.compile's" in w.notes[0]


def test_key_picks_a_checkpoint_entry_and_a_file_without_a_state_dict_says_what_it_holds(torch, tmp_path):
    ema, raw = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    path = save(torch, {"ema_weights": ema.state_dict(), "raw": raw.state_dict(), "step": 3}, tmp_path / "c.pt")
    with pytest.raises(TorchError, match=r"c\.pt: no state_dict found: the file holds a dict with keys "
                                         r"'ema_weights', 'raw', 'step'.*key=\.\.\."):
        pytorch.open_weights(path)
    got = pytorch.read_state_dict(path, key="ema_weights")
    assert np.array_equal(got["weight"], ema.weight.detach().numpy())
    with pytest.raises(TorchError, match=r"no entry 'ema' in the file \(it holds 'ema_weights', 'raw', 'step'\)"):
        pytorch.open_weights(path, key="ema")
    path = save(torch, [torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(TorchError, match=r"list\.pt: no state_dict found: the file holds a list"):
        pytorch.open_weights(path)


def test_non_tensor_entries_of_a_state_dict_are_skipped_with_a_note(torch, tmp_path):
    path = save(torch, {"w": torch.ones(2), "_extra_state": {"fp8": 1}, "version": 2}, tmp_path / "x.pt")
    with pytorch.open_weights(path) as w:
        assert list(w) == ["w"] and w.notes == ["skipped 2 entries that are not tensors: _extra_state, version"]


# ---- files that are something else ------------------------------------------------------------------
def test_other_files_are_named_for_what_they_are(torch, tmp_path):
    cases = {
        "model.h5": (b"\x89HDF\r\n\x1a\n" + bytes(100), "an HDF5 file"),
        "notes.txt": (b"hello world, not weights", "not a PyTorch .* or safetensors file .*starts with b'hello"),
        "empty.pt": (b"", "not a PyTorch"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(TorchError, match=f"{name}: {message}"):
            pytorch.open_weights(tmp_path / name)
    with pytest.raises(TorchError, match="cannot read"):
        pytorch.open_weights(tmp_path / "missing.pt")


def test_torchscript_and_tar_files_are_refused_with_what_to_do(torch, tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, tmp_path / "scripted.pt")
    with pytest.raises(TorchError, match=r"TorchScript archive \(torch\.jit\.save\).*model\.state_dict\(\)"):
        pytorch.open_weights(tmp_path / "scripted.pt")
    import tarfile
    with tarfile.open(tmp_path / "old.pt", "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pickle")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x80\x02N."))
    with pytest.raises(TorchError, match=r"old\.pt: a tar-format torch file \(PyTorch before 0\.4\)"):
        pytorch.open_weights(tmp_path / "old.pt")


def test_a_truncated_file_names_the_file(torch, tmp_path, varied):
    for fmt in FORMATS:
        path = save(torch, {"base": varied["base"], "f32": varied["f32"]}, tmp_path / f"{fmt}.pt", fmt)
        data = path.read_bytes()
        for cut in (len(data) // 3, len(data) - 40, 30):
            path.write_bytes(data[:cut])
            with pytest.raises(TorchError, match=f"{fmt}.pt"):
                pytorch.read_state_dict(path)


def test_wrong_storage_sizes_and_views_past_their_storage_name_the_tensor(torch, tmp_path):
    path = save(torch, {"fc.weight": torch.ones(4, 4), "fc.bias": torch.ones(4)}, tmp_path / "w.pt")
    short = _rewritten(path, tmp_path / "short.pt", lambda n, d: d[:-4] if n.endswith("/data/1") else d)
    with pytest.raises(TorchError, match=r"short\.pt: tensor 'fc\.bias': storage w/data/1 holds 12 bytes, the "
                                         r"pickle expects 4 x float32 = 16"):
        pytorch.open_weights(short)
    missing = tmp_path / "missing.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(missing, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/0"):
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(TorchError, match=r"tensor 'fc\.weight': its storage record w/data/0 is missing"):
        pytorch.open_weights(missing)
    # a view whose strides reach past its storage: the pickle edited, the bytes left as they are
    big = torch.ones(4, 4)
    path = save(torch, {"v": big[:, :2]}, tmp_path / "v.pt")
    edited = _rewritten(path, tmp_path / "past.pt",
                        lambda n, d: d.replace(b"K\x04K\x01\x86", b"K\x09K\x01\x86") if n.endswith("data.pkl") else d)
    with pytest.raises(TorchError, match=r"past\.pt: tensor 'v': a float32 view of shape \[4, 2\] \(strides \[9, 1\], "
                                         r"offset 0\) needs 116 bytes, its storage v/data/0 has 64"):
        pytorch.open_weights(edited)


def test_unreadable_dtypes_open_but_fail_on_reading_naming_the_tensor(torch, tmp_path):
    path = save(torch, {"ok": torch.ones(2), "f8": torch.ones(2).to(torch.float8_e4m3fn),
                        "c": torch.ones(2, dtype=torch.complex64)}, tmp_path / "w.pt")
    with pytorch.open_weights(path) as w:
        assert w["ok"].numpy().tolist() == [1, 1]
        with pytest.raises(TorchError, match=r"w\.pt: tensor 'f8': dtype float8_e4m3fn is not supported"):
            w["f8"].numpy()
        with pytest.raises(TorchError, match=r"tensor 'c': dtype complex64 is not supported"):
            w["c"].numpy()
