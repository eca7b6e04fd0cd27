"""`kindling convert tf --graph frozen.pb`: the GraphDef wire reader (weights left in the file and
read in bands), node parsing, constant folding, patterns and translators. Seeds: the committed
frozen graphs (MobileNetV2/V3, Keras 3 blocks, a TF1 graph, the known traps)."""
from __future__ import annotations

from pathlib import Path

from . import run_command

GRAPHS = Path(__file__).resolve().parents[2] / "fixtures" / "tensorflow"

TOKENS = [b"Conv2D", b"MatMul", b"Placeholder", b"Const", b"Identity", b"^NoOp", b"SAME", b"VALID", b"NHWC",
          b"strides", b"dilations", b"value", b"dtype", b"shape", b":0", b":1"]


def seeds() -> list[bytes]:
    small = sorted(GRAPHS.glob("*.pb"), key=lambda p: p.stat().st_size)
    return [p.read_bytes() for p in small[:6]]  # the traps and blocks; the applications are slow to mutate


def target(data: bytes, tmp) -> None:
    path = tmp / "frozen.pb"
    path.write_bytes(data)
    run_command(["convert", "tf", "--graph", str(path), "-o", str(tmp / "out" / "model.kdl")])
