"""Malicious pickles: files whose unpickling would run code are refused, naming what they ask for,
and a canary file proves that nothing ran. Each payload is placed where torch.save files carry
pickles: the zip format's data.pkl, and the legacy format's pickle stream."""
import io
import os
import pickle
import subprocess
import sys
import zipfile

import pytest

from kindling.converters import pytorch
from kindling.converters.pytorch import TorchError


class Payload:
    """Unpickling this calls ``fn(*args)``: the classic __reduce__ attack."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def attacks(canary):
    touch = f"open({str(canary)!r}, 'w').write('ran')"
    return {
        "os.system": (Payload(os.system, f"touch {canary}"), ["os.system", "posix.system"]),
        "builtins.eval": (Payload(eval, touch), ["builtins.eval"]),
        "builtins.exec": (Payload(exec, touch), ["builtins.exec"]),
        "subprocess.Popen": (Payload(subprocess.Popen, ["touch", str(canary)]), ["subprocess.Popen"]),
        "builtins.__import__": (Payload(__import__, "os"), ["builtins.__import__"]),
    }


def zip_file(path, obj, protocol):
    """A torch.save-shaped archive whose data.pkl pickles ``obj`` (next to a real tensor record)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=protocol))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


def legacy_file(path, obj, protocol):
    buf = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, buf, protocol=2)
    pickle.dump(obj, buf, protocol=protocol)
    pickle.dump([], buf, protocol=2)
    path.write_bytes(buf.getvalue())
    return path


WRITERS = {"zip": zip_file, "legacy": legacy_file}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("fmt", WRITERS)
def test_reduce_payloads_are_refused_by_name_and_nothing_runs(tmp_path, fmt, protocol):
    canary = tmp_path / "canary"
    for name, (payload, names) in attacks(canary).items():
        path = WRITERS[fmt](tmp_path / f"{name}.pt", {"fc.weight": payload}, protocol)
        with pytest.raises(TorchError) as e:
            pytorch.open_weights(path)
        message = str(e.value)
        assert str(path) in message and "refused to load" in message and "runs nothing" in message
        assert any(n in message for n in names), message
        assert not canary.exists(), f"{name} ran"


def test_every_refused_global_is_named_at_once_before_anything_is_built(tmp_path):
    canary = tmp_path / "canary"
    obj = {"a": Payload(os.system, f"touch {canary}"), "b": Payload(eval, "1"),
           "c": Payload(subprocess.Popen, ["true"])}
    path = zip_file(tmp_path / "many.pt", obj, 2)
    with pytest.raises(TorchError, match=r"refused to load builtins\.eval, posix\.system, subprocess\.Popen:"):
        pytorch.open_weights(path)
    assert not canary.exists()


def test_the_gate_holds_even_where_the_scan_cannot_see_the_names(tmp_path):
    """STACK_GLOBAL taking its names from a dict lookup is not something pickle writes, so the
    scan cannot name it; find_class still refuses it when the unpickler reaches it."""
    canary = tmp_path / "canary"
    # "posix" and "system" pushed, then a None pushed and popped: the scan loses track of the strings
    data = (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94N0\x93"
            + b"\x8c" + bytes([len(f"touch {canary}")]) + f"touch {canary}".encode() + b"\x85R.")
    path = tmp_path / "hidden.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
    with pytest.raises(TorchError, match=r"refused to load posix\.system"):
        pytorch.open_weights(path)
    assert not canary.exists()


def test_extension_codes_are_refused(tmp_path):
    """EXT1 fetches a global from copyreg's registry (and CPython caches it past find_class)."""
    path = tmp_path / "ext.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02\x82\x01N\x85R.")
    with pytest.raises(TorchError, match=r"copyreg extension codes \(EXT1\)"):
        pytorch.open_weights(path)


def test_a_whole_model_pickle_is_refused_with_the_fix(torch, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(TorchError, match=r"refused to load .*torch\.nn\.modules\.container\.Sequential.*"
                                         r"torch\.save\(model\.state_dict\(\), path\)"):
        pytorch.open_weights(tmp_path / "model.pt")


def test_a_huge_memo_index_is_refused_before_the_unpickler_allocates_it(tmp_path):
    """CPython's unpickler grows its memo table to the index a LONG_BINPUT gives: 2**31 entries
    would be 16 GB, zero-filled."""
    data = b"\x80\x02N" + b"r" + (2**31).to_bytes(4, "little") + b"."
    path = tmp_path / "memo.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
    with pytest.raises(TorchError, match=r"memo index 2147483648"):
        pytorch.open_weights(path)


class _Storage:
    """Pickled as torch.save pickles a storage: a persistent id."""


class _Pickler(pickle.Pickler):
    def __init__(self, f, torch):
        super().__init__(f, protocol=2)
        self.torch = torch

    def persistent_id(self, obj):
        return ("storage", self.torch.FloatStorage, "0", "cpu", 2) if isinstance(obj, _Storage) else None


def test_objects_handed_to_the_pickle_cannot_be_rewritten_by_build(torch, tmp_path):
    """BUILD sets attributes on the object below it: on a tensor record it would move its offset."""
    from collections import OrderedDict

    class Tampered:
        def __reduce__(self):
            args = (_Storage(), 0, (2,), (1,), False, OrderedDict())
            return torch._utils._rebuild_tensor_v2, args, {"offset": 10**9}

    buf = io.BytesIO()
    _Pickler(buf, torch).dump({"w": Tampered()})
    with zipfile.ZipFile(tmp_path / "built.pt", "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", bytes(8))
    with pytest.raises(TorchError, match="tries to set the state of a TensorRecord"):
        pytorch.open_weights(tmp_path / "built.pt")


def test_reading_a_malicious_file_never_imports_or_runs_torch(tmp_path):
    """In a fresh interpreter where importing torch fails: the refusal still comes, as a TorchError."""
    canary = tmp_path / "canary"
    path = zip_file(tmp_path / "evil.pt", {"w": Payload(os.system, f"touch {canary}")}, 2)
    code = f"""
import sys
class Block:
    def find_spec(self, name, *a):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from kindling.converters import pytorch
try:
    pytorch.open_weights({str(path)!r})
except pytorch.TorchError as e:
    print("refused:", e)
print("torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "posix.system" in r.stdout and r.stdout.strip().endswith("False")
    assert not canary.exists()
