"""A real server on 127.0.0.1 (a free port) run on an event loop of its own, and helpers."""
from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from pathlib import Path

from kindling.serving import Config, Server


class RunningServer:
    """A Server on its own event loop in a thread: ``with RunningServer(config) as s: s.port``."""

    def __init__(self, config: Config):
        self.config = config
        self.server: Server | None = None
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server-loop", daemon=True)

    def __enter__(self):
        self._thread.start()
        try:
            self.server = Server(self.config)
            self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(60)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result(60)
            self.server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __exit__(self, *exc):
        self.stop()

    def poll(self) -> None:
        """One pass of the manager now (tests need not wait for the watcher's next turn)."""
        self.server.manager.poll()


def config(repository, **kw) -> Config:
    defaults = dict(port=0, poll_seconds=0.1, settle_seconds=0.0, grace_seconds=2.0, workers=2)
    return Config(repository=Path(repository), **{**defaults, **kw})


def make_repository(root: Path, trained_folder: Path, versions, model: str = "digits") -> Path:
    folder = root / model
    folder.mkdir(parents=True, exist_ok=True)
    for v in versions:
        shutil.copyfile(trained_folder / f"model.{v}", folder / f"model.{v}")
    shutil.copyfile(trained_folder / "labels.txt", folder / "labels.txt")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
