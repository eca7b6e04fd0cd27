"""Peak memory of a piece of work, measured in a fresh child process so nothing else counts."""
from __future__ import annotations

import json
import subprocess
import sys


def run_measured(code: str, prelude: str = "") -> dict:
    """Runs ``code`` in a child Python; it must set ``result`` (a dict). Returns that dict with
    ``peak_rss_mb`` (VmHWM: the child's high-water mark) and ``baseline_mb`` (RSS after imports,
    and after ``prelude``: imports of the framework measured, so they do not count as its work).
    ``code`` may call ``_reset_peak()`` to start the high-water mark again from the RSS of now
    (Linux's clear_refs), so that building something only the measurement needs does not count."""
    wrapper = f"""
import json, time
def _rss(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
def _reset_peak():
    import ctypes, gc
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # memory freed so far goes back, not kept in the heap
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
import numpy, kindling, kindling.runtime.nn
{prelude}
baseline = _rss("VmRSS")
result = {{}}
{code}
result["peak_rss_mb"] = _rss("VmHWM")
result["baseline_mb"] = baseline
print("RESULT" + json.dumps(result))
"""
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])
