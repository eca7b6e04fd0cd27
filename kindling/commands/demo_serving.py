"""kindling demo's serving step: ``kindling serve`` in a child process, as a user starts it, and the
held-out digits classified through the client.

A child process rather than a server in the demo's own process: it is the command users run, it
gets its own cores for the compute workers, and stopping it with SIGTERM (the way a service
manager stops it) exercises the graceful stop a deployment relies on. On Ctrl-C in a terminal the
child gets the SIGINT too and stops the same way; the demo's ``finally`` sends SIGTERM as well.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# a snapshot the training finished writing seconds ago: no need for serve's 2 s settle time
SERVE_FLAGS = ["--port", "0", "--poll-seconds", "0.2", "--settle-seconds", "0.5", "--shutdown-grace", "10"]
CHUNK = 64  # images per Classify request (kindling serve's default --max-images)


class ServerProcess:
    """``with ServerProcess(repository, log_path) as s:`` a listening ``kindling serve`` on a free
    port of 127.0.0.1 (``s.target``, ``s.client``); stopped with SIGTERM on leaving, whatever
    happened (``s.returncode`` then)."""

    def __init__(self, repository: Path, log: Path, startup_seconds: float = 120.0):
        self.repository, self.log, self.startup_seconds = Path(repository), Path(log), startup_seconds
        self.process = self.client = self.target = self.returncode = None

    def __enter__(self) -> "ServerProcess":
        from kindling.serving import Client
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kindling", "serve", "--repository", str(self.repository), *SERVE_FLAGS],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.target = f"127.0.0.1:{self._listening_port()}"
            self.client = Client(self.target, timeout=30.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _events(self):
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue

    def _failed(self) -> ValueError:
        tail = "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:])
        return ValueError(f"kindling serve exited with status {self.process.returncode} (log {self.log}):\n{tail}")

    def _listening_port(self) -> int:
        deadline = time.monotonic() + self.startup_seconds
        while time.monotonic() < deadline:
            for e in self._events():
                if e.get("event") == "listening":
                    return int(str(e["address"]).rsplit(":", 1)[1])
            if self.process.poll() is not None:
                raise self._failed()
            time.sleep(0.1)
        raise TimeoutError(f"kindling serve did not listen within {self.startup_seconds:g} s (log {self.log})")

    def wait_serving(self, model: str) -> None:
        """Until the model's health is SERVING (its snapshot loaded, smoke-tested and warmed)."""
        from kindling.serving import ServingError
        deadline = time.monotonic() + self.startup_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failed()
            try:
                if self.client.health(model, timeout=5.0) == "SERVING":
                    return
            except ServingError:
                pass  # not answering yet
            time.sleep(0.2)
        raise TimeoutError(f"{model}: not SERVING within {self.startup_seconds:g} s (log {self.log}: a refused "
                           f"snapshot says why)")

    def stop(self, timeout: float = 30.0) -> None:
        if self.client is not None:
            self.client.close()
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.returncode = p.returncode


@dataclass
class Served:
    """The held-out digits as the server classified them."""
    version: int
    paths: list[Path]
    truth: np.ndarray                              # class index per image
    labels: list[str]                              # the classes, by index
    top: list = field(default_factory=list)        # Classification per image (top 5, best first)

    @property
    def top1(self) -> float:
        return float(np.mean([c.indices[0] == t for c, t in zip(self.top, self.truth)]))

    @property
    def top5(self) -> float:
        return float(np.mean([t in c.indices[:5] for c, t in zip(self.top, self.truth)]))

    def picked(self, n: int, mistakes: int = 0) -> list[int]:
        """About n images spread over the held-out set (it is sorted by class: every digit shows),
        the first ``mistakes`` misclassified ones among them."""
        wrong = [i for i, (c, t) in enumerate(zip(self.top, self.truth)) if c.indices[0] != t][:mistakes]
        spread = np.linspace(0, len(self.paths) - 1, n - len(wrong)).round().astype(int).tolist()
        return sorted(set(spread) | set(wrong))

    def shown(self, n: int):
        """[(path, true label, (predicted label, score))] for n spread images."""
        return [(self.paths[i], self.labels[self.truth[i]], (self.top[i].labels[0], self.top[i].scores[0]))
                for i in self.picked(n)]


def served_accuracy(client, model: str, held_out) -> Served:
    """Every held-out JPEG (a DataSet with ``source(i)`` paths) sent as its file bytes, CHUNK per
    request, top 5 back."""
    paths = [Path(held_out.source(i)) for i in range(len(held_out))]
    served = Served(0, paths, np.array([held_out.label(i) for i in range(len(held_out))]), list(held_out.labels))
    for start in range(0, len(paths), CHUNK):
        answer = client.classify(model, paths[start:start + CHUNK], top_k=5)
        served.version = answer.version
        served.top.extend(answer.results)
    return served
