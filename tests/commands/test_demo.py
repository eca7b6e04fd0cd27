"""`kindling demo`, the README's main job, run as a newcomer runs it: from an empty folder."""
import re
import subprocess
import sys

import kindling


def test_demo_converts_fine_tunes_and_leaves_a_validated_snapshot(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kindling", "demo", "--out", "out"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    before, after = (float(v) for v in re.findall(r"accuracy: ([0-9.]+)\)", r.stdout))
    assert after >= 0.95 and after > before, r.stdout
    snapshot = re.search(r"validated snapshot: (\S+)", r.stdout).group(1)
    meta = kindling.load(tmp_path / snapshot).metadata
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["training"]["validation"]["results"]["Top1Accuracy"] >= 0.95
    assert any((tmp_path / "out" / "logs" / "demo" / "validation").iterdir())
