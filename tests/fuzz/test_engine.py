"""The harness sorts outcomes as its README says: a target that misbehaves in each way is caught
as that kind of bad, and a clean error must name the input."""
import os
import signal

import numpy as np
import pytest

from fuzz.engine import Campaign, classify
from kindling.runtime.errors import DataError


def _writes(tmp, data):
    path = tmp / "input.bin"
    path.write_bytes(data)
    return path


def named_error(data, tmp):
    raise DataError(f"{_writes(tmp, data)}: damaged")


def unnamed_error(data, tmp):
    _writes(tmp, data)
    raise DataError("damaged")


def other_exception(data, tmp):
    _writes(tmp, data)
    return {}["missing"]


def memory_error(data, tmp):
    _writes(tmp, data)
    np.empty(1 << 40, np.uint8)  # over the worker's address-space limit


def leaves_output(data, tmp):
    path = _writes(tmp, data)
    (tmp / "out").mkdir()
    (tmp / "out" / "model.kdl").write_bytes(b"half")
    raise DataError(f"{path}: failed after writing")


def leaves_temp(data, tmp):
    _writes(tmp, data)
    (tmp / ".model.kdl.123.tmp").write_bytes(b"")


def crashes(data, tmp):
    os.kill(os.getpid(), signal.SIGSEGV)


def spins(data, tmp):
    while True:
        pass


@pytest.mark.parametrize("target, outcome, kind", [
    (lambda d, t: _writes(t, d), "ok", ""), (named_error, "clean", "DataError"), (unnamed_error, "bad", "unnamed"),
    (other_exception, "bad", "exception"), (leaves_output, "bad", "leftover"), (leaves_temp, "bad", "leftover")])
def test_classify(tmp_path, target, outcome, kind):
    r = classify(target, b"data", tmp_path)
    assert (r.outcome, r.kind) == (outcome, kind), r.detail


def test_workers_catch_memory_crashes_and_hangs_and_are_replaced():
    campaign = Campaign(memory_error, memory_mb=256, timeout=1)
    try:
        assert (campaign.run(b"x").outcome, campaign.run(b"x").kind) == ("bad", "memory")
        for target, outcome, kind in ((crashes, "bad", "crash"), (spins, "bad", "hang"),
                                      (named_error, "clean", "DataError")):
            campaign.target = target
            campaign._stop_worker()  # the next input forks a worker running the new target
            r = campaign.run(b"x")
            assert (r.outcome, r.kind) == (outcome, kind), r.detail
        assert campaign.counts == {"bad": 4, "clean": 1}
    finally:
        campaign.close()
