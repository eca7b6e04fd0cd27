"""Data sets: a folder of class sub-folders of images (the Caltech-256 layout), or arrays."""
from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

log = logging.getLogger("kindling.data")

# What a root that is not a folder of class sub-folders is, said plainly.
ROOT_PROBLEMS = ((lambda p: not p.exists(), "no such folder"),
                 (lambda p: not p.is_dir(), "a file, not a folder of class sub-folders"))


def _hidden(name: str) -> bool:
    """Names starting with "." are the file system's, not the user's: .DS_Store, macOS's ._AppleDouble
    twins of every copied image (which end in .jpg but are not images), .ipynb_checkpoints, .git."""
    return name.startswith(".")


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) anywhere under ``folder``, as torchvision's ImageFolder and Keras's
    image_dataset_from_directory find them: sub-folders too, symlinks followed, sorted by path;
    hidden names skipped."""
    images, others, seen = [], [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a symlink back up the tree: walked already
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for f in files:
            if not _hidden(f):
                (images if Path(f).suffix.lower() in IMAGE_SUFFIXES else others).append(Path(top) / f)
    return sorted(images), others


def _class_folders(root: Path) -> list[str]:
    for bad, problem in ROOT_PROBLEMS:
        if bad(root):
            raise DataError(f"{root}: {problem}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    if not folders:
        loose = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir())
        raise DataError(f"{root}: no class sub-folders: images go in {root / '<class>'}/"
                         + (f" ({loose} images lie directly in {root})" if loose else ""))
    return folders


class DataSet:
    """``len(ds)``, ``ds.label(i)``, ``ds.load(i, rng) -> (array, label)``, ``ds.name(i)``."""
    labels: list[str] = []
    name = "dataset"

    def __len__(self):
        raise NotImplementedError

    def label(self, i: int) -> int:
        raise NotImplementedError

    def load(self, i: int, rng=None):
        raise NotImplementedError

    def source(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def split(self, val_fraction: float, seed: int = 0) -> tuple["Subset", "Subset"]:
        """A stratified (train, validation) split: each class split in the same proportion."""
        train, val = stratified_split([self.label(i) for i in range(len(self))], val_fraction, seed)
        return Subset(self, train, "train"), Subset(self, val, "validation")


def stratified_split(labels, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) indices, each sorted: every class split in the same proportion, the
    choice a function of the seed (the same for a local folder and a Spark DataFrame of it)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"split: val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * val_fraction))
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def _nfc(name: str) -> str:
    """Folder names in one Unicode form: macOS writes "é" decomposed (NFD), Linux tools composed
    (NFC), so labels saved on one must still match folders copied from the other."""
    return unicodedata.normalize("NFC", name)


class ImageFolder(DataSet):
    """root/<class>/[...]/<image>: classes are the sub-folder names in sorted order (or ``labels``);
    images may sit in nested folders of a class. Hidden files and folders are skipped, other
    non-image files ignored with one note; an empty class folder stays a class, with a warning."""

    def __init__(self, root, pipeline, labels: list[str] | None = None):
        self.root = Path(root)
        folders = _class_folders(self.root)
        self.labels = list(labels) if labels else [_nfc(d) for d in folders]
        index = {_nfc(name): i for i, name in enumerate(self.labels)}
        unknown = sorted(d for d in folders if _nfc(d) not in index)
        if unknown:
            raise DataError(f"{self.root}: class folders {unknown} are not among the labels {self.labels}")
        found = {d: _walk(self.root / d) for d in folders}
        self.samples = [(p, index[_nfc(d)]) for d in folders for p in found[d][0]]
        if not self.samples:
            raise DataError(f"{self.root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        empty = [d for d in folders if not found[d][0]]
        if empty:
            log.warning("%s: class folders without images (kept as classes): %s", self.root, ", ".join(empty))
        others = [p for d in folders for p in found[d][1]]
        if others:
            log.info("%s: ignored %d files that are not images, e.g. %s", self.root, len(others),
                     ", ".join(str(p.relative_to(self.root)) for p in others[:3]))
        self.pipeline = pipeline
        self.name = str(self.root)

    def __len__(self):
        return len(self.samples)

    def label(self, i):
        return self.samples[i][1]

    def source(self, i):
        return str(self.samples[i][0])

    def load(self, i, rng=None):
        path, label = self.samples[i]
        return self.pipeline(path, rng), label


class ArrayDataSet(DataSet):
    """In-memory features (N, ...) and integer labels (N,)."""

    def __init__(self, x, y, labels: list[str] | None = None, name: str = "arrays"):
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y).astype(np.int64)
        if len(self.x) != len(self.y):
            raise ValueError(f"ArrayDataSet: {len(self.x)} samples but {len(self.y)} labels")
        self.labels = list(labels) if labels else [str(c) for c in range(int(self.y.max()) + 1 if len(self.y) else 0)]
        self.name = name

    def __len__(self):
        return len(self.x)

    def label(self, i):
        return int(self.y[i])

    def load(self, i, rng=None):
        return self.x[i], int(self.y[i])

    def take(self, indices):
        """A whole batch at once: in-memory arrays need no per-sample decoding."""
        return self.x[indices], self.y[indices]


class Subset(DataSet):
    def __init__(self, base: DataSet, indices, part: str = "subset"):
        self.base, self.indices = base, list(indices)
        self.labels = base.labels
        self.name = f"{base.name} ({part})"

    def __len__(self):
        return len(self.indices)

    def label(self, i):
        return self.base.label(self.indices[i])

    def source(self, i):
        return self.base.source(self.indices[i])

    def load(self, i, rng=None):
        return self.base.load(self.indices[i], rng)

    def with_pipeline(self, pipeline) -> "Subset":
        """The same samples through another pipeline (evaluation preprocessing for validation)."""
        import copy
        base = copy.copy(self.base)
        base.pipeline = pipeline
        return Subset(base, self.indices, self.name)
