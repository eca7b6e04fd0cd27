"""Matrix multiply on Intel MKL or on the OpenBLAS inside numpy's wheel, whichever is faster here.

Neither library wins everywhere: on an AMD EPYC with AVX-512, MKL's sgemm measured 68-120
GFLOP/s where numpy's OpenBLAS reached 125-184 on the same shapes. So the backend is chosen by a
short calibration (well under a second) the first time it is needed on a machine, timing both on
convolution-like shapes; the result is cached in ``~/.cache/kindling/blas.json`` keyed by the CPU
model, thread count, library versions and any OPENBLAS_CORETYPE setting (one entry per key,
calibrated under a lock, so processes starting together on a busy machine agree on the library
and so compute the same bits). ``KINDLING_BLAS=mkl|openblas`` forces a choice.

Both are called through the same CBLAS interface (ctypes releases the GIL). The libraries run
single-threaded; kindling splits large products across its own pool (``runtime/parallel.py``),
so the two libraries' thread pools can never oversubscribe the cores, and the threads follow the
cores left free by other processes. ``KINDLING_NUM_THREADS`` sets the thread count.
"""
from __future__ import annotations

import contextlib
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

from .parallel import default_threads, pool

try:
    import fcntl
except ImportError:  # not POSIX: calibrations are not serialized
    fcntl = None

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
CALIBRATION_SHAPES = [(1024, 576, 256), (256, 2304, 512), (2048, 512, 512)]
_OPENBLAS_KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Below this many multiply-adds a product is not worth splitting across threads.
_SPLIT_MIN_MACS = 2_000_000


class CBLAS:
    """``cblas_sgemm`` of one shared library, through ctypes."""
    name = "?"

    def __init__(self, path: str, sgemm: str, int_type, set_threads: str, version: str):
        self._lib = ctypes.CDLL(path)
        self.path = path
        self._int = int_type
        self._sgemm = getattr(self._lib, sgemm)
        self._sgemm.restype = None
        i = int_type
        self._sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, i, ctypes.c_float, ctypes.c_void_p,
                                i, ctypes.c_void_p, i, ctypes.c_float, ctypes.c_void_p, i]
        self._set_threads = getattr(self._lib, set_threads)
        self._set_threads.argtypes = [ctypes.c_int]
        self.version = version
        self._hold = None  # set_threads(1) for the calling thread, before every call (see _mkl)

    @staticmethod
    def _layout(m: np.ndarray):
        """(transpose flag, leading dimension) of a 2-D row-major view, or None if BLAS cannot read it."""
        item = m.itemsize
        s0, s1 = m.strides
        if (s1 == item or m.shape[1] == 1) and s0 % item == 0 and s0 >= max(m.shape[1], 1) * item:
            return _NO_TRANS, s0 // item
        if (s0 == item or m.shape[0] == 1) and s1 % item == 0 and s1 >= max(m.shape[0], 1) * item:
            return _TRANS, s1 // item
        return None

    def sgemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray, beta: float = 0.0) -> None:
        """out = a @ b (+ beta * out), all float32 2-D; out's rows may be strided, its columns not."""
        (m, k), n = a.shape, b.shape[1]
        la = self._layout(a)
        if la is None:
            a = np.ascontiguousarray(a)
            la = (_NO_TRANS, max(k, 1))
        lb = self._layout(b)
        if lb is None:
            b = np.ascontiguousarray(b)
            lb = (_NO_TRANS, max(n, 1))
        ldc = out.strides[0] // 4 if m > 1 else max(n, 1)
        if self._hold is not None:
            self._hold(1)
        self._sgemm(_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, max(la[1], 1), b.ctypes.data,
                    max(lb[1], 1), beta, out.ctypes.data, max(ldc, n, 1))

    def set_threads(self, n: int) -> None:
        self._set_threads(int(n))


