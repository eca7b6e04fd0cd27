"""gRPC serving of validated snapshots (``kindling serve``, ``kindling classify``).

One concept per file: ``repository`` (the source: model folders polled for settled snapshots),
``policy`` (the gate and the version policy), ``servable`` (one loaded, smoke-tested, warmed
version with a replica per worker), ``manager`` (version states, hot swap, routing), ``batcher``
(dynamic batching on the compute workers), ``servicer`` (the gRPC methods), ``auth``, ``metrics``,
``log``, ``server`` (the assembly) and ``client``."""
from .client import Answer, Client, ServingError
from .policy import Gate, Policy, VersionPolicy
from .server import Config, Server, serve

__all__ = ["Answer", "Client", "ServingError", "Gate", "Policy", "VersionPolicy", "Config", "Server", "serve"]
