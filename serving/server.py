"""The server assembly: repository -> manager -> batcher -> servicer on a grpc.aio server, with
grpc.health.v1 health, server reflection, TLS or mutual TLS, bearer tokens, Prometheus metrics
and a graceful stop.

    config = Config(repository="models/", min_top1=0.9)
    server = Server(config)
    port = await server.start()        # listening, the repository's first poll done
    ...
    await server.stop()                # stop accepting, finish in-flight requests

``serve(config)`` runs one until SIGTERM or SIGINT and returns 0 (``kindling serve``).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kindling.protos import serving_pb2 as pb
from kindling.protos import serving_pb2_grpc as pb_grpc

from . import log
from .auth import BearerToken, read_tokens
from .batcher import Batcher
from .manager import Manager
from .metrics import Metrics
from .policy import Gate, Policy
from .repository import Repository
from .servable import load_servable
from .servicer import Limits, Servicer


@dataclass
class Config:
    repository: Path
    host: str = "127.0.0.1"
    port: int = 8500
    min_top1: float | None = None
    max_batch: int = 32
    max_delay_ms: float = 5.0
    workers: int | None = None            # default: the cores this process may use
    max_queue: int = 512                  # images waiting; beyond: RESOURCE_EXHAUSTED
    max_images: int = 64
    max_message_bytes: int = 64 << 20
    max_pixels: int | None = None         # default: the process-wide decoding limit
    grace_seconds: float = 60.0
    poll_seconds: float = 1.0
    settle_seconds: float = 2.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    metrics_port: int | None = None
    mmap: bool = False
    shutdown_grace: float = 30.0


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_bind(host: str, tls: bool, token: bool) -> str | None:
    """The warning for listening beyond this machine with neither TLS nor a token, or None."""
    if _loopback(host) or tls or token:
        return None
    return ("listening beyond this machine with neither TLS nor a token: anyone who can reach the port can use "
            "every model (give --tls-cert/--tls-key and --token-file)")


def _credentials(config: Config):
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("give both --tls-cert and --tls-key")
    try:
        key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    except OSError as e:
        raise ValueError(f"{e.filename}: cannot read: {e.strerror}") from e
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class Server:
    def __init__(self, config: Config):
        self.config = c = config
        for name in ("max_batch", "max_queue", "max_images", "max_message_bytes"):
            if getattr(c, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        if c.max_pixels is not None and c.max_pixels < 1:
            raise ValueError(f"--max-pixels must be at least 1, got {c.max_pixels}")
        self.credentials = _credentials(c)
        self.tokens = read_tokens(c.token_file) if c.token_file else None
        self.workers = c.workers or default_workers()
        self.metrics = Metrics()
        self.repository = Repository(c.repository, settle=c.settle_seconds)
        self.batcher = Batcher(self.workers, c.max_batch, c.max_delay_ms / 1000, c.max_queue,
                               on_batch=lambda s, rows: self.metrics.batch.labels(s.name).observe(rows),
                               on_depth=self.metrics.queue.set)
        self.manager = Manager(self.repository, Policy(Gate("Top1Accuracy", c.min_top1)), self._load,
                               grace=c.grace_seconds, on_change=self._health_changed,
                               on_state=self.metrics.version_state)
        self.health = health.aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    def _load(self, name, version, path, labels):
        c = self.config
        return load_servable(name, version, path, workers=self.workers, max_batch=c.max_batch,
                             max_pixels=c.max_pixels, labels=labels, mmap=c.mmap)

    def _health_changed(self, model: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.health.set(model, status), self._loop)

    async def start(self) -> int:
        c = self.config
        self._loop = asyncio.get_running_loop()
        options = [("grpc.max_receive_message_length", c.max_message_bytes), ("grpc.max_send_message_length", -1),
                   ("grpc.so_reuseport", 0)]
        self._server = grpc.aio.server(options=options, interceptors=[BearerToken(self.tokens)] if self.tokens else None)
        pb_grpc.add_ServingServicer_to_server(
            Servicer(self.manager, self.batcher, Limits(c.max_images, c.max_pixels), self.metrics), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((pb.DESCRIPTOR.services_by_name["Serving"].full_name,
                                             health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        address = f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"
        try:
            self.port = (self._server.add_secure_port(address, self.credentials) if self.credentials
                         else self._server.add_insecure_port(address))
        except RuntimeError as e:  # grpc's "Failed to bind": in use, or not an address of this machine
            raise OSError(f"cannot listen on {address} (in use by another process, or not an address here)") from e
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        warning = insecure_bind(c.host, bool(self.credentials), bool(self.tokens))
        if warning:
            log.event("insecure_bind", logging.WARNING, address=address, message=warning)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._server.start()
        if c.metrics_port is not None:
            self.metrics_port = self.metrics.serve(c.metrics_port, c.host)
        await asyncio.get_running_loop().run_in_executor(None, self.manager.start, c.poll_seconds)
        log.event("listening", address=f"{c.host}:{self.port}", workers=self.workers, max_batch=c.max_batch,
                  max_delay_ms=c.max_delay_ms, tls=bool(self.credentials), mutual_tls=bool(c.tls_client_ca),
                  token=bool(self.tokens), metrics_port=self.metrics_port,
                  models={m["name"]: m["default_version"] for m in self.manager.status()})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets those in flight finish (up to ``grace`` seconds), then stops
        the watcher, the workers and the metrics endpoint."""
        grace = self.config.shutdown_grace if grace is None else grace
        log.event("stopping", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.manager.stop)
        await loop.run_in_executor(None, self.batcher.stop)
        self.metrics.close()
        log.event("stopped")


async def _serve(config: Config) -> int:
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()
    return 0


def serve(config: Config) -> int:
    """Runs a server until SIGTERM or SIGINT; in-flight requests finish; returns 0."""
    return asyncio.run(_serve(config))
