"""`kindling demo`, the README's first command, run as a newcomer runs it: from an empty folder, in
a session of its own (as a terminal runs it), so that every process it starts (the Spark JVM, its
Python workers, the server) can be found afterwards, and Ctrl-C reaches all of them as it would."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import kindling
from kindling.commands import demo_report

DEMO = [sys.executable, "-m", "kindling", "demo", "--out", "out", "--epochs", "1"]


def session_processes(sid: int) -> list[str]:
    """The live processes of a session (pid and command line)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            state, _ppid, _pgrp, session = (d / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(session) == sid and state != "Z":
            found.append(f"{d.name}: {cmd}")
    return found


def assert_nothing_left(sid: int, ports=(), timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(sid) == [], "processes left behind"
    for port in ports:
        with socket.socket() as s:  # nothing listens there any more (closed connections may linger in TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()


def start(cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(DEMO, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One whole run (1 epoch), shared by the tests that read what it printed and wrote."""
    cwd = tmp_path_factory.mktemp("demo")
    p = start(cwd)
    output, _ = p.communicate(timeout=600)
    assert_nothing_left(p.pid, [int(m) for m in re.findall(r"listening on 127\.0\.0\.1:(\d+)", output)])
    return cwd, p.returncode, output


def test_demo_exits_0_with_held_out_top1_at_least_095_as_served(finished):
    cwd, code, output = finished
    assert code == 0, output[-3000:]
    before = float(re.search(r"as it came from Caffe .*: Top1Accuracy ([0-9.]+)", output).group(1))
    top1, top5 = (float(v) for v in re.search(r"held-out as served \(version \d+\): Top-1 ([0-9.]+), "
                                               r"Top-5 ([0-9.]+) on 450 digits", output).groups())
    assert 0.7 < before < 0.95, output  # what a MNIST LeNet makes of scikit-learn's digits
    assert top1 >= 0.95 and top5 >= top1, output
    assert "server stopped with SIGTERM (exit 0)" in output
    shown = re.findall(r"digits/(\d)/\d+\.jpg: (\d) ([0-9.]+)  \(truth (\d)\)", output)
    assert len(shown) == 10 and {t for _, _, _, t in shown} == set("0123456789")
    assert all(folder == truth for folder, _, _, truth in shown)


def test_demo_leaves_a_served_snapshot_logs_and_its_report(finished):
    cwd, code, output = finished
    out = cwd / "out"
    snapshots = sorted((out / "models" / "digits").glob("model.*"))
    assert snapshots, output
    meta = kindling.load(snapshots[-1]).metadata
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["training"]["validation"]["results"]["Top1Accuracy"] >= 0.95
    assert any((out / "logs" / "demo" / "validation").iterdir())
    assert '"event": "stopped"' in (out / "logs" / "serve.log").read_text()
    assert f"tensorboard --logdir {Path('out') / 'logs'}" in output
    with Image.open(out / "report.png") as png:
        assert png.format == "PNG"
        assert png.size == (round(demo_report.SIZE[0] * demo_report.DPI), round(demo_report.SIZE[1] * demo_report.DPI))
        assert len(png.getcolors(1 << 16) or range(1 << 16)) > 50  # drawn, not blank
    assert not list(out.rglob(".*.tmp"))
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]  # nothing written outside --out


def ctrl_c(p):
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground process group


def to_the_demo_alone(sig):
    return lambda p: os.kill(p.pid, sig)  # its own clean-up must stop what it started


# the line printed once the demo is in each stage, how long to let it run there, and how to stop it
STAGES = {
    "converting, Ctrl-C": (r"^1\. kindling convert caffe", 0.5, ctrl_c),
    "writing digits, SIGTERM": (r"^converted lenet", 0.3, to_the_demo_alone(signal.SIGTERM)),
    "training on Spark, Ctrl-C": (r"^pre-flight executor", 3.0, ctrl_c),
    "serving, SIGINT to the demo alone": (r"listening on 127\.0\.0\.1:\d+", 0.5, to_the_demo_alone(signal.SIGINT)),
}


@pytest.mark.parametrize("stage", STAGES)
def test_interrupted_it_leaves_no_process_or_port_behind(tmp_path, stage):
    pattern, linger, interrupt = STAGES[stage]
    p = start(tmp_path)
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if re.search(pattern, line):
                break
        else:
            pytest.fail(f"the demo ended before {stage}:\n{''.join(seen)[-3000:]}")
        time.sleep(linger)
        interrupt(p)
        rest, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    output = "".join(seen) + rest
    # 130, or killed by SIGINT: CPython re-raises the signal on exit when an extension module's
    # import ran code through PyRun_* while the KeyboardInterrupt arrived; a shell shows 130 for both
    assert p.returncode in (130, -signal.SIGINT), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert_nothing_left(p.pid, [int(m) for m in re.findall(r"listening on 127\.0\.0\.1:(\d+)", output)])
    assert not list(tmp_path.rglob(".*.tmp"))
