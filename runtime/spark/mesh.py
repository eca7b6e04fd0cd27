"""Connecting every pair of the tasks of a barrier stage by TCP.

Each task listens on its own address, the tasks swap ``kindling-exchange/1 host port nonce``
lines through a rendezvous (``BarrierTaskContext.allGather`` in Spark: called once), and the
higher rank of each pair dials the lower one. Both ends then send a hello (``_HELLO``: magic,
version, a digest of the rendezvous lines as the session, rank, world) and check the other's, so
a connection from another exchange (a stale task, anything that found the port) is dropped with
a warning and never taken for a peer.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import socket
import struct
import time
from typing import Callable

log = logging.getLogger("kindling.spark")

DEFAULT_TIMEOUT = 300.0   # seconds without progress from a peer; must exceed the tasks' compute skew

PROTOCOL = "kindling-exchange/1"
_HELLO = struct.Struct("<4sH16sII")          # magic, version, session digest, rank, world
_HELLO_MAGIC, _VERSION = b"KXHI", 1


class ExchangeError(RuntimeError):
    """A peer is gone, stalled past the timeout, or sent what the protocol does not allow. A
    RuntimeError, not a ValueError: the caller's arguments were fine, the collective cannot finish
    (Spark then retries the barrier stage). The exchange is closed when this is raised."""


def connect(rank: int, world: int, all_gather_text: Callable[[str], list[str]], *, host: str, port: int = 0,
            timeout: float = DEFAULT_TIMEOUT) -> dict[int, tuple[socket.socket, str]]:
    """{peer rank: (connected socket, "host:port")} for every other task, within ``timeout`` s.
    Listens on ``host`` only (this task's own address: never a wildcard unless you pass one)."""
    deadline = time.monotonic() + timeout
    listener = _listen(host, port, world)
    peers: dict[int, tuple[socket.socket, str]] = {}
    try:
        nonce = secrets.token_hex(8)
        bound_host, bound_port = listener.getsockname()[:2]  # the address itself, not a name for it
        mine = f"{PROTOCOL} {bound_host} {bound_port} {nonce}"
        lines = all_gather_text(mine)
        addresses = _parse_rendezvous(lines, world, rank, mine)
        session = hashlib.sha256("\n".join(lines).encode()).digest()[:16]
        hello = _HELLO.pack(_HELLO_MAGIC, _VERSION, session, rank, world)
        for q in range(rank):
            who = f"rank {q} at {_text(addresses[q])}"
            peers[q] = (_dial(addresses[q], who, deadline), _text(addresses[q]))
            _send_all(peers[q][0], hello, who, deadline)
        while sum(r > rank for r in peers) < world - 1 - rank:
            _accept(listener, peers, rank, world, session, hello, addresses, deadline)
        for q in range(rank):
            who = f"rank {q} at {peers[q][1]}"
            _check_hello(_recv_exact(peers[q][0], _HELLO.size, who, deadline), session, world, who, expect=q)
    except BaseException:
        for sock, _ in peers.values():
            sock.close()
        raise
    finally:
        listener.close()
    return peers


def host_of(address: str) -> str:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int, world: int) -> socket.socket:
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
    except OSError as e:
        raise ExchangeError(f"SocketExchange: cannot listen on host {host!r}: {e}") from e
    try:
        listener.bind(sockaddr)
        listener.listen(world)
    except OSError as e:
        listener.close()
        raise ExchangeError(f"SocketExchange: cannot listen on {host!r} port {port}: {e}") from e
    return listener


def _parse_rendezvous(lines, world: int, rank: int, mine: str) -> dict[int, tuple[str, int]]:
    if len(lines) != world:
        raise ExchangeError(f"rank {rank}: the rendezvous returned {len(lines)} addresses for {world} tasks")
    if lines[rank] != mine:
        raise ExchangeError(f"rank {rank}: the rendezvous returned {lines[rank]!r} as this task's address, "
                            f"not {mine!r}: the tasks called it out of step")
    addresses = {}
    for r, line in enumerate(lines):
        parts = line.split(" ") if isinstance(line, str) else []
        if len(parts) != 4 or parts[0] != PROTOCOL or not parts[2].isdigit():
            raise ExchangeError(f"rank {rank}: rank {r} sent {str(line)[:80]!r} to the rendezvous, not an "
                                f"exchange address: the tasks called it out of step")
        addresses[r] = (parts[1], int(parts[2]))
    return addresses


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1e-3)


def _dial(address: tuple[str, int], who: str, deadline: float) -> socket.socket:
    try:
        sock = socket.create_connection(address, timeout=_left(deadline))
    except OSError as e:
        raise ExchangeError(f"cannot connect to {who}: {e}") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_all(sock: socket.socket, data: bytes, who: str, deadline: float) -> None:
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(data)
    except OSError as e:
        raise ExchangeError(f"{who}: sending the hello failed: {e}") from e


def _recv_exact(sock: socket.socket, size: int, who: str, deadline: float) -> bytes:
    buf = bytearray(size)
    view, filled = memoryview(buf), 0
    try:
        while filled < size:
            sock.settimeout(_left(deadline))
            got = sock.recv_into(view[filled:])
            if got == 0:
                raise ExchangeError(f"{who} closed the connection during the hello")
            filled += got
    except socket.timeout as e:
        raise ExchangeError(f"{who} sent no hello in time") from e
    except OSError as e:
        raise ExchangeError(f"{who}: receiving the hello failed: {e}") from e
    return bytes(buf)


def _check_hello(block: bytes, session: bytes, world: int, who: str, expect: int | None) -> int:
    """The peer's rank from its hello; ExchangeError when it belongs to another exchange."""
    magic, version, their_session, rank, their_world = _HELLO.unpack(block)
    if magic != _HELLO_MAGIC or version != _VERSION:
        raise ExchangeError(f"{who} does not speak {PROTOCOL} (hello {block[:8].hex()})")
    if their_session != session:
        raise ExchangeError(f"{who} belongs to another exchange (another rendezvous)")
    if their_world != world or (expect is not None and rank != expect):
        raise ExchangeError(f"{who} says it is rank {rank} of {their_world}")
    return rank


def _accept(listener, peers, rank, world, session, hello, addresses, deadline) -> None:
    """Takes one connection and its hello. A connection from outside this exchange (another
    process found the port) is dropped with a warning; a peer of this exchange that is not one
    of the higher ranks still to come is an error."""
    def missing():
        return ", ".join(f"rank {r} ({_text(addresses[r])})" for r in range(rank + 1, world) if r not in peers)
    try:
        listener.settimeout(_left(deadline))
        sock, remote = listener.accept()
    except socket.timeout as e:
        raise ExchangeError(f"rank {rank}: no connection from {missing()} in time") from e
    who = f"a connection from {_text(remote[:2])}"
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            r = _check_hello(_recv_exact(sock, _HELLO.size, who, deadline), session, world, who, expect=None)
        except ExchangeError as e:
            if time.monotonic() >= deadline:
                raise ExchangeError(f"rank {rank}: no connection from {missing()} in time ({e})") from e
            log.warning("SocketExchange rank %d: dropped %s", rank, e)
            sock.close()
            return
        if not rank < r < world or r in peers:
            raise ExchangeError(f"rank {rank}: {who} says it is rank {r}, which is connected or not expected")
        _send_all(sock, hello, f"rank {r} at {_text(remote[:2])}", deadline)
    except BaseException:
        sock.close()
        raise
    peers[r] = (sock, _text(remote[:2]))