def _numpy_openblas() -> CBLAS:
    from threadpoolctl import threadpool_info
    info = [i for i in threadpool_info() if i.get("internal_api") == "openblas" and "numpy" in i.get("filepath", "")]
    if not info:
        raise OSError("numpy's OpenBLAS not found")
    path = info[0]["filepath"]
    lib = ctypes.CDLL(path)
    for prefix, suffix, int_type in (("scipy_", "64_", ctypes.c_int64), ("", "64_", ctypes.c_int64),
                                     ("", "", ctypes.c_int)):
        if hasattr(lib, f"{prefix}cblas_sgemm{suffix}"):
            backend = CBLAS(path, f"{prefix}cblas_sgemm{suffix}", int_type, f"{prefix}openblas_set_num_threads{suffix}",
                            info[0].get("version", "?"))
            backend.name = "openblas"
            return backend
    raise OSError(f"no cblas_sgemm in {path}")


def _find_mkl_rt() -> str | None:
    for root in dict.fromkeys([sys.prefix, sys.base_prefix, *os.environ.get("LD_LIBRARY_PATH", "").split(":")]):
        for pattern in ("lib/libmkl_rt.so*", "libmkl_rt.so*", "Library/bin/mkl_rt*.dll", "lib/libmkl_rt*.dylib"):
            hits = sorted(glob.glob(os.path.join(root, pattern)))
            if hits:
                return hits[0]
    return None


def _mkl() -> CBLAS:
    path = _find_mkl_rt()
    if path is None:
        raise OSError("libmkl_rt not found (pip install mkl)")
    lib = ctypes.CDLL(path)
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, 256)
    backend = CBLAS(path, "cblas_sgemm", ctypes.c_int, "MKL_Set_Num_Threads",
                    buf.value.decode(errors="replace").strip())
    # MKL's thread count is also per thread, and others in the process change it: PyTorch's
    # set_num_threads(2) made MKL run kindling's products on the calling thread with two threads
    # (other bits than on one) while kindling's pool threads kept one, so the numbers depended on
    # which thread ran a piece, and so on the load. Each call holds its own thread to one.
    backend._hold = lib.MKL_Set_Num_Threads_Local
    backend._hold.argtypes = [ctypes.c_int]
    backend._hold.restype = ctypes.c_int
    backend.name = "mkl"
    return backend


BACKENDS = {"openblas": _numpy_openblas, "mkl": _mkl}


@dataclass
class Choice:
    backend: CBLAS
    reason: str
    gflops: dict


