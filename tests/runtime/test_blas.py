"""Both BLAS backends compute correct products for every layout the layers hand them, and the
choice can be forced."""
import os
import subprocess
import sys

import numpy as np
import pytest

from kindling.runtime import blas
from kindling.runtime.parallel import Pool


def _backends():
    found = []
    for name, make in blas.BACKENDS.items():
        try:
            found.append(pytest.param(make(), id=name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("lib", _backends())
@pytest.mark.parametrize("m,k,n", [(300, 200, 100), (1, 50, 7), (4, 4096, 300), (1000, 9, 3), (257, 129, 65)])
def test_sgemm_layouts_against_float64(lib, m, k, n):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    ref = a.astype(np.float64) @ b
    for A in (a, np.asfortranarray(a)):
        for B in (b, np.asfortranarray(b)):
            out = np.empty((m, n), np.float32)
            blas._gemm_with(lib, A, B, out)
            assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    wide = np.full((m, n + 5), 7.0, np.float32)
    lib.sgemm(a, b, wide[:, 2:2 + n])  # a column block of a larger matrix: ldc > n
    assert np.abs(wide[:, 2:2 + n] - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (wide[:, :2] == 7).all() and (wide[:, 2 + n:] == 7).all()
    acc = np.ones((m, n), np.float32)
    lib.sgemm(a, b, acc, beta=1.0)
    assert np.abs(acc - (ref + 1)).max() <= 1e-4 * np.abs(ref).max() + 1e-4


def test_gemm_splits_across_threads_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((512, 300), dtype=np.float32), rng.standard_normal((300, 700), dtype=np.float32)
    single = blas.gemm(a, b, parallel=False)
    for rows in (512, 3):  # row split, then column split (few rows)
        monkeypatch.setattr(blas, "pool", Pool(threads=2))
        assert np.allclose(blas.gemm(a[:rows], b), single[:rows], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in blas.BACKENDS])
def test_kindling_blas_forces_the_backend(name, tmp_path):
    code = "from kindling.runtime import blas; d = blas.describe(); print(d['backend'], '|', d['reason'])"
    env = {**os.environ, "KINDLING_BLAS": name, "KINDLING_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode and "not found" in r.stderr:
        pytest.skip(f"{name} is not installed here")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{name} | forced by KINDLING_BLAS"


def test_calibration_is_cached(tmp_path):
    code = "from kindling.runtime import blas; print(blas.describe()['reason'])"
    env = {k: v for k, v in os.environ.items() if k != "KINDLING_BLAS"}
    env["KINDLING_CACHE"] = str(tmp_path)
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    if "only backend" in first:
        pytest.skip("one backend only: nothing to calibrate")
    assert first.strip() == "calibrated now" and second.startswith("calibrated earlier")
    assert (tmp_path / "blas.json").exists()
    # OpenBLAS held to another kernel runs at another speed: the earlier choice is not reused.
    other = "Sandybridge" if env.get("OPENBLAS_CORETYPE") != "Sandybridge" else "Haswell"
    third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**env, "OPENBLAS_CORETYPE": other}).stdout
    assert third.strip() == "calibrated now"
    # ... and the first setting's choice is still there beside it
    fourth = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert fourth.startswith("calibrated earlier")


def test_processes_calibrating_at_once_make_one_choice(tmp_path):
    code = "from kindling.runtime import blas; d = blas.describe(); print(d['backend'], '|', d['reason'])"
    env = {k: v for k, v in os.environ.items() if k != "KINDLING_BLAS"}
    env["KINDLING_CACHE"] = str(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    answers = [p.communicate()[0].strip().split(" | ") for p in procs]
    if any("only backend" in reason for _, reason in answers):
        pytest.skip("one backend only: nothing to calibrate")
    assert len({backend for backend, _ in answers}) == 1
    assert [reason for _, reason in answers].count("calibrated now") == 1


def test_bad_kindling_blas_value_is_a_clear_error(tmp_path):
    env = {**os.environ, "KINDLING_BLAS": "cublas", "KINDLING_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", "from kindling.runtime import blas; blas.describe()"],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "KINDLING_BLAS='cublas'" in r.stderr
