"""SocketExchange against numpy sums and DriverExchange, in threads and in separate processes;
its timeouts, a peer killed or frozen mid-exchange, peers out of step or foreign, its sockets."""
from __future__ import annotations

import gc
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest

from exchange_peers import ProcessTasks, all_reduce, digest, reference_sum, run_threads, vector
from kindling.runtime.spark.allreduce import ExchangeError, SocketExchange
from kindling.runtime.spark.exchange import DriverExchange

HOST = "127.0.0.1"
SIZES = [0, 1, 2, 3, 7, 1001, 65537]


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def open_fds() -> int:
    gc.collect()  # sockets of earlier tests waiting to be collected would blur the count
    return len(os.listdir("/proc/self/fd"))


# ---- equal to numpy and to DriverExchange (threads) ----------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_all_reduce_equals_rank_order_sum_and_driver_exchange(world):
    def task(rank, gather):
        out = {}
        # 1 KB chunks: a 65537-element shard crosses many chunk boundaries
        with SocketExchange.start(rank, world, gather, host=HOST, timeout=20, chunk_bytes=1024) as ex:
            driver = DriverExchange(rank, world, gather, chunk_bytes=4096)
            for n in SIZES:
                for round_ in range(3):
                    out[(n, round_)] = (all_reduce(ex, round_, n), all_reduce(driver, round_, n))
        return out

    results = run_threads(world, task)
    for n in SIZES:
        for round_ in range(3):
            expected = bits(reference_sum(world, round_, n))
            for rank, out in enumerate(results):
                sock, drv = out[(n, round_)]
                assert np.array_equal(bits(sock), expected), f"world {world} n {n} round {round_} rank {rank}"
                assert np.array_equal(bits(drv), expected), f"DriverExchange world {world} n {n} rank {rank}"


def test_reduce_scatter_returns_only_the_own_shard_and_leaves_the_input():
    n = 10_007

    def task(rank, gather):
        with SocketExchange.start(rank, 3, gather, host=HOST, timeout=20, chunk_bytes=4096) as ex:
            v = vector(rank, 0, n)
            before = v.copy()
            shard = ex.reduce_scatter(v).copy()
            assert np.array_equal(bits(v), bits(before))
            return ex.shard(n), shard

    expected = reference_sum(3, 0, n)
    for (lo, hi), shard in run_threads(3, task):
        assert np.array_equal(bits(shard), bits(expected[lo:hi]))


def test_large_vector_in_default_chunks():
    n = 3_000_001  # 12 MB: several 4 MB chunks per peer, an odd split

    def task(rank, gather):
        with SocketExchange.start(rank, 2, gather, host=HOST, timeout=30) as ex:
            return digest(all_reduce(ex, 0, n)), digest(all_reduce(ex, 1, n))

    expected = digest(reference_sum(2, 0, n)), digest(reference_sum(2, 1, n))
    assert run_threads(2, task) == [expected, expected]


def test_world_one_needs_no_sockets_and_no_rendezvous():
    def no_rendezvous(text):
        raise AssertionError("a single task must not call the rendezvous")

    fds = open_fds()
    ex = SocketExchange.start(0, 1, no_rendezvous, host=HOST)
    assert open_fds() == fds
    v = vector(0, 0, 1001)
    assert np.array_equal(bits(ex.reduce_scatter(v)), bits(reference_sum(1, 0, 1001)))
    flat = v.copy()
    ex.all_gather(flat)
    assert np.array_equal(bits(flat), bits(v))
    ex.close()


# ---- sockets: bound to the host, released by close -----------------------------------------------
def test_listens_on_the_given_host_only_and_close_releases_every_socket():
    ports = []

    def task(rank, gather):
        def checking_gather(text):
            port = int(text.split()[2])
            ports.append(port)
            # bound to 127.0.0.1 alone: another loopback address of this machine is refused
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.2", port), timeout=5).close()
            return gather(text)
        ex = SocketExchange.start(rank, 3, checking_gather, host=HOST, timeout=20)
        all_reduce(ex, 0, 100)
        return ex

    fds = open_fds()
    exchanges = run_threads(3, task)
    # per task: its end of a connection to each peer and its selector; the listeners are closed
    assert open_fds() - fds == 3 * (2 + 1)
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, port), timeout=5).close()
    for ex in exchanges:
        ex.close()
    assert open_fds() == fds


# ---- arguments -------------------------------------------------------------------------------------
def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        SocketExchange.start(2, 2, lambda t: [t], host=HOST)
    for world in (1, 2):
        with pytest.raises(ValueError, match="timeout"):
            SocketExchange.start(0, world, lambda t: [t], host=HOST, timeout=0)
    ex = SocketExchange.start(0, 1, lambda t: [t], host=HOST)
    with pytest.raises(ValueError, match="float64"):
        ex.all_gather(np.zeros(4))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        ex.all_gather(np.zeros(8, np.float32)[::2])


