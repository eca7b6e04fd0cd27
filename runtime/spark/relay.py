"""``RelayExchange``: the Exchange contract through the driver, over the control connection each
task keeps to it anyway (the parameter-server pattern): every task sends its vector once, the
driver sums, and each task gets back the shard it owns; for the all-gather each sends its shard
and gets the whole vector. Point-to-point between the tasks is faster on a real cluster
(``allreduce.SocketExchange``); this needs no other port and, unlike ``DriverExchange``, no
``BarrierTaskContext.allGather`` round, which Spark answers on a 1-second poll."""
from __future__ import annotations

import numpy as np

from . import wire
from .exchange import Exchange, shard_bounds


class RelayExchange(Exchange):
    def __init__(self, rank: int, world: int, conn):
        super().__init__(rank, world)
        self._conn = conn

    def reduce_scatter(self, flat):
        wire.send(self._conn, {"op": "reduce_scatter"}, np.asarray(flat, np.float32).ravel())
        _, (data,) = wire.recv(self._conn)
        return wire.floats(data).copy()

    def all_gather(self, flat):
        lo, hi = self.shard(flat.size)
        wire.send(self._conn, {"op": "all_gather"}, flat[lo:hi])
        _, (data,) = wire.recv(self._conn)
        flat[:] = wire.floats(data)


def serve(conns, header: dict, buffers: list[list[bytes]]) -> None:
    """The driver's half of one collective whose requests (``header["op"]``, one per task, in
    rank order) have arrived."""
    world = len(conns)
    if header["op"] == "reduce_scatter":
        total = wire.floats(buffers[0][0]).copy()
        for b in buffers[1:]:
            total += wire.floats(b[0])
        for r, conn in enumerate(conns):
            lo, hi = shard_bounds(total.size, world, r)
            wire.send(conn, {"op": "shard"}, total[lo:hi])
    elif header["op"] == "all_gather":
        whole = np.concatenate([wire.floats(b[0]) for b in buffers])
        for conn in conns:
            wire.send(conn, {"op": "whole"}, whole)
    else:
        raise ValueError(f"unknown collective {header['op']!r}")
