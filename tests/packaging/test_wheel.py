"""The distribution installs one import package, kindling, and nothing generic at the top level;
installed from the wheel alone, ``kindling demo`` runs with nothing of this repository beside it."""
import hashlib
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the Caffe LeNet kindling demo converts, as kindling/fixtures/lenet_mnist/README.md records it
LENET = {"lenet.prototxt": "27384af843338ab90b00c8d1c81de7d5",
         "lenet_iter_10000.caffemodel": "cbec75c1c374b6c1981c4a1eb024ae01"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)], check=True)
    found, = out.glob("kindling-*.whl")
    return found


def test_wheel_has_only_the_kindling_package(wheel):
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


def test_wheel_carries_the_demo_lenet_unchanged(wheel):
    with zipfile.ZipFile(wheel) as z:
        for name, md5 in LENET.items():
            assert hashlib.md5(z.read(f"kindling/fixtures/lenet_mnist/{name}")).hexdigest() == md5, name


def test_demo_runs_from_the_wheel_in_an_empty_venv_and_an_empty_folder(wheel, tmp_path):
    """What a user does: a fresh venv, the wheel with its demo extra (dependencies from the package
    index; pip's cache makes this quick after CI's own install), then the demo from an empty folder
    with no ../shared beside it."""
    env_dir, work = tmp_path / "venv", tmp_path / "empty" / "here"
    work.mkdir(parents=True)
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", f"kindling[demo] @ {wheel.as_uri()}"], check=True,
                   cwd=work)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([env_dir / "bin" / "kindling", "demo", "--epochs", "1"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert str(env_dir) in r.stdout  # the LeNet came from the installation
    top1 = float(re.search(r"held-out as served \(version \d+\): Top-1 ([0-9.]+)", r.stdout).group(1))
    assert top1 >= 0.95, r.stdout
    assert (work / "kindling-demo" / "report.png").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["kindling-demo"]
