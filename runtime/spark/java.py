"""Which Java pyspark will start, checked before it starts: pyspark 4 needs Java 17 or 21, and
without one it fails with "Java gateway process exited before sending its port number"."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

SUPPORTED = (17, 21)


def java_command() -> str | None:
    """The java Spark's launcher runs: $JAVA_HOME/bin/java, else java on the PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def major_version(version_output: str) -> int | None:
    """17 from `java -version`'s 'openjdk version "17.0.15" 2025-04-15'; 8 from '"1.8.0_392"'."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_java() -> int:
    """The Java major version pyspark will use; raises ValueError saying what to install or set."""
    java = java_command()
    where = f"JAVA_HOME={os.environ['JAVA_HOME']}" if os.environ.get("JAVA_HOME") else "the PATH"
    if java is None:
        raise ValueError(f"no Java found ({where}): Spark needs Java {' or '.join(map(str, SUPPORTED))} "
                         f"(e.g. apt-get install openjdk-17-jre-headless, then set JAVA_HOME or put java on the PATH)")
    try:
        r = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ValueError(f"{java} -version failed ({e}): Spark needs a working Java 17 or 21") from None
    major = major_version(r.stderr + r.stdout)
    if major is None or major < SUPPORTED[0]:
        found = f"Java {major}" if major else "an unknown Java"
        raise ValueError(f"{java} is {found}: Spark 4 needs Java {' or '.join(map(str, SUPPORTED))} "
                         f"(set JAVA_HOME to one)")
    return major
