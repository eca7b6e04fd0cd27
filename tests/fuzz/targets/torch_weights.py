"""`kindling convert torch --weights W --model-def tests/torch_nets.py:kindling_lenet`: the restricted
unpickler, the zip and legacy torch.save formats, .safetensors headers, storages, views and dtypes,
and weights by name into a model. The first byte picks the file kind; the seeds are a LeNet state
dict saved by torch itself in each format (and a checkpoint holding one)."""
from __future__ import annotations

import io
from pathlib import Path

from . import run_command, selected

NETS = Path(__file__).resolve().parents[2] / "torch_nets.py"
KINDS = [".pt", ".pt", ".pt", ".safetensors"]  # zip, legacy, checkpoint, safetensors

TOKENS = [b"torch._utils\n_rebuild_tensor_v2", b"torch\nFloatStorage", b"collections\nOrderedDict", b"os\nsystem",
          b"builtins\neval", b"data.pkl", b"PK\x03\x04", b"conv1.weight", b"\"dtype\":\"F32\"",
          b"\"data_offsets\":[0,", b"\"shape\":[2147483648]"]

_SEEDS: list[bytes] = []


def seeds() -> list[bytes]:
    if not _SEEDS:
        import importlib.util

        import torch
        from safetensors.torch import save as save_safetensors
        spec = importlib.util.spec_from_file_location("torch_nets", NETS)
        torch_nets = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(torch_nets)
        torch.manual_seed(0)
        state = torch_nets.torch_lenet(torch).state_dict()
        for i, save in enumerate([lambda f: torch.save(state, f),
                                  lambda f: torch.save(state, f, _use_new_zipfile_serialization=False),
                                  lambda f: torch.save({"epoch": 3, "state_dict": state}, f)]):
            buf = io.BytesIO()
            save(buf)
            _SEEDS.append(bytes([i]) + buf.getvalue())
        _SEEDS.append(bytes([3]) + save_safetensors({k: v.contiguous() for k, v in state.items()}))
    return list(_SEEDS)


def target(data: bytes, tmp) -> None:
    kind, body = selected(data, KINDS)
    path = tmp / f"weights{kind}"
    path.write_bytes(body)
    run_command(["convert", "torch", "--weights", str(path), "--model-def", f"{NETS}:kindling_lenet",
                 "-o", str(tmp / "out" / "model.kdl")])
