"""A short fuzz campaign in the normal suite: a few hundred inputs per target, every one run as the
long campaign runs it (forked worker, memory and time limits); any bad outcome fails with the
input's number (replay it with python -m tests.fuzz --replay)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
INPUTS = int(os.environ.get("KINDLING_FUZZ_INPUTS", "300"))


@pytest.mark.fuzz
@pytest.mark.parametrize("target", list(TARGETS))
def test_short_campaign_has_no_bad_outcome(target, tmp_path):
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "tests.fuzz", "--inputs", str(INPUTS), "--targets", target,
                        "--seed", "7", "--json", str(report), "--findings", str(tmp_path / "findings")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    counts = json.loads(report.read_text())[target] if report.exists() else {}
    assert r.returncode == 0 and counts.get("bad") == 0, f"{r.stdout}\n{r.stderr[-3000:]}"
    assert counts["ok"] + counts["clean"] == INPUTS and counts["ok"] > 0 and counts["clean"] > 0, counts


@pytest.mark.fuzz
def test_coverage_guided_mode_runs(tmp_path):
    """python -m tests.fuzz.guided: atheris (libFuzzer) over instrumented kindling, from the seeds."""
    r = subprocess.run([sys.executable, "-m", "tests.fuzz.guided", "labels", str(tmp_path / "corpus"), "-runs=300",
                        "-rss_limit_mb=2048", "-timeout=10", "-seed=7"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "Done 300 runs" in r.stderr, r.stderr[-3000:]
    cov = [int(line.split("cov: ")[1].split()[0]) for line in r.stderr.splitlines() if "cov: " in line]
    assert cov and cov[-1] > 5, "kindling's code is instrumented: coverage grows"
