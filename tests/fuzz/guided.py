"""Coverage-guided fuzzing of one target with atheris (libFuzzer): kindling's code is instrumented,
so inputs that reach new branches are kept and mutated further. The long counting campaign is
python -m tests.fuzz; this explores deeper from the same seeds and stops at the first bad input,
which libFuzzer writes as crash-<hash> (replay it with python -m tests.fuzz --replay FILE
--targets TARGET).

    python -m tests.fuzz.guided prototxt [CORPUS_DIR] -runs=100000 -rss_limit_mb=2048 -timeout=10

libFuzzer's own limits stand in for the forked workers': -rss_limit_mb and -malloc_limit_mb for
memory, -timeout (seconds per input) for hangs. CORPUS_DIR (default: a new folder) is filled with
the target's seeds when empty.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KINDLING_NUM_THREADS", "1")
os.environ.setdefault("KINDLING_BLAS", "openblas")

import atheris  # noqa: E402

with atheris.instrument_imports(include=["kindling"]):
    # everything the targets reach, imported now: a module imported later would not be instrumented
    import kindling.converters.caffe
    import kindling.runtime.data
    import kindling.runtime.format
    import kindling.runtime.npy
    from kindling.cli import build_parser
    from kindling.runtime import nn

    build_parser()  # imports every command
    for _layer in nn.LAYERS:
        nn.layer_type(_layer)
    from .engine import classify
    from .targets import TARGETS, load


class BadInput(Exception):
    """An input the counting campaign would call bad: libFuzzer keeps it as a crash."""


def main(argv: list[str]) -> None:
    args = [a for a in argv[1:] if not a.startswith("-")]
    if not args or args[0] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.guided TARGET [CORPUS_DIR] [libFuzzer flags]; targets: "
                 f"{', '.join(TARGETS)}")
    mod = load(args[0])
    corpus = Path(args[1]) if len(args) > 1 else Path(tempfile.mkdtemp(prefix=f"kindling-{args[0]}-corpus-"))
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(mod.seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
    def one_input(data: bytes) -> None:
        # libFuzzer ends the process with exit(): nothing may be left for an atexit hook to remove
        tmp = Path(tempfile.mkdtemp(prefix="kindling-guided-"))
        try:
            result = classify(mod.target, data, tmp)
        finally:
            for p in sorted(tmp.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            tmp.rmdir()
        if result.outcome == "bad":
            raise BadInput(f"{result.kind}: {result.detail}")

    flags = [a for a in argv if a.startswith("-")]
    atheris.Setup([argv[0], *flags, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
