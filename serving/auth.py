"""Bearer-token authentication: every call but the health checks must carry
``authorization: Bearer <token>`` with one of the tokens in the server's --token-file (one per
line, blank lines and # comments ignored); anything else is UNAUTHENTICATED. Health checks stay
open so that load balancers and orchestrators (which send no credentials) can probe."""
from __future__ import annotations

import hmac
from pathlib import Path

import grpc

OPEN_METHODS = ("/grpc.health.v1.Health/",)


def read_tokens(path) -> list[bytes]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the token file: {e}") from e
    tokens = [line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ValueError(f"{path}: the token file holds no token")
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ValueError(f"{path}: tokens must be at least 16 characters ({len(short)} are shorter)")
    return tokens


def _deny(handler, message: str):
    """A handler of the same kind as ``handler`` (unary or streaming) that refuses the call."""
    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = (handler.request_streaming, handler.response_streaming)
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[kind](deny, request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)


class BearerToken(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: list[bytes]):
        self.tokens = list(tokens)

    def _valid(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer "):].strip().encode()
        return any(hmac.compare_digest(given, t) for t in self.tokens)  # constant time for each token

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        handler = await continuation(details)
        header = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if handler is None or self._valid(header if isinstance(header, str) else None):
            return handler
        return _deny(handler, "missing bearer token: send the metadata 'authorization: Bearer <token>'"
                     if header is None else "the bearer token is not one this server accepts")