# ---- peers out of step, foreign, frozen ------------------------------------------------------------
def _expect_errors(world, task, *, within: float):
    """Runs the tasks; every rank's ExchangeError message, which each must raise within ``within`` s."""
    def wrapped(rank, gather):
        ex = SocketExchange.start(rank, world, gather, host=HOST, timeout=within)
        start = time.monotonic()
        with pytest.raises(ExchangeError) as info:
            task(rank, ex)
        assert time.monotonic() - start < within + 2
        with pytest.raises(ExchangeError, match="closed after an error"):
            ex.reduce_scatter(np.zeros(4, np.float32))  # a broken exchange stays broken
        return str(info.value)
    return run_threads(world, wrapped)


def test_vectors_of_different_lengths_are_refused():
    messages = _expect_errors(2, lambda rank, ex: ex.reduce_scatter(np.ones(10 + 2 * rank, np.float32)), within=10)
    assert any("vector of 12 elements, this task one of 10" in m for m in messages), messages


def test_collectives_out_of_step_are_refused():
    def task(rank, ex):
        flat = np.ones(10, np.float32)
        if rank == 0:
            ex.reduce_scatter(flat)
        else:
            ex.all_gather(flat)
    messages = _expect_errors(2, task, within=10)
    assert any("out of step" in m for m in messages), messages


def test_a_frozen_peer_times_out_naming_it():
    released = threading.Event()

    def task(rank, gather):
        ex = SocketExchange.start(rank, 2, gather, host=HOST, timeout=0.5)
        if rank == 1:  # connected, then never takes part
            released.wait(10)
            ex.close()
            return None
        start = time.monotonic()
        try:
            with pytest.raises(ExchangeError) as info:
                all_reduce(ex, 0, 1000)
            return str(info.value), time.monotonic() - start
        finally:
            released.set()

    (message, waited), _ = run_threads(2, task)
    assert 0.5 <= waited < 3, waited
    assert "rank 0: peer rank 1 at 127.0.0.1:" in message and "no progress for 0.5 s" in message, message


class FakePeer:
    """Plays rank 1 of a world of 2 from a raw socket: a correct hello, then whatever the test sends."""

    def __init__(self):
        self.line = f"kindling-exchange/1 {HOST} 9 fake"
        self.sock = None

    def gather_for_rank0(self, text):
        lines = [text, self.line]
        session = hashlib.sha256("\n".join(lines).encode()).digest()[:16]
        self.sock = socket.create_connection((HOST, int(text.split()[2])), timeout=5)
        self.sock.sendall(struct.pack("<4sH16sII", b"KXHI", 1, session, 1, 2))
        return lines

    def after_start(self, send: bytes):
        reply = self.sock.recv(30)
        assert reply[:4] == b"KXHI" and struct.unpack("<I", reply[22:26])[0] == 0
        self.sock.sendall(send)


@pytest.mark.parametrize("stream, why", [
    (b"GET / HTTP/1.1\r\n" * 4, "not a kindling exchange header"),
    # a correct header for n=10 (rank 0's shard is [0, 5): 20 bytes), 20 bytes, then a trailer of round 7
    (struct.pack("<4sB3xIQQQQ", b"KXMS", 1, 1, 1, 10, 0, 5) + bytes(20) + struct.pack("<4sQ", b"KXND", 7),
     "more or fewer bytes than its header"),
    (struct.pack("<4sB3xIQQQQ", b"KXMS", 1, 1, 1, 10, 0, 4), "sent the slice [0, 4), expected [0, 5)"),
])
def test_a_peer_sending_garbage_is_named(stream, why):
    fake = FakePeer()
    ex = SocketExchange.start(0, 2, fake.gather_for_rank0, host=HOST, timeout=5)
    fake.after_start(stream)
    with pytest.raises(ExchangeError, match=r"peer rank 1 at 127\.0\.0\.1:\d+ .*" + why.replace("[", r"\[")
                       .replace(")", r"\)").replace("(", r"\(")):
        ex.reduce_scatter(np.ones(10, np.float32))
    fake.sock.close()


@pytest.mark.parametrize("intruder, why", [
    (b"\x16\x03\x01" + bytes(27), "does not speak kindling-exchange/1"),   # a TLS client, say
    (struct.pack("<4sH16sII", b"KXHI", 1, bytes(16), 1, 2), "belongs to another exchange"),  # a stale task
])
def test_a_connection_from_outside_the_exchange_is_dropped(caplog, intruder, why):
    def task(rank, gather):
        def gather_with_intruder(text):
            if rank == 0:  # something else finds the port before rank 1 can
                junk = socket.create_connection((HOST, int(text.split()[2])), timeout=5)
                junk.sendall(intruder)
                junk.close()
            return gather(text)
        with SocketExchange.start(rank, 2, gather_with_intruder, host=HOST, timeout=10) as ex:
            return digest(all_reduce(ex, 0, 999))

    with caplog.at_level(logging.WARNING, logger="kindling.spark"):
        assert run_threads(2, task) == [digest(reference_sum(2, 0, 999))] * 2
    assert "dropped a connection from 127.0.0.1:" in caplog.text and why in caplog.text, caplog.text


