"""``SocketExchange``: the sharded all-reduce of ``exchange.Exchange`` over TCP between the tasks.

Each pair of tasks holds one connection (``mesh.connect``), used in both directions at once. The
driver carries nothing but the tasks' addresses, once, whereas ``DriverExchange`` sends every
task's whole vector, base64-encoded, through the driver to every task.

On the wire (little-endian), each collective sends every peer one message: a header (``_HEADER``:
kind, sender, round, n, the slice [lo, hi)), the slice as raw float32, a trailer (``_TRAILER``:
the round again). Every header and trailer is checked against what this task expects, so a
peer out of step or a foreign one is an ``ExchangeError``, never summed.

Memory: reduce_scatter receives each peer's piece of this task's shard a chunk at a time into
one chunk buffer per peer and adds the chunk in rank order (the order ``DriverExchange`` uses,
so the sums are bit-identical) into one preallocated shard; all_gather receives straight into
the caller's vector. One thread drives all sockets through a selector, so sending and receiving
go on together and a full socket buffer cannot deadlock an exchange.
"""
from __future__ import annotations

import os
import selectors
import socket
import struct
import sys
import time
from typing import Callable

import numpy as np

from .exchange import Exchange, shard_bounds
from .mesh import DEFAULT_TIMEOUT, ExchangeError, connect, host_of

