"""The fuzz targets: one module per loader, listed in TARGETS.

A target module defines

    def target(data: bytes, tmp: Path) -> None   # writes data as its input file(s) in tmp and loads it;
                                                 # outputs go to tmp / "out"; raises only kindling errors
    def seeds() -> list[bytes]                   # real files and small generated ones to mutate
    TOKENS = [b"...", ...]                       # optional: words of the format worth inserting
    NESTING = [b"{", ...]                        # optional: what nests in the format
    def structured(rng, data) -> bytes           # optional: a mutation that knows the format (half the inputs)

and one line here adds it to every campaign.
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

# The project's real fixtures live in ../shared beside the repository (as in CI).
FIXTURES = Path(__file__).resolve().parents[4] / "shared" / "fixtures"
LENET = FIXTURES / "caffe" / "lenet_mnist"

TARGETS = {
    "prototxt": "prototxt",
    "caffemodel": "caffemodel",
    "kdl": "kdl",
    "labels": "labels",
    "mean": "mean",
    "images": "images",
    "tf_graph": "tf_graph",
    "onnx_model": "onnx_model",
    "torch_weights": "torch_weights",
}


def load(name: str):
    return import_module(f"{__package__}.{TARGETS[name]}")


def run_command(argv: list[str]) -> None:
    """A kindling command run in this process as the CLI runs it, but with its exceptions raised
    (the harness sorts them) and its summary not printed."""
    import contextlib
    import io

    from kindling.cli import build_parser
    args = _parser(build_parser).parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        args._run(args)


_PARSER = []


def _parser(build):
    if not _PARSER:
        _PARSER.append(build())
    return _PARSER[0]


def selected(data: bytes, choices: list):
    """The first byte picks one of ``choices`` (a seed's file kind, a net); the rest is the file."""
    return (choices[data[0] % len(choices)], data[1:]) if data else (choices[0], b"")
