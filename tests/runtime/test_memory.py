"""Allocation is checked before it happens: a shape too large for the machine is refused with its
size in GB (no MemoryError, no pages for the OOM killer), and deferred modules hold no memory."""
import os
import resource

import numpy as np
import pytest

from kindling.runtime import init, memory, nn
from kindling.runtime.errors import KindlingError, TooLarge


def test_available_is_the_least_of_machine_and_address_space_limit():
    machine = memory._meminfo("MemAvailable")
    assert machine is not None and 0 < memory.available() <= machine
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child under `ulimit -v`: the limit, not the machine, is what is left
        status = 1
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            vm = memory._address_space_left()  # None: unlimited so far
            resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))
            left = memory.available()
            try:
                np.empty(16 << 30, np.uint8)  # the allocation a check would have refused
            except MemoryError:
                status = 0 if vm is None and 0 < left < 8 << 30 else 2
            os.write(write, str(left).encode())
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    os.close(write)
    assert os.waitstatus_to_exitcode(status) == 0, os.read(read, 100)


def test_a_parameter_larger_than_memory_is_refused_with_its_size():
    with pytest.raises(TooLarge, match=r"a parameter of shape \[1099511627776, 8\] \(float32\) needs 35,184.4 GB "
                                       r"of memory, but only [\d,.]+ GB is available"):
        nn.Linear(8, 1 << 40)
    assert issubclass(TooLarge, KindlingError) and issubclass(TooLarge, ValueError)
    with pytest.raises(TooLarge, match="too many for any machine"):
        nn.Scale([1 << 40, 1 << 40])


def test_negative_or_fractional_dimensions_are_refused():
    with pytest.raises(ValueError, match=r"shape \[-1\]: dimensions must be non-negative integers"):
        nn.Bias([-1])
    with pytest.raises(ValueError, match="non-negative integers"):
        init.constant((2, 1.5), 0.0)


def test_deferred_modules_hold_no_memory_until_filled():
    with init.deferred():
        m = nn.Linear(1 << 20, (1 << 31) - 1, name="fc")   # 8 PB of weights if allocated
        bn = nn.BatchNorm2d(1 << 30, name="bn")
    assert m.params["weight"].shape == ((1 << 31) - 1, 1 << 20)
    for a in [*m.params.values(), *bn.params.values(), *bn.buffers.values()]:
        assert a.strides == (0,) * a.ndim and not a.flags.writeable
    fresh = nn.BatchNorm2d(3)  # outside the block: real, writable values
    assert fresh.buffers["running_var"].tolist() == [1, 1, 1] and fresh.buffers["running_var"].flags.writeable
