"""Matrix multiply on Intel MKL or on the OpenBLAS inside numpy's wheel, whichever is faster here.

Neither library wins everywhere: on an AMD EPYC with AVX-512, MKL's sgemm measured 68-120
GFLOP/s where numpy's OpenBLAS reached 125-184 on the same shapes. So the backend is chosen by a
short calibration (about half a second) the first time it is needed on a machine, timing both
on convolution-like shapes; the result is cached in ``~/.cache/kindling/blas.json`` keyed by the
CPU model and library versions. ``KINDLING_BLAS=mkl|openblas`` forces a choice, and
``KINDLING_NUM_THREADS`` sets the thread count (default: the cores this process may use); while
other processes keep cores busy the count drops to the cores left free (``LoadMonitor``;
``KINDLING_ADAPTIVE_THREADS=0`` turns that off).

Only the chosen library runs threads: the other is held at one thread so that the two pools
never oversubscribe the cores.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112
CALIBRATION_SHAPES = [(1024, 576, 256), (256, 2304, 512), (2048, 512, 512)]


def default_threads() -> int:
    env = os.environ.get("KINDLING_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OpenBLAS:
    """numpy's own matmul, which calls the OpenBLAS bundled with the numpy wheel."""
    name = "openblas"

    def __init__(self):
        from threadpoolctl import threadpool_info
        info = [i for i in threadpool_info() if i.get("internal_api") == "openblas"
                and "numpy" in i.get("filepath", "")] or [i for i in threadpool_info() if i.get("user_api") == "blas"]
        self.version = info[0].get("version", "?") if info else "?"
        self._path = info[0]["filepath"] if info else None

    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.matmul(a, b, out=out)

    def set_threads(self, n: int) -> None:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")

    def get_threads(self) -> int:
        from threadpoolctl import threadpool_info
        for i in threadpool_info():
            if i.get("filepath") == self._path:
                return i["num_threads"]
        return 1


def _find_mkl_rt() -> str | None:
    roots = [sys.prefix, sys.base_prefix, *os.environ.get("LD_LIBRARY_PATH", "").split(":")]
    for root in roots:
        for pattern in ("lib/libmkl_rt.so*", "libmkl_rt.so*", "Library/bin/mkl_rt*.dll", "lib/libmkl_rt*.dylib"):
            hits = sorted(glob.glob(os.path.join(root, pattern)))
            if hits:
                return hits[0]
    return None


class MKL:
    """Intel MKL's cblas_sgemm through ctypes, from the PyPI ``mkl`` package's libmkl_rt."""
    name = "mkl"

    def __init__(self):
        path = _find_mkl_rt()
        if path is None:
            raise OSError("libmkl_rt not found (pip install mkl)")
        self._lib = ctypes.CDLL(path)
        self._path = path
        self._sgemm = self._lib.cblas_sgemm
        self._sgemm.restype = None
        self._sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        buf = ctypes.create_string_buffer(256)
        self._lib.MKL_Get_Version_String(buf, 256)
        self.version = buf.value.decode(errors="replace").strip()
        self._lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
        self._lib.MKL_Get_Max_Threads.restype = ctypes.c_int

    @staticmethod
    def _layout(m: np.ndarray) -> tuple[int, int] | None:
        """(transpose flag, leading dimension) for a row-major view, or None if it needs a copy."""
        item = m.itemsize
        if m.strides[1] == item and m.strides[0] >= m.shape[1] * item:
            return _CBLAS_NO_TRANS, m.strides[0] // item
        if m.strides[0] == item and m.strides[1] >= m.shape[0] * item:
            return _CBLAS_TRANS, m.strides[1] // item
        return None

    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 2 or b.ndim != 2:
            return np.matmul(a, b, out=out)
        (m, k), n = a.shape, b.shape[1]
        if out is None:
            out = np.empty((m, n), np.float32)
        la = self._layout(a) or (_CBLAS_NO_TRANS, (a := np.ascontiguousarray(a)).shape[1])
        lb = self._layout(b) or (_CBLAS_NO_TRANS, (b := np.ascontiguousarray(b)).shape[1])
        if not out.flags.c_contiguous or min(m, n, k) == 0:
            out[...] = np.matmul(a, b)
            return out
        self._sgemm(_CBLAS_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, max(la[1], 1),
                    b.ctypes.data, max(lb[1], 1), 0.0, out.ctypes.data, max(n, 1))
        return out

    def set_threads(self, n: int) -> None:
        self._lib.MKL_Set_Num_Threads(int(n))

    def get_threads(self) -> int:
        return int(self._lib.MKL_Get_Max_Threads())


BACKENDS = {"openblas": OpenBLAS, "mkl": MKL}


@dataclass
class Choice:
    backend: object
    reason: str
    gflops: dict