def _gflops(backend: CBLAS, shapes, repeats=3) -> float:
    """Geometric mean over the calibration shapes of the median GFLOP/s, split as gemm() splits."""
    rates = []
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        _gemm_with(backend, a, b, out)  # warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            _gemm_with(backend, a, b, out)
            times.append(time.perf_counter() - t)
        rates.append(2 * m * k * n / sorted(times)[len(times) // 2] / 1e9)
    return float(np.exp(np.mean(np.log(rates))))


def _cache_key(backends: dict) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = ",".join(f"{k}={v.version}" for k, v in sorted(backends.items()))
    # OpenBLAS picks its kernel at load time, and these variables can hold it to an older one
    # (a different speed): a choice made under one setting is not reused under another.
    kernel = ",".join(f"{k}={v}" for k, v in _kernel_settings().items())
    return f"{cpu}|{default_threads()}|{versions}|{kernel}"


def _kernel_settings() -> dict[str, str]:
    """The variables, among those set, that hold OpenBLAS to a kernel of their choosing."""
    return {v: os.environ[v] for v in _OPENBLAS_KERNEL_VARS if v in os.environ}


def _cache_path() -> Path:
    return Path(os.environ.get("KINDLING_CACHE", Path.home() / ".cache" / "kindling")) / "blas.json"


def _choose() -> Choice:
    forced = os.environ.get("KINDLING_BLAS", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"KINDLING_BLAS={forced!r}: expected one of {', '.join(BACKENDS)}")
        return Choice(BACKENDS[forced](), "forced by KINDLING_BLAS", {})
    available = {}
    for name, make in BACKENDS.items():
        try:
            available[name] = make()
            available[name].set_threads(1)
        except (OSError, AttributeError):
            pass
    if not available:
        raise OSError("no BLAS backend found: neither numpy's OpenBLAS nor MKL's libmkl_rt could be loaded")
    if len(available) == 1:
        (name, b), = available.items()
        return Choice(b, "the only backend available", {})
    key = _cache_key(available)
    path = _cache_path()
    # Calibration times the libraries, so on a busy machine two processes calibrating at once
    # could choose differently, and then compute other bits from the same inputs: the first
    # process calibrates under a lock and every later one (any setting's) reads its choice.
    with _locked(path.with_suffix(".lock")):
        entries = _read_cache(path)
        if entries.get(key, {}).get("choice") in available:
            return Choice(available[entries[key]["choice"]], f"calibrated earlier ({path})", entries[key]["gflops"])
        rates = {name: round(_gflops(b, CALIBRATION_SHAPES), 1) for name, b in available.items()}
        best = max(rates, key=rates.get)
        entries[key] = {"choice": best, "gflops": rates}
        try:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"entries": entries}, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    return Choice(available[best], "calibrated now", rates)


def _read_cache(path: Path) -> dict:
    """{key: {"choice", "gflops"}} from the cache (an older file holds one key at its top level)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict):
        return {}
    if "key" in cached:
        return {cached["key"]: {"choice": cached.get("choice"), "gflops": cached.get("gflops", {})}}
    entries = cached.get("entries")
    return entries if isinstance(entries, dict) else {}


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on ``lock_path`` (where the cache folder can be written; else none)."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")
    except OSError:
        f = None
    if f is None or fcntl is None:
        if f is not None:
            f.close()
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


_active: Choice | None = None


def backend() -> Choice:
    """The chosen backend, calibrating on first use."""
    global _active
    if _active is None:
        _active = _choose()
        _active.backend.set_threads(1)
    return _active


def set_threads(n: int) -> None:
    """kindling's thread count (the pool's); the BLAS libraries themselves stay single-threaded."""
    pool.set_threads(n)


def _gemm_with(lib: CBLAS, a, b, out, beta: float = 0.0) -> None:
    m, k = a.shape
    n = b.shape[1]
    if m * n * k < _SPLIT_MIN_MACS:
        lib.sgemm(a, b, out, beta)
    elif m >= 2 * 64 or m >= n:  # split the rows
        pool.run(m, lambda _, lo, hi: lib.sgemm(a[lo:hi], b, out[lo:hi], beta), min_per_worker=16)
    else:  # few rows (a small batch through a wide layer): split the columns
        pool.run(n, lambda _, lo, hi: lib.sgemm(a, b[:, lo:hi], out[:, lo:hi], beta), min_per_worker=64)


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *, parallel: bool = True,
         accumulate: bool = False) -> np.ndarray:
    """``a @ b`` for 2-D float32 arrays; transposed views go to BLAS without a copy. ``out`` may be a
    row-strided view (a column block of a larger matrix). ``accumulate=True`` adds into ``out``.
    ``parallel=False`` when the caller is itself one of several threads working on separate blocks."""
    if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 2 or b.ndim != 2:
        return np.matmul(a, b, out=out)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: shapes {a.shape} and {b.shape} do not align")
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), np.float32)
    elif out.shape != (a.shape[0], b.shape[1]) or out.dtype != np.float32 or out.strides[1] != 4:
        product = gemm(a, b, parallel=parallel)
        if accumulate:
            out += product
        else:
            np.copyto(out, product)
        return out
    if 0 in a.shape or 0 in b.shape:
        if not accumulate:
            out.fill(0)
        return out
    lib = backend().backend
    beta = 1.0 if accumulate else 0.0
    if parallel:
        _gemm_with(lib, a, b, out, beta)
    else:
        lib.sgemm(a, b, out, beta)
    return out


def openblas_kernel() -> str | None:
    """The kernel numpy's OpenBLAS runs (Haswell, SkylakeX, ...): picked by OpenBLAS at load time
    for this CPU unless OPENBLAS_CORETYPE holds it to another."""
    from threadpoolctl import threadpool_info
    return next((i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"), None)


def describe() -> dict:
    c = backend()
    return {"backend": c.backend.name, "version": c.backend.version, "library": c.backend.path,
            "threads": pool.max_threads, "active_threads": pool.active,
            "adaptive_threads": pool._monitor is not None, "reason": c.reason, "calibration_gflops": c.gflops,
            "openblas_kernel": openblas_kernel(),
            "openblas_kernel_held_by": _kernel_settings()}
