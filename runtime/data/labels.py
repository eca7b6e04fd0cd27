"""Class labels as a text file, one class per line, in class-index order: what Caffe's
synset_words.txt and most zoo releases ship, and what ``kindling train`` leaves beside its
snapshots so another run (or a person) can use the same classes in the same order."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

# ImageNet-21k's synset list is 0.6 MB; a labels file hundreds of times that is something else.
MAX_BYTES = 64 << 20


def read_labels(path, unique: bool = True) -> list[str]:
    """The non-blank lines, stripped (a synset line such as "n01440764 tench, Tinca tinca" stays
    whole). A byte-order mark and Windows line ends are taken as they come. With ``unique``, a
    repeated label is an error naming its lines: classes matched to folders by name cannot share
    one (display names may: ImageNet's short names hold "crane" twice, so conversion passes False)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DataError(f"{path}: {size:,} bytes is too large for a labels file (at most {MAX_BYTES >> 20} MB)")
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read the labels file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {e.object[e.start]:#04x}); save the labels "
                        f"file as UTF-8") from e
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: the labels file has no labels")
    first: dict[str, int] = {}
    for n, label in lines if unique else ():
        if label in first:
            raise DataError(f"{path}: label {label!r} appears twice (lines {first[label]} and {n})")
        first[label] = n
    return [label for _, label in lines]


def write_labels(path, labels) -> Path:
    """Writes the labels one per line, atomically (a temp file renamed into place)."""
    path = Path(path)
    bad = [label for label in labels if "\n" in label or "\r" in label or label != label.strip() or not label]
    if bad:
        raise DataError(f"{path}: labels cannot be blank, hold line breaks or start or end with spaces: {bad[:3]}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
        raise
    return path
