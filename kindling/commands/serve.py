"""kindling serve --repository DIR: serve the validated snapshots in a repository over gRPC."""
from __future__ import annotations

from pathlib import Path

HELP = "serve validated snapshots over gRPC (Classify, Predict, metadata, health, reflection)"


def add_arguments(p):
    p.add_argument("--repository", required=True, type=Path,
                   help="a folder of model folders, each holding snapshots model.N as training writes them")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one)")
    p.add_argument("--min-top1", type=float, help="admit only snapshots whose validation Top1Accuracy is at least "
                                                  "this (a model's policy.json may set its own)")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass at most (default 32)")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="how long a partial batch may wait for more while other workers compute (default 5)")
    p.add_argument("--workers", type=int, help="compute workers, one model replica each (default: the cores)")
    p.add_argument("--max-queue", type=int, default=512,
                   help="images waiting at most; beyond, requests get RESOURCE_EXHAUSTED (default 512)")
    p.add_argument("--max-images", type=int, default=64, help="images (or rows) per request at most (default 64)")
    p.add_argument("--max-message-bytes", type=int, default=64 << 20, help="request size limit (default 64 MiB)")
    p.add_argument("--max-pixels", type=int,
                   help="refuse images with more pixels, read from their header before decoding (default: "
                        "KINDLING_MAX_PIXELS, else 178,956,970)")
    p.add_argument("--grace-seconds", type=float, default=60.0,
                   help="how long a replaced version still answers requests that name it (default 60)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often the repository is read (default 1)")
    p.add_argument("--settle-seconds", type=float, default=2.0,
                   help="a snapshot is looked at once unchanged this long (default 2)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="CA for client certificates: mutual TLS")
    p.add_argument("--token-file", type=Path, help="accepted bearer tokens, one per line")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--mmap", action="store_true",
                   help="memory-map weights (only for repositories written by atomic writers; see the README)")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="on SIGTERM, how long in-flight requests may take to finish (default 30)")


def run(args) -> int:
    from kindling.serving import Config, serve
    from kindling.serving import log
    log.configure()
    fields = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    return serve(Config(**fields))
