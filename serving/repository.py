"""The source: a repository folder polled for models and their snapshots.

    REPOSITORY/<model>/model.<N>      snapshots as training writes them (N: the iteration)
    REPOSITORY/<model>/labels.txt     class labels, when the snapshots do not record them
    REPOSITORY/<model>/policy.json    the model's own policy (serving/policy.py), optional

Everything else (optimMethod.N, hidden temp files of an atomic save, notes) is ignored. A
snapshot is offered only once it has *settled*: its size, modification time and inode unchanged
for ``settle`` seconds (or last modified longer ago than that), so a file still being copied in,
or copied in two steps seconds apart, is looked at whole. Model names come from folder names
that match MODEL_NAME; request names are looked up among them and never touch the file system.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SNAPSHOT = re.compile(r"^model\.([0-9]{1,18})$")


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "FileState | None":
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class Snapshot:
    version: int
    path: Path
    state: FileState
    settled: bool


@dataclass
class ModelFolder:
    name: str
    path: Path
    snapshots: dict[int, Snapshot] = field(default_factory=dict)
    labels: FileState | None = None
    policy: FileState | None = None


class Repository:
    def __init__(self, root, settle: float = 2.0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: the repository must be a folder of model folders")
        self.settle = float(settle)
        self._seen: dict[Path, tuple[FileState, float]] = {}  # path -> (state, first seen unchanged, monotonic)

    def _settled(self, path: Path, state: FileState, now: float) -> bool:
        last = self._seen.get(path)
        if last is None or last[0] != state:
            self._seen[path] = (state, now)
            still_for = 0.0
        else:
            still_for = now - last[1]
        age = time.time() - state.mtime_ns / 1e9
        return still_for >= self.settle or age >= self.settle

    def scan(self) -> dict[str, ModelFolder]:
        """Every model folder with its snapshots as they stand now."""
        now = time.monotonic()
        models: dict[str, ModelFolder] = {}
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return models
        alive = set()
        for entry in entries:
            if not MODEL_NAME.match(entry.name) or not entry.is_dir():
                continue
            folder = ModelFolder(entry.name, Path(entry.path))
            try:
                files = list(os.scandir(entry.path))
            except OSError:
                continue
            for f in files:
                m = SNAPSHOT.match(f.name)
                path = Path(f.path)
                if m and f.is_file():
                    state = FileState.of(path)
                    if state is None:
                        continue
                    alive.add(path)
                    folder.snapshots[int(m.group(1))] = Snapshot(int(m.group(1)), path, state,
                                                                 self._settled(path, state, now))
                elif f.name in ("labels.txt", "policy.json") and f.is_file():
                    setattr(folder, f.name.split(".")[0], FileState.of(path))
            models[entry.name] = folder
        for gone in set(self._seen) - alive:
            del self._seen[gone]
        return models
