"""Data sets: a folder of class sub-folders of images (the Caltech-256 layout), or arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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
        if not 0 < val_fraction < 1:
            raise ValueError(f"split: val_fraction must be in (0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        labels = np.array([self.label(i) for i in range(len(self))])
        train, val = [], []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            k = int(round(len(idx) * val_fraction))
            val += idx[:k].tolist()
            train += idx[k:].tolist()
        return Subset(self, sorted(train), "train"), Subset(self, sorted(val), "validation")


class ImageFolder(DataSet):
    """root/<class>/<image>: classes are the sub-folder names in sorted order (or ``labels``)."""

    def __init__(self, root, pipeline, labels: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: not a folder of class sub-folders")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.labels = list(labels) if labels else folders
        unknown = sorted(set(folders) - set(self.labels))
        if unknown:
            raise ValueError(f"{self.root}: class folders {unknown} are not among the labels {self.labels}")
        index = {name: i for i, name in enumerate(self.labels)}
        self.samples = [(p, index[d]) for d in folders for p in sorted((self.root / d).iterdir())
                        if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise ValueError(f"{self.root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
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