def _gflops(backend, shapes, repeats=3) -> float:
    """Median GFLOP/s over the calibration shapes (geometric mean across shapes)."""
    rates = []
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        backend.gemm(a, b, out)  # warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            backend.gemm(a, b, out)
            times.append(time.perf_counter() - t)
        rates.append(2 * m * k * n / sorted(times)[len(times) // 2] / 1e9)
    return float(np.exp(np.mean(np.log(rates))))


def _cache_key(backends: dict) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ",".join(f"{k}={getattr(v, 'version', '?')}" for k, v in sorted(backends.items()))
    return f"{cpu}|{default_threads()}|{versions}"


def _cache_path() -> Path:
    return Path(os.environ.get("KINDLING_CACHE", Path.home() / ".cache" / "kindling")) / "blas.json"


def _choose() -> Choice:
    forced = os.environ.get("KINDLING_BLAS", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"KINDLING_BLAS={forced!r}: expected one of {', '.join(BACKENDS)}")
        return Choice(BACKENDS[forced](), "forced by KINDLING_BLAS", {})
    available = {}
    for name, cls in BACKENDS.items():
        try:
            available[name] = cls()
        except OSError:
            pass
    if len(available) == 1:
        (name, b), = available.items()
        return Choice(b, "the only backend available", {})
    key = _cache_key(available)
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key and cached.get("choice") in available:
            return Choice(available[cached["choice"]], f"calibrated earlier ({path})", cached["gflops"])
    except (OSError, ValueError):
        pass
    threads = default_threads()
    rates = {}
    for name, b in available.items():
        for other in available.values():
            other.set_threads(threads if other is b else 1)
        rates[name] = round(_gflops(b, CALIBRATION_SHAPES), 1)
    best = max(rates, key=rates.get)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "choice": best, "gflops": rates}))
        os.replace(tmp, path)
    except OSError:
        pass
    return Choice(available[best], "calibrated now", rates)


_active: Choice | None = None


class LoadMonitor:
    """Shrinks the thread count while other processes keep cores busy, and grows it back.

    BLAS pools spin while they wait for their slowest thread; when a neighbour holds a core, a
    2-thread GEMM then runs at a fraction of 1-thread speed (PyTorch fell to 1/7 here). Every
    half second this reads /proc/stat (all CPU time) and /proc/self/stat (ours); what is busy and
    not ours is the neighbours' share, and the threads are set to the cores left over.
    """
    INTERVAL = 0.5

    def __init__(self, max_threads: int):
        self.max_threads = max_threads
        self.threads = max_threads
        self._last = None
        self._next = 0.0

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        with open("/proc/self/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        ours = int(stat[11]) + int(stat[12])  # utime + stime, clock ticks
        return time.monotonic(), sum(fields) - idle, ours

    def poll(self) -> int | None:
        """The thread count to switch to, or None to keep the current one."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.INTERVAL
        try:
            sample = self._sample()
        except (OSError, ValueError, IndexError):
            return None
        last, self._last = self._last, sample
        if last is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK") * (sample[0] - last[0])
        others = max(0.0, (sample[1] - last[1]) - (sample[2] - last[2])) / max(ticks, 1e-9)
        wanted = max(1, min(self.max_threads, round(self.max_threads - others)))
        if wanted != self.threads:
            self.threads = wanted
            return wanted
        return None


_monitor: LoadMonitor | None = None


def backend() -> Choice:
    """The chosen backend (calibrating on first use), with its thread pool configured."""
    global _active, _monitor
    if _active is None:
        _active = _choose()
        set_threads(default_threads())
        if os.environ.get("KINDLING_ADAPTIVE_THREADS", "1") != "0" and os.path.exists("/proc/stat"):
            _monitor = LoadMonitor(default_threads())
    return _active


def set_threads(n: int) -> None:
    """Runs the active backend on ``n`` threads and every other BLAS pool on one; ``n`` also
    becomes the ceiling the load monitor may go back up to."""
    active = backend().backend
    if _monitor is not None:
        _monitor.max_threads = _monitor.threads = n
    for name, cls in BACKENDS.items():
        if name == active.name:
            continue
        try:
            cls().set_threads(1)
        except OSError:
            pass
    active.set_threads(n)


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D float32 arrays (transposed views are passed to BLAS without a copy)."""
    chosen = backend().backend
    if _monitor is not None:
        n = _monitor.poll()
        if n is not None:
            chosen.set_threads(n)
    return chosen.gemm(a, b, out)


def describe() -> dict:
    c = backend()
    return {"backend": c.backend.name, "version": c.backend.version, "threads": c.backend.get_threads(),
            "max_threads": _monitor.max_threads if _monitor else c.backend.get_threads(),
            "adaptive_threads": _monitor is not None, "reason": c.reason, "calibration_gflops": c.gflops}
