"""A Python client for a kindling server (``kindling classify`` uses it).

    with Client("127.0.0.1:8500") as client:
        answer = client.classify("digits", ["7.png", open("3.jpg", "rb").read()], top_k=3)
        answer.version, answer.results[0].labels, answer.results[0].scores
        version, outputs = client.predict("digits", {"data": x})

TLS: ``tls_ca`` (the server's CA certificate), and for mutual TLS ``tls_cert``/``tls_key``;
``token`` sends ``authorization: Bearer <token>`` with every call. Failures raise ServingError
with the gRPC status code and the server's message.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kindling.protos import serving_pb2 as pb
from kindling.protos import serving_pb2_grpc as pb_grpc
from kindling.runtime.predict import Classification

from .tensors import to_numpy, to_proto


class ServingError(Exception):
    """A call the server refused or could not answer: ``code`` (a grpc.StatusCode) and its message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class Answer:
    """Classify's reply: the version that answered and one Classification per image."""
    model: str
    version: int
    results: list[Classification]


def _bytes(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _image(item) -> pb.ImageInput:
    if isinstance(item, np.ndarray):
        return pb.ImageInput(tensor=to_proto(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return pb.ImageInput(encoded=bytes(item))
    return pb.ImageInput(encoded=Path(item).read_bytes())


class Client:
    def __init__(self, target: str, *, token: str | None = None, tls_ca=None, tls_cert=None, tls_key=None,
                 server_name: str | None = None, timeout: float | None = 30.0, max_message_bytes: int = 64 << 20):
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(_bytes(tls_ca), _bytes(tls_key), _bytes(tls_cert))
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.ServingStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout = timeout

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise ServingError(e.code(), e.details() or "") from None

    def classify(self, model: str, images, top_k: int = 5, version: int = 0, timeout: float | None = None) -> Answer:
        """Top-k per image: paths, encoded bytes, or preprocessed float32 arrays (C, H, W)."""
        request = pb.ClassifyRequest(model=pb.ModelSpec(name=model, version=version), top_k=top_k,
                                     images=[_image(i) for i in images])
        reply = self._call(self.stub.Classify, request, timeout)
        results = [Classification([c.index for c in r.classes], [c.label for c in r.classes],
                                  [c.score for c in r.classes]) for r in reply.results]
        return Answer(reply.model.name, reply.model.version, results)

    def predict(self, model: str, inputs, version: int = 0, outputs=(), timeout: float | None = None):
        """(version, {output name: array}) for an array (one-input model) or {input name: array}."""
        named = inputs if isinstance(inputs, dict) else {"input": inputs}
        request = pb.PredictRequest(model=pb.ModelSpec(name=model, version=version), output_filter=list(outputs))
        for k, v in named.items():
            to_proto(np.asarray(v, np.float32), request.inputs[k])
        reply = self._call(self.stub.Predict, request, timeout)
        return reply.model.version, {k: to_numpy(t, k).copy() for k, t in reply.outputs.items()}

    def model_metadata(self, model: str, version: int = 0, timeout: float | None = None) -> pb.GetModelMetadataResponse:
        return self._call(self.stub.GetModelMetadata,
                          pb.GetModelMetadataRequest(model=pb.ModelSpec(name=model, version=version)), timeout)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """"SERVING", "NOT_SERVING", or "SERVICE_UNKNOWN" for a name the server does not know."""
        try:
            reply = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service),
                                           timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise ServingError(e.code(), e.details() or "") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
