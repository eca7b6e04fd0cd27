"""Shared fixtures of the serving tests: real snapshots made once per session by fine-tuning the
real Caffe LeNet (snapshots.py); the server harness is in harness.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import snapshots  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """{iteration: Top1Accuracy} and the folder of 40 validated snapshots (model.1 .. model.40)."""
    folder = tmp_path_factory.mktemp("trained")
    return snapshots.train_snapshots(folder), folder
