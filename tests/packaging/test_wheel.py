"""The distribution installs one import package, kindling, and nothing generic at the top level."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_has_only_the_kindling_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True)
    wheel, = tmp_path.glob("kindling-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"kindling"}, f"unexpected top-level entries in the wheel: {sorted(top)}"
    for sub in ("runtime", "converters", "serving", "protos", "commands"):
        assert f"kindling/{sub}/__init__.py" in names, f"kindling.{sub} missing from the wheel"
    # Every Python file of the mapped folders ships (a subpackage left out of pyproject would vanish).
    for folder, sub in (("runtime", "runtime"), ("converters", "converters"), ("protos", "protos"),
                        ("serving", "serving")):
        for py in (REPO / folder).rglob("*.py"):
            rel = py.relative_to(REPO / folder).as_posix()
            assert f"kindling/{sub}/{rel}" in names, f"{folder}/{rel} is not in the wheel (add its package to pyproject)"


def test_console_command_and_imports():
    out = subprocess.run([sys.executable, "-m", "kindling", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout or "COMMAND" in out.stdout
    import kindling.runtime.nn as nn
    assert nn.Conv2d.__module__ == "kindling.runtime.layers.conv2d"
