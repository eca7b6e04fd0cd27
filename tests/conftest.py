import os

import pytest

# Tests compare against PyTorch on the CPU; keep both on the same, small thread count.
os.environ.setdefault("KINDLING_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch
