"""The Java check before a Spark session starts: the Java this machine has passes; none, or one
too old, is a clear error (not pyspark's "Java gateway process exited")."""
import os
import shutil
import subprocess
import sys

import pytest

import kindling
from kindling.runtime import nn

from kindling.runtime.spark.java import check_java, major_version


def test_the_java_here_is_found_with_its_version():
    java = shutil.which("java") if not os.environ.get("JAVA_HOME") else os.path.join(os.environ["JAVA_HOME"], "bin", "java")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    assert check_java() == major_version(out) >= 17


@pytest.mark.parametrize("line, major", [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_392"', 8),          # Java 8 and older number themselves 1.x
    ('openjdk version "11.0.21" 2023-10-17', 11),
    ("no version here", None),
])
def test_major_version_reads_every_numbering(line, major):
    assert major_version(line) == major


def test_no_java_is_a_clear_error_from_the_train_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java on it
    (tmp_path / "digits" / "0").mkdir(parents=True)
    kindling.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, name="fc")), tmp_path / "x.kdl")
    r = subprocess.run([sys.executable, "-m", "kindling", "train", "--model", "x.kdl", "--train", "digits",
                        "--checkpoint", "ckpt", "--master", "local[1]", "--input-size", "2,2",
                        "--channel-order", "gray"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "no Java found (the PATH): Spark needs Java 17 or 21" in r.stderr, r.stderr
