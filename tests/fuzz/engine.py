"""Runs fuzz inputs through a target in forked workers and sorts every outcome.

Each worker is a fork of this process (the loaders are imported once) under an address-space
limit (RLIMIT_AS: what it has in use plus ``memory_mb``); each input gets a fresh folder and at
most ``timeout`` seconds of CPU (RLIMIT_CPU; a wall-clock limit of six times that catches a worker
that sleeps). A worker that dies or overruns is replaced, and the input is recorded.

Outcomes:
  ok     the target returned
  clean  it raised a kindling error (a KindlingError, so a ValueError) whose message names one of
         the input files
  bad    anything else, by kind: ``exception`` (any other exception: a traceback for the user),
         ``memory`` (MemoryError: an allocation over the limit), ``crash`` (the worker died),
         ``hang`` (over the time limit), ``leftover`` (a failed run left a file in the target's
         ``out/`` folder, or any run left a temp file), ``unnamed`` (a kindling error naming no
         input file)
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import tempfile
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kindling.runtime.errors import KindlingError

_LEN = struct.Struct("<Q")


@dataclass
class Result:
    outcome: str         # ok, clean, bad
    kind: str = ""       # for clean: the error type; for bad: exception, memory, crash, hang, leftover, unnamed
    detail: str = ""     # the message, or the traceback's last lines


def _names(tmp: Path) -> list[str]:
    """How a message may name an input the target made: its path, or a file's name (out/ aside;
    a folder's bare name, "images", could be any word)."""
    inputs = [p for p in tmp.rglob("*") if "out" not in p.relative_to(tmp).parts[:1]]
    return [str(p) for p in inputs] + [p.name for p in inputs if p.is_file()]


def _temp_files(tmp: Path) -> list[str]:
    return [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def classify(target, data: bytes, tmp: Path) -> Result:
    """Runs one input in this process and says what happened."""
    out = tmp / "out"
    failed = True
    try:
        target(data, tmp)
        failed, result = False, Result("ok")
    except MemoryError as e:
        result = Result("bad", "memory", f"MemoryError: {e}")
    except KindlingError as e:
        names = _names(tmp)
        if any(n in str(e) for n in names):
            result = Result("clean", type(e).__name__, str(e)[:300])
        else:
            result = Result("bad", "unnamed", f"{type(e).__name__}: {str(e)[:300]} (inputs: {names})")
    except Exception as e:  # noqa: BLE001 - anything else reaches the user as a traceback
        tb = traceback.format_exception(e)
        result = Result("bad", "exception", "".join(tb[-6:])[-1500:])
    left = _temp_files(tmp) + ([str(p.relative_to(tmp)) for p in out.rglob("*")] if failed and out.exists() else [])
    if left and result.outcome != "bad":
        result = Result("bad", "leftover", f"left {left} after {result.outcome}: {result.detail}")
    return result


def _send(fd: int, obj) -> None:
    blob = pickle.dumps(obj)
    os.write(fd, _LEN.pack(len(blob)))
    view = memoryview(blob)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int):
    head = _read_exactly(fd, _LEN.size)
    if head is None:
        return None
    return pickle.loads(_read_exactly(fd, _LEN.unpack(head)[0]))


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


class Worker:
    """A forked process that runs inputs one at a time for the parent."""

    def __init__(self, target, root: Path, memory_mb: int, timeout: float):
        self.timeout = timeout
        self.inbox = root / "input.bin"
        to_child, self._tx = os.pipe()
        self._rx, from_child = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the worker
            os.close(self._tx)
            os.close(self._rx)
            code = 0
            try:
                _serve(target, root, memory_mb, timeout, to_child, from_child)
            except BaseException:  # noqa: BLE001 - the parent sees a crash
                code = 70
            os._exit(code)
        os.close(to_child)
        os.close(from_child)

    def run(self, data: bytes) -> Result:
        # The input goes by file, its name by pipe: a 1.7 MB input through a 64 KB pipe took dozens
        # of hand-overs between the two processes, each waiting for a core on a busy machine.
        self.inbox.write_bytes(data)
        _send(self._tx, str(self.inbox))
        ready, _, _ = select.select([self._rx], [], [], self.timeout * 6)
        if not ready:
            self.kill()
            return Result("bad", "hang", f"no answer within {self.timeout * 6:.0f} s of wall time")
        result = _recv(self._rx)
        if result is None:
            status = self.reap()
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
                return Result("bad", "hang", f"over {self.timeout:.0f} s of CPU time")
            return Result("bad", "crash", f"worker died: {_describe(status)}")
        return result

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reap()

    def reap(self) -> int:
        for fd in (self._tx, self._rx):
            try:
                os.close(fd)
            except OSError:
                pass
        _, status = os.waitpid(self.pid, 0)
        return status

    def close(self) -> None:
        try:
            os.close(self._tx)  # EOF: the worker leaves its loop
        except OSError:
            pass
        self.reap()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _serve(target, root: Path, memory_mb: int, timeout: float, rx: int, tx: int) -> None:
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    devnull = open(os.devnull, "w")
    os.dup2(devnull.fileno(), 1)  # targets that run commands print summaries: not wanted here
    os.dup2(devnull.fileno(), 2)  # nor what C libraries print about the damaged files (libtiff)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU dumps core by default
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + (memory_mb << 20), hard))
    n = 0
    while True:
        inbox = _recv(rx)
        if inbox is None:
            return
        data = Path(inbox).read_bytes()
        tmp = root / f"{os.getpid()}-{n}"
        tmp.mkdir()
        n += 1
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu = int(used.ru_utime + used.ru_stime + timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
        try:
            result = classify(target, data, tmp)
        finally:
            resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            shutil.rmtree(tmp, ignore_errors=True)
        _send(tx, result)


class Campaign:
    """Runs inputs through one target, replacing workers as they die (and every ``recycle``
    inputs, so one input's leftovers in memory never reach many others)."""

    def __init__(self, target, *, memory_mb: int = 1024, timeout: float = 10.0, recycle: int = 500):
        self.target, self.memory_mb, self.timeout, self.recycle = target, memory_mb, timeout, recycle
        # inputs are small and many: a RAM folder spares the disk (save's fsync) where there is one
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) and "TMPDIR" not in os.environ else None
        self.root = Path(tempfile.mkdtemp(prefix="kindling-fuzz-", dir=shm))
        self.counts: Counter = Counter()
        self.kinds: Counter = Counter()
        self.findings: list[tuple[bytes, Result]] = []
        self._worker: Worker | None = None
        self._served = 0

    def run(self, data: bytes) -> Result:
        if self._worker is None or self._served >= self.recycle:
            self._stop_worker()
            self._worker, self._served = Worker(self.target, self.root, self.memory_mb, self.timeout), 0
        result = self._worker.run(data)
        self._served += 1
        if result.kind in ("hang", "crash"):
            self._worker = None  # already reaped
        self.counts[result.outcome] += 1
        self.kinds[(result.outcome, result.kind)] += 1
        if result.outcome == "bad":
            self.findings.append((data, result))
        return result

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def close(self) -> None:
        self._stop_worker()
        shutil.rmtree(self.root, ignore_errors=True)


def quietly(fn, *args, **kwargs):
    """Calls fn with stdout swallowed (commands print their summaries)."""
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)
