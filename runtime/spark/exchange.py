"""The collective the distributed optimizer needs, and the simplest way to run it.

Every task of a barrier stage holds a flat float32 vector of the same length ``n`` (gradients,
then parameters). Rank ``r`` of ``world`` owns the slice ``shard_bounds(n, world, r)``: it receives
the sum of that slice over all tasks (``reduce_scatter``), updates it, and every task then gets
every owner's updated slice back (``all_gather``), as BigDL's parameter manager did.

``DriverExchange`` runs both through ``BarrierTaskContext.allGather``, i.e. through the driver,
in chunks small enough for Spark's RPC messages. It is the baseline a faster transport
(``allreduce.SocketExchange``) is measured against, and it works wherever barrier mode does.
"""
from __future__ import annotations

import base64
from typing import Callable

import numpy as np


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of an n-element vector owned by ``rank``: contiguous, sizes differing by at most one."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    return n * rank // world, n * (rank + 1) // world


class Exchange:
    """Synchronous collectives over the ``world`` tasks of one barrier stage; every task calls
    each method in the same order with vectors of the same length."""

    def __init__(self, rank: int, world: int):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"Exchange: rank {rank} of world {world}")
        self.rank, self.world = rank, world

    def shard(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.world, self.rank)

    def reduce_scatter(self, flat: np.ndarray) -> np.ndarray:
        """The sum over all tasks of ``flat[lo:hi]`` (this task's shard), as a float32 array
        valid until the next call. ``flat`` is left as it was."""
        raise NotImplementedError

    def all_gather(self, flat: np.ndarray) -> None:
        """In place: on entry ``flat[lo:hi]`` holds this task's shard; on return ``flat`` holds
        every task's shard."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Spark's RPC messages are capped by spark.rpc.message.maxSize (128 MB by default) and travel
# base64-encoded: 8 MB of floats per round stays far below it.
_DRIVER_CHUNK = 8 << 20


class DriverExchange(Exchange):
    """Both collectives through ``allGather(str) -> list[str]`` (``BarrierTaskContext.allGather``):
    each task sends its vector, chunk by chunk, and every task receives every other's."""

    def __init__(self, rank: int, world: int, all_gather_text: Callable[[str], list[str]],
                 chunk_bytes: int = _DRIVER_CHUNK):
        super().__init__(rank, world)
        self._text = all_gather_text
        self._chunk = max(4, chunk_bytes // 4)
        self._sum: np.ndarray | None = None

    @classmethod
    def from_barrier(cls, context) -> "DriverExchange":
        return cls(context.partitionId(), len(context.getTaskInfos()), context.allGather)

    def _gather(self, part: np.ndarray) -> list[np.ndarray]:
        """Every task's ``part`` (float32, lengths may differ), in rank order."""
        pieces: list[list[bytes]] = [[] for _ in range(self.world)]
        rounds = max(1, -(-part.size // self._chunk))
        # Every task must call allGather the same number of times: agree on the most rounds.
        most = max(int(t) for t in self._text(str(rounds)))
        for i in range(most):
            mine = part[i * self._chunk:(i + 1) * self._chunk]
            for r, text in enumerate(self._text(base64.b64encode(np.ascontiguousarray(mine, "<f4")).decode())):
                pieces[r].append(base64.b64decode(text))
        return [np.frombuffer(b"".join(p), "<f4") for p in pieces]

    def reduce_scatter(self, flat):
        lo, hi = self.shard(flat.size)
        # Each task needs only its own slice of the others' vectors, but allGather sends every
        # message to everyone: send the whole vector once, keep the slice.
        first, *rest = self._gather(np.asarray(flat, np.float32).ravel())
        # Rank order from the first slice, not from zeros (0 + -0.0 is +0.0): SocketExchange adds
        # its first two pieces in one pass and gets the same bits.
        total = first[lo:hi].copy()
        for vec in rest:
            total += vec[lo:hi]
        self._sum = total
        return total

    def all_gather(self, flat):
        n = flat.size
        lo, hi = self.shard(n)
        for r, part in enumerate(self._gather(flat[lo:hi])):
            a, b = shard_bounds(n, self.world, r)
            flat[a:b] = part
