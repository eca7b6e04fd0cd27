"""Fuzzing the readers with mutated real files (made here with torch and safetensors): a file either
reads or fails with kindling's TorchError, never with another exception, a hang or an allocation out
of proportion to the file. For safetensors the verdict must also match the reference implementation.

Each format gets a fixed time budget; the seed and the mutation are in the failure message."""
import random
import time

import numpy as np
import pytest
from safetensors.torch import load as reference_load
from safetensors.torch import save_file

from kindling.converters import pytorch
from kindling.converters.pytorch import TorchError

BUDGET_SECONDS = 4.0
SLOW_SECONDS = 5.0  # one small file taking this long is a hang, not a slow machine


def originals(torch, tmp_path) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, generator=g)
    sd = {"conv.weight": torch.randn(4, 2, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
          "bn.running_mean": torch.randn(4, generator=g), "bn.num_batches_tracked": torch.tensor(3),
          "half": torch.randn(6, generator=g).half(), "bf16": torch.randn(3, 2, generator=g).bfloat16(),
          "view": base[1:, ::2], "base": base, "t": base.t()}
    out = {}
    torch.save(sd, tmp_path / "zip.pt")
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items() if k not in ("view", "t")}, tmp_path / "st.safetensors")
    for name in ("zip.pt", "legacy.pt", "st.safetensors"):
        out[name] = (tmp_path / name).read_bytes()
    return out


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "bytes", "truncate", "insert", "delete", "digits"])
    # Structure sits at the start (pickle, header) and, in a zip, at the end (central directory).
    pos = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 1500)),
                      max(0, len(data) - 1 - rng.randrange(min(len(data), 300)))])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[pos] ^= 1 << rng.randrange(8)
            pos = min(len(data) - 1, pos + rng.randrange(16))
    elif kind == "bytes":
        n = rng.randint(1, 8)
        data[pos:pos + n] = bytes(rng.randrange(256) for _ in range(n))
    elif kind == "truncate":
        del data[pos:]
    elif kind == "insert":
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == "delete":
        del data[pos:pos + rng.randint(1, 8)]
    else:  # a digit in a JSON header or a length field: sizes and offsets
        digits = [i for i, b in enumerate(data[:2000]) if 48 <= b <= 57]
        if digits:
            pos = rng.choice(digits)
            data[pos] = rng.choice(b"0123456789")
    return bytes(data), f"{kind} at {pos}"


def read_all(path):
    """Everything a user can ask of the file."""
    with pytorch.open_weights(path) as w:
        return {k: t.numpy() for k, t in w.items()}


def _ours(path):
    try:
        return read_all(path), None
    except TorchError as e:
        return None, e


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "st.safetensors"])
def test_mutated_files_read_or_fail_with_kindlings_error(torch, tmp_path, name):
    data = originals(torch, tmp_path)[name]
    rng = random.Random(f"fuzz-{name}")
    path = tmp_path / f"mutated-{name}"
    start, cases, outcomes = time.perf_counter(), 0, {"read": 0, "refused": 0}
    while time.perf_counter() - start < BUDGET_SECONDS:
        mutated, how = mutate(data, rng)
        path.write_bytes(mutated)
        t0 = time.perf_counter()
        try:
            got, error = _ours(path)
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name}, case {cases} ({how}): {type(e).__name__}: {e}")
        assert time.perf_counter() - t0 < SLOW_SECONDS, f"{name}, case {cases} ({how}) took too long"
        outcomes["read" if error is None else "refused"] += 1
        if name.endswith(".safetensors"):
            _agrees_with_reference(mutated, got, error, f"{name}, case {cases} ({how})")
        cases += 1
    assert cases >= 100 and outcomes["refused"] > 0, (cases, outcomes)


def _agrees_with_reference(data: bytes, got, error, where: str):
    try:
        ref = reference_load(data)
    except Exception as ref_error:  # noqa: BLE001 - whatever the reference raises
        assert error is not None, f"{where}: the reference refuses ({ref_error}), kindling read it"
        return
    if error is not None:
        # kindling is stricter only where it says so: a key given twice, or a dtype it does not read
        assert "appears twice" in str(error) or "not supported" in str(error) or "unsupported" in str(error) \
               or "no state_dict" in str(error), f"{where}: the reference reads it, kindling: {error}"
        return
    assert sorted(got) == sorted(ref), where
    for k, t in ref.items():
        want = (t.float() if t.is_floating_point() else t).numpy()
        assert np.array_equal(got[k], want, equal_nan=t.is_floating_point()), f"{where}: {k}"
