import os

import pytest

# Tests compare against PyTorch on the CPU; keep both on the same, small thread count.
os.environ.setdefault("KINDLING_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def torch():
    import torch  # a test dependency: its absence is a failure, not a skip
    torch.set_num_threads(2)
    torch.manual_seed(0)
    return torch
