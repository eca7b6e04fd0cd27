"""Snapshots survive a kill: a training process killed with SIGKILL while it writes a snapshot
leaves every earlier snapshot whole and loadable (and never a model.N without its
optimMethod.N); repeated optimize() calls keep writing into the one folder."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from kindling.runtime import init, nn
from kindling.runtime.data import ArrayDataSet
from kindling.runtime.optim import SGD, Optimizer, Trigger
from kindling.runtime.optim.checkpoint import load_checkpoint, snapshots

TRAINER = """
import sys
import numpy as np
from kindling.runtime import init, nn
from kindling.runtime.data import ArrayDataSet
from kindling.runtime.optim import SGD, Optimizer, Trigger
init.seed(0)
model = nn.Sequential(nn.Linear(3000, 3000, name="big"), nn.ReLU(name="r"), nn.Linear(3000, 10, name="out"),
                      nn.LogSoftmax(name="p"))  # 36 MB of weights, as much again of momentum per snapshot
rng = np.random.default_rng(0)
data = ArrayDataSet(rng.standard_normal((64, 3000)).astype(np.float32), rng.integers(0, 10, 64))
opt = Optimizer(model, data, nn.ClassNLLCriterion(), SGD(learningrate=0.01, momentum=0.9), Trigger.max_iteration(10000),
                16, workers=0)
opt.set_checkpoint(sys.argv[1], Trigger.several_iteration(1))
opt.optimize()
"""


def test_a_kill_during_a_snapshot_write_leaves_the_earlier_snapshots_intact(tmp_path):
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(folder)])
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            writing = [p for p in folder.glob(".*")] if folder.exists() else []
            if writing and len(snapshots(folder)) >= 2:
                os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing the next one
                break
            time.sleep(0.005)
        else:
            raise AssertionError("no snapshot write was caught in progress")
    finally:
        proc.kill()
        proc.wait()
    left = sorted(p.name for p in folder.iterdir())
    complete = snapshots(folder)
    assert len(complete) >= 2, left
    for snap in complete:  # each complete snapshot loads, checksums and all, with its optimizer state
        model, method = load_checkpoint(snap)
        assert method.state["iteration"] == int(snap.name.split(".")[1])
        assert "momentum" in method.buffers["big.weight"]
    models = {p.name.split(".", 1)[1] for p in folder.glob("model.*")}
    states = {p.name.split(".", 1)[1] for p in folder.glob("optimMethod.*")}
    assert models <= states, "a model.N without its optimMethod.N"
    assert all(p.name.startswith(".") for p in folder.iterdir() if p.name not in
               {s.name for s in complete} | {f"optimMethod.{n}" for n in states}), left


def test_repeated_optimize_calls_keep_one_flat_checkpoint_folder(tmp_path):
    init.seed(0)
    rng = np.random.default_rng(0)
    data = ArrayDataSet(rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40))

    def make(end):
        init.seed(1)
        model = nn.Sequential(nn.Linear(6, 3, name="fc"), nn.LogSoftmax(name="p"))
        return Optimizer(model, data, nn.ClassNLLCriterion(), SGD(learningrate=0.1, momentum=0.9),
                         Trigger.max_iteration(end), 8, workers=0)
    opt = make(4)
    opt.set_checkpoint(tmp_path / "ckpt", Trigger.several_iteration(2))
    opt.optimize()
    opt.end_trigger = Trigger.max_iteration(9)
    opt.optimize()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        f"{kind}.{i}" for kind in ("model", "optimMethod") for i in (2, 4, 6, 8))
    straight = make(9)
    straight.optimize()
    assert np.array_equal(straight.model.find("fc").params["weight"], opt.model.find("fc").params["weight"])