def test_a_peer_gone_before_connecting_is_named():
    closed = socket.create_server((HOST, 0))
    port = closed.getsockname()[1]
    closed.close()
    line = f"kindling-exchange/1 {HOST} {port} gone"
    with pytest.raises(ExchangeError, match=rf"cannot connect to rank 0 at 127\.0\.0\.1:{port}"):
        SocketExchange.start(1, 2, lambda text: [line, text], host=HOST, timeout=5)


def test_nobody_connecting_is_a_timeout_naming_the_missing_rank():
    line = f"kindling-exchange/1 {HOST} 9 never"
    with pytest.raises(ExchangeError, match=r"no connection from rank 1 \(127\.0\.0\.1:9\) in time"):
        SocketExchange.start(0, 2, lambda text: [text, line], host=HOST, timeout=0.3)


def test_a_rendezvous_out_of_step_is_refused():
    with pytest.raises(ExchangeError, match="rank 1 sent 'epoch 3' to the rendezvous"):
        SocketExchange.start(0, 2, lambda text: [text, "epoch 3"], host=HOST, timeout=1)


# ---- separate processes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spawn():
    return multiprocessing.get_context("spawn")


@pytest.mark.parametrize("world", [2, 3, 4])
def test_processes_equal_numpy_and_driver_exchange(spawn, world):
    sizes = [0, 1, 3, 1001, 1_000_003]
    spec = {"mode": "equal", "sizes": sizes, "rounds": 2, "timeout": 30, "chunk_bytes": 256 << 10,
            "driver_chunk_bytes": 1 << 20}
    with ProcessTasks(spawn, world, spec) as tasks:
        done = tasks.collect("done", range(world))
    for n in sizes:
        for round_ in range(2):
            expected = digest(reference_sum(world, round_, n))
            for rank, out in done.items():
                assert out[(n, round_)] == (expected, expected), f"world {world} n {n} round {round_} rank {rank}"


def test_a_killed_peer_is_an_error_at_once_for_the_others(spawn):
    """Rank 2's process is killed while the three exchange 16 MB vectors in a loop: the others
    raise ExchangeError at once (the kernel closes the dead task's connections), no hang."""
    with ProcessTasks(spawn, 3, {"mode": "loop", "n": 4_000_000, "timeout": 30}) as tasks:
        pid = tasks.collect("started", [2])[2]
        tasks.wait_for_round(2, 2)  # the tasks are exchanging
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        errors = tasks.collect("error", [0, 1])
    for rank, (kind, message, when, _) in errors.items():
        assert kind == "ExchangeError", message
        assert when - killed < 5, f"rank {rank} noticed after {when - killed:.1f} s"
    assert any("peer rank 2 at 127.0.0.1:" in e[1] for e in errors.values()), errors


def test_a_frozen_peer_process_times_out(spawn):
    """Rank 1's process is stopped (SIGSTOP: alive, connections open, silent, as a hung host):
    rank 0 raises ExchangeError naming it after the timeout."""
    with ProcessTasks(spawn, 2, {"mode": "loop", "n": 1_000_000, "timeout": 1.0}) as tasks:
        pid = tasks.collect("started", [1])[1]
        tasks.wait_for_round(1, 2)
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        kind, message, when, _ = tasks.collect("error", [0])[0]
        os.kill(pid, signal.SIGKILL)
    assert kind == "ExchangeError", message
    assert "peer rank 1 at 127.0.0.1:" in message and "no progress for 1 s" in message, message
    assert 0.9 <= when - stopped < 4, when - stopped


def test_memory_stays_within_one_shard_and_the_chunk_buffers(spawn):
    """Extra memory (tracemalloc's peak, which numpy reports to) during an update step of 32 MB
    between two processes: SocketExchange needs the shard it returns and one chunk buffer per
    peer; DriverExchange holds copies of every task's whole vector."""
    n, chunk = 8_000_000, 1 << 20
    with ProcessTasks(spawn, 2, {"mode": "memory", "n": n, "timeout": 30, "chunk_bytes": chunk}) as tasks:
        got = tasks.collect("memory", [0, 1])
    for rank, (socket_extra, driver_extra) in got.items():
        assert socket_extra <= 4 * n // 2 + chunk + (256 << 10), (rank, socket_extra)
        assert driver_extra > 4 * n, (rank, driver_extra)  # the measure does see whole-vector copies
