"""Messages on the control channel between the driver and each barrier task: a JSON header, then
raw little-endian buffers (float32 vectors, file chunks), over ``multiprocessing.connection``
(length-prefixed frames, HMAC authentication with a per-run key). Nothing is pickled."""
from __future__ import annotations

import json

import numpy as np


class TaskLost(ConnectionError):
    """A task's connection closed or failed: its Python worker, or its executor, is gone."""


def send(conn, header: dict, *buffers) -> None:
    """``header`` with ``"n"`` set to the number of buffers that follow."""
    try:
        conn.send_bytes(json.dumps({**header, "n": len(buffers)}).encode())
        for b in buffers:
            conn.send_bytes(memoryview(np.ascontiguousarray(b) if isinstance(b, np.ndarray) else b).cast("B"))
    except (OSError, EOFError, ValueError) as e:
        raise TaskLost(str(e) or type(e).__name__) from e


def recv(conn) -> tuple[dict, list[bytes]]:
    try:
        header = json.loads(conn.recv_bytes())
        return header, [conn.recv_bytes() for _ in range(header.get("n", 0))]
    except (OSError, EOFError, ValueError) as e:
        raise TaskLost(str(e) or type(e).__name__) from e


def floats(buffer) -> np.ndarray:
    return np.frombuffer(buffer, "<f4")