__all__ = ["SocketExchange", "ExchangeError", "DEFAULT_TIMEOUT", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 4 << 20   # bytes of a peer's piece buffered at a time during reduce_scatter

_HEADER = struct.Struct("<4sB3xIQQQQ")      # magic, kind, sender rank, round, n, lo, hi
_HEADER_MAGIC = b"KXMS"
_TRAILER = struct.Struct("<4sQ")            # magic, round
_TRAILER_MAGIC = b"KXND"
_KINDS = {1: "reduce_scatter", 2: "all_gather"}
_REDUCE, _GATHER = 1, 2
_LITTLE = sys.byteorder == "little"


def _positive(timeout: float) -> float:
    if not timeout > 0:
        raise ValueError(f"SocketExchange: timeout must be > 0 seconds, got {timeout}")
    return float(timeout)


def _sum_in_order(pieces: list[np.ndarray], out: np.ndarray) -> None:
    """out = ((p0 + p1) + p2) + ...: rank order, as DriverExchange adds; the first two in one pass."""
    if len(pieces) == 1:
        np.copyto(out, pieces[0])
        return
    np.add(pieces[0], pieces[1], out=out)
    for piece in pieces[2:]:
        np.add(out, piece, out=out)


def _wire(a: np.ndarray) -> np.ndarray:
    """``a`` as little-endian float32 bytes to send (no copy on little-endian hosts)."""
    return a if _LITTLE else a.astype("<f4")


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(a).cast("B")


class _Inbound:
    """One peer's message of one collective: a header, payload segments, a trailer, received in
    order. ``gate`` (a payload segment index -> bool) holds a segment back until its buffer is free."""

    def __init__(self, expected_header: bytes, payload: list[memoryview], round_: int,
                 gate: Callable[[int], bool] | None = None):
        self.expected_header, self.round = expected_header, round_
        self.segments = [memoryview(bytearray(_HEADER.size)), *payload, memoryview(bytearray(_TRAILER.size))]
        self.index, self.filled, self.gate = 0, 0, gate
        self.payload_done = 0   # payload segments complete

    def done(self) -> bool:
        return self.index == len(self.segments)

    def want(self) -> memoryview | None:
        """Where the next bytes go, or None when finished or held back by the gate."""
        if self.done():
            return None
        k = self.index - 1
        if self.gate is not None and 0 <= k < len(self.segments) - 2 and not self.gate(k):
            return None
        return self.segments[self.index][self.filled:]

    def got(self, nbytes: int) -> bytes | None:
        """Accounts for received bytes; returns a finished header or trailer to check."""
        self.filled += nbytes
        seg = self.segments[self.index]
        if self.filled < len(seg):
            return None
        finished = self.index
        self.index, self.filled = self.index + 1, 0
        while self.index < len(self.segments) - 1 and len(self.segments[self.index]) == 0:
            self.index += 1  # empty payload segments (an empty slice)
        if finished in (0, len(self.segments) - 1):
            return bytes(seg)
        self.payload_done = finished
        return None


class _Outbound:
    """One message to one peer: buffers sent in order, as far as the socket takes them."""

    def __init__(self, parts: list[memoryview]):
        self.parts = [p for p in parts if len(p)]
        self.index = self.offset = 0

    def done(self) -> bool:
        return self.index == len(self.parts)

    def send(self, sock: socket.socket) -> int:
        sent = sock.send(self.parts[self.index][self.offset:])
        self.offset += sent
        if self.offset == len(self.parts[self.index]):
            self.index, self.offset = self.index + 1, 0
        return sent


class SocketExchange(Exchange):
    """The ``Exchange`` collectives over TCP connections between the tasks (see the module doc).
    Build it with ``start`` (any rendezvous) or ``from_barrier`` (a Spark barrier task)."""

    def __init__(self, rank: int, world: int, peers: dict[int, tuple[socket.socket, str]], *,
                 timeout: float = DEFAULT_TIMEOUT, chunk_bytes: int = DEFAULT_CHUNK):
        super().__init__(rank, world)
        self.timeout = _positive(timeout)
        self._chunk = max(1, int(chunk_bytes) // 4)
        self._socks = {r: s for r, (s, _) in peers.items()}
        self._addresses = {r: a for r, (_, a) in peers.items()}
        for s in self._socks.values():
            s.setblocking(False)
        self._selector = selectors.DefaultSelector() if peers else None
        self._round = 0
        self._sum = np.empty(0, np.float32)
        self._buffers = {r: np.empty(0, "<f4") for r in peers}
        self._broken: str | None = None

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def start(cls, rank: int, world: int, all_gather_text: Callable[[str], list[str]], *, host: str,
              port: int = 0, timeout: float = DEFAULT_TIMEOUT, chunk_bytes: int = DEFAULT_CHUNK) -> "SocketExchange":
        """Listens on ``host`` (this task's own address: never a wildcard unless you pass one),
        swaps addresses through ``all_gather_text`` (called once, by every task, when world > 1),
        and connects every pair of tasks: the higher rank dials the lower one."""
        Exchange(rank, world)  # checks rank and world
        _positive(timeout)
        peers = connect(rank, world, all_gather_text, host=host, port=port, timeout=timeout) if world > 1 else {}
        return cls(rank, world, peers, timeout=timeout, chunk_bytes=chunk_bytes)

    @classmethod
    def from_barrier(cls, context, *, timeout: float = DEFAULT_TIMEOUT,
                     chunk_bytes: int = DEFAULT_CHUNK) -> "SocketExchange":
        """In a Spark barrier task: rank = partitionId, world = the stage's tasks, listening on
        this executor's address (SPARK_LOCAL_IP when set), rendezvous through allGather."""
        infos = context.getTaskInfos()
        rank = context.partitionId()
        host = os.environ.get("SPARK_LOCAL_IP") or host_of(infos[rank].address)
        return cls.start(rank, len(infos), context.allGather, host=host, timeout=timeout, chunk_bytes=chunk_bytes)

    # ---- the collectives -----------------------------------------------------------------------
    def reduce_scatter(self, flat):
        vec = np.ascontiguousarray(flat, np.float32).reshape(-1)
        n = vec.size
        lo, hi = self.shard(n)
        if self._sum.size < hi - lo:  # kept at the largest shard: no page faults when sizes alternate
            self._sum = np.empty(hi - lo, np.float32)
        total = self._sum[:hi - lo]
        if self.world == 1:
            np.copyto(total, vec[lo:hi])
            return total
        self._begin()
        chunk = self._chunk
        chunks = -(-(hi - lo) // chunk)
        summed = [0]  # chunks of the shard added up so far
        inbound, outbound = {}, {}
        wire = _wire(vec)
        for r in self._socks:
            a, b = shard_bounds(n, self.world, r)
            outbound[r] = self._message(_REDUCE, n, a, b, wire[a:b])
            if self._buffers[r].size < min(chunk, hi - lo):
                self._buffers[r] = np.empty(min(chunk, hi - lo), "<f4")
            buf = _bytes(self._buffers[r])
            payload = [buf[:4 * (min(hi - lo, (c + 1) * chunk) - c * chunk)] for c in range(chunks)]
            inbound[r] = _Inbound(self._header(_REDUCE, r, n, lo, hi), payload, self._round,
                                  gate=lambda c: c == summed[0])

        def add_ready_chunks():
            # chunk c of every peer's piece is in its buffer once that peer's payload_done passed it
            while summed[0] < chunks and all(m.payload_done > summed[0] for m in inbound.values()):
                c = summed[0]
                a, b = c * chunk, min(hi - lo, (c + 1) * chunk)
                pieces = [vec[lo + a:lo + b] if r == self.rank else self._buffers[r][:b - a]
                          for r in range(self.world)]
                _sum_in_order(pieces, total[a:b])
                summed[0] += 1

        self._run(inbound, outbound, add_ready_chunks)
        add_ready_chunks()
        return total

    def all_gather(self, flat):
        if not (isinstance(flat, np.ndarray) and flat.dtype == np.float32 and flat.flags.c_contiguous
                and flat.flags.writeable):
            got = f"{flat.dtype} {flat.shape}" if isinstance(flat, np.ndarray) else type(flat).__name__
            raise ValueError(f"SocketExchange.all_gather works in place on a writeable C-contiguous float32 "
                             f"vector; got {got}")
        vec = flat.reshape(-1)
        n = vec.size
        lo, hi = self.shard(n)
        if self.world == 1:
            return
        self._begin()
        mine = _wire(vec[lo:hi])
        inbound, outbound = {}, {}
        for r in self._socks:
            a, b = shard_bounds(n, self.world, r)
            outbound[r] = self._message(_GATHER, n, lo, hi, mine)
            inbound[r] = _Inbound(self._header(_GATHER, r, n, a, b), [_bytes(vec[a:b])], self._round)
        self._run(inbound, outbound, None)
        if not _LITTLE:
            for r in self._socks:
                a, b = shard_bounds(n, self.world, r)
                vec[a:b].byteswap(inplace=True)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self._broken = self._broken or "closed"

    def __repr__(self):
        return f"SocketExchange(rank={self.rank}, world={self.world}, round={self._round})"

    # ---- the event loop --------------------------------------------------------------------------
    def _begin(self) -> None:
        if self._broken:
            raise ExchangeError(f"rank {self.rank}: the exchange is {self._broken}; start a new one")
        self._round += 1

    def _header(self, kind: int, sender: int, n: int, lo: int, hi: int) -> bytes:
        return _HEADER.pack(_HEADER_MAGIC, kind, sender, self._round, n, lo, hi)

    def _message(self, kind: int, n: int, lo: int, hi: int, payload: np.ndarray) -> _Outbound:
        return _Outbound([memoryview(self._header(kind, self.rank, n, lo, hi)), _bytes(payload),
                          memoryview(_TRAILER.pack(_TRAILER_MAGIC, self._round))])

    def _run(self, inbound: dict[int, _Inbound], outbound: dict[int, _Outbound], on_data) -> None:
        try:
            self._loop(inbound, outbound, on_data)
        except BaseException as e:
            # Close at once, so the peers see the connection go instead of waiting for the timeout.
            self._broken = f"closed after an error: {e}"
            self.close()
            raise

    def _loop(self, inbound, outbound, on_data) -> None:
        sel = self._selector
        masks = {r: 0 for r in self._socks}
        last = {r: time.monotonic() for r in self._socks}
        try:
            while True:
                for r, sock in self._socks.items():
                    mask = (selectors.EVENT_READ if inbound[r].want() is not None else 0) | \
                           (selectors.EVENT_WRITE if not outbound[r].done() else 0)
                    if mask != masks[r]:
                        if masks[r] == 0:
                            sel.register(sock, mask, r)
                        elif mask == 0:
                            sel.unregister(sock)
                        else:
                            sel.modify(sock, mask, r)
                        masks[r] = mask
                waiting = [r for r in masks if masks[r]]
                if not waiting:
                    if all(m.done() for m in inbound.values()):
                        return
                    raise AssertionError("SocketExchange: every peer held back while a message is unfinished")
                now = time.monotonic()
                stalled = min(waiting, key=last.__getitem__)
                left = last[stalled] + self.timeout - now
                if left <= 0:
                    self._fail(stalled, f"no progress for {self.timeout:g} s (round {self._round}): "
                                        f"the task stalled or its host is unreachable")
                for key, events in sel.select(left):
                    r = key.data
                    if events & selectors.EVENT_WRITE and not outbound[r].done():
                        self._send(r, outbound[r])
                        last[r] = time.monotonic()
                    if events & selectors.EVENT_READ:
                        self._receive(r, inbound[r])
                        last[r] = time.monotonic()
                if on_data is not None:
                    on_data()
        finally:
            if self._selector is not None:
                for r, mask in masks.items():
                    if mask:
                        sel.unregister(self._socks[r])

    def _send(self, r: int, message: _Outbound) -> None:
        try:
            message.send(self._socks[r])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            self._fail(r, f"the connection broke while sending round {self._round} ({e.strerror or e}): "
                          f"the task is gone")

    def _receive(self, r: int, message: _Inbound) -> None:
        view = message.want()
        if view is None:
            return
        try:
            got = self._socks[r].recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(r, f"the connection broke while receiving round {self._round} ({e.strerror or e}): "
                          f"the task is gone")
        if got == 0:
            self._fail(r, f"closed the connection during round {self._round} (the task ended, or gave up "
                          f"after an error of its own)")
        finished = message.got(got)
        if finished is not None:
            self._check(r, message, finished)

    def _check(self, r: int, message: _Inbound, block: bytes) -> None:
        if len(block) == _TRAILER.size:
            magic, round_ = _TRAILER.unpack(block)
            if (magic, round_) != (_TRAILER_MAGIC, message.round):
                self._fail(r, f"sent more or fewer bytes than its header of round {message.round} announced "
                              f"(trailer {block.hex()})")
            return
        if block == message.expected_header:
            return
        magic, kind, sender, round_, n, lo, hi = _HEADER.unpack(block)
        _, ekind, esender, eround, en, elo, ehi = _HEADER.unpack(message.expected_header)
        if magic != _HEADER_MAGIC or kind not in _KINDS:
            why = f"sent bytes that are not a kindling exchange header ({block[:16].hex()}...)"
        elif sender != esender:
            why = f"says it is rank {sender}"
        elif round_ != eround or kind != ekind:
            why = (f"is at round {round_} ({_KINDS[kind]}), this task at round {eround} ({_KINDS[ekind]}): "
                   f"the tasks called the collectives out of step")
        elif n != en:
            why = f"exchanges a vector of {n} elements, this task one of {en}: the lengths must be equal"
        else:
            why = f"sent the slice [{lo}, {hi}), expected [{elo}, {ehi})"
        self._fail(r, why)

    def _fail(self, r: int, why: str):
        raise ExchangeError(f"rank {self.rank}: peer rank {r} at {self._addresses[r]} {why}")
