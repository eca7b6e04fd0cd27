"""The transport: kindling.serving.v1.Serving on grpc.aio. Each method turns the request into a
batcher Task (or reads the manager), awaits it without holding a thread, and maps what went wrong
to a status code through one table; every reply names the version that answered."""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass

import grpc

from kindling.protos import serving_pb2 as pb
from kindling.protos import serving_pb2_grpc as pb_grpc
from kindling.runtime.data import ImageTooLarge
from kindling.runtime.predict import InputError

from . import log
from .batcher import Batcher, Cancelled, Expired, QueueFull, Task
from .manager import Manager, NotFound
from .tensors import to_numpy, to_proto


class LimitError(ValueError):
    """A request beyond one of the server's limits; the message names the limit."""


# First match wins: kindling's own errors, then bad input of any other kind (ValueError).
STATUS = ((NotFound, grpc.StatusCode.NOT_FOUND), (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
          (Expired, grpc.StatusCode.DEADLINE_EXCEEDED), (Cancelled, grpc.StatusCode.CANCELLED),
          (ValueError, grpc.StatusCode.INVALID_ARGUMENT))


@dataclass(frozen=True)
class Limits:
    max_images: int = 64
    max_pixels: int | None = None


def _status(error: BaseException) -> grpc.StatusCode:
    return next((code for kind, code in STATUS if isinstance(error, kind)), grpc.StatusCode.INTERNAL)


def _message(error: BaseException, limits: Limits) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, ImageTooLarge) and limits.max_pixels:
        text += f"; the server's --max-pixels is {limits.max_pixels:,}"
    return text[:2000]


class Replies:
    """Answers handed from the compute workers to the event loop: a worker answering a batch
    wakes the loop once, not once per request."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, future: asyncio.Future, result, error) -> None:
        with self._lock:
            self._items.append((future, result, error))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, collections.deque()
            self._scheduled = False
        for future, result, error in items:
            if not future.done():  # a caller that went away has a cancelled future
                future.set_exception(error) if error is not None else future.set_result(result)


class Servicer(pb_grpc.ServingServicer):
    def __init__(self, manager: Manager, batcher: Batcher, limits: Limits, metrics=None):
        self.manager, self.batcher, self.limits, self.metrics = manager, batcher, limits, metrics
        self._replies: Replies | None = None

    # ---- one wrapper for every method ----------------------------------------------------------
    async def _call(self, method: str, request, context, impl):
        if self.metrics is None:
            return await self._answer(method, request, context, impl)
        with self.metrics.in_flight.labels(method).track_inprogress():
            return await self._answer(method, request, context, impl)

    async def _answer(self, method: str, request, context, impl):
        start = time.perf_counter()
        call = {"model": "?"}  # the model's name once routed: a label of known values only
        try:
            reply = await impl(request, context, call)
            code = grpc.StatusCode.OK
        except asyncio.CancelledError:
            self._record(method, call["model"], grpc.StatusCode.CANCELLED, start)
            raise
        except Exception as e:  # mapped to a status; nothing a request does stops the server
            code = _status(e)
            if code is grpc.StatusCode.INTERNAL:
                log.log.error("internal error", exc_info=True,
                              extra={"event": "internal_error", "fields": {"method": method}})
            self._record(method, call["model"], code, start)
            await context.abort(code, _message(e, self.limits) if code is not grpc.StatusCode.INTERNAL
                                else f"internal error ({type(e).__name__}); the server log has the details")
        self._record(method, call["model"], code, start)
        return reply

    def _record(self, method, model, code, start):
        if self.metrics is not None:
            self.metrics.request(method, model, code.name, time.perf_counter() - start)

    async def _compute(self, servable, rows: int, prepare, finish, context):
        loop = asyncio.get_running_loop()
        if self._replies is None or self._replies.loop is not loop:
            self._replies = Replies(loop)
        replies = self._replies
        future = loop.create_future()
        remaining = context.time_remaining()
        task = Task(servable, rows, prepare, finish, done=lambda result, error: replies.put(future, result, error),
                    deadline=None if remaining is None else time.monotonic() + remaining)
        self.batcher.submit(task)
        try:
            return await future
        except asyncio.CancelledError:
            task.cancelled = True  # the client went away or its deadline passed: drop the work
            raise

    def _route(self, spec: pb.ModelSpec, call: dict):
        if spec.version < 0:
            raise InputError(f"version must be >= 0 (0: the default), got {spec.version}")
        servable = self.manager.route(spec.name, spec.version)
        call["model"] = servable.name
        return servable

    # ---- the API -------------------------------------------------------------------------------
    async def Classify(self, request, context):
        return await self._call("Classify", request, context, self._classify)

    async def _classify(self, request: pb.ClassifyRequest, context, call):
        servable = self._route(request.model, call)
        n = len(request.images)
        if n == 0:
            raise InputError("no images in the request")
        if n > self.limits.max_images:
            raise LimitError(f"{n} images in one request, over the server's --max-images {self.limits.max_images}")
        if request.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0: 5), got {request.top_k}")
        items = []
        for i, image in enumerate(request.images):
            kind = image.WhichOneof("kind")
            if kind is None:
                raise InputError(f"image {i}: neither encoded bytes nor a tensor")
            items.append(image.encoded if kind == "encoded" else to_numpy(image.tensor, f"image {i}"))
        k = request.top_k or 5
        results = await self._compute(servable, n, lambda p: [p.preprocess(items)], lambda p, outs: p.top_k(outs[0], k),
                                      context)
        reply = pb.ClassifyResponse(model=pb.ModelSpec(name=servable.name, version=servable.version))
        for c in results:
            reply.results.add().classes.extend(
                pb.ClassScore(index=i, label=label, score=s) for i, label, s in zip(c.indices, c.labels, c.scores))
        return reply

    async def Predict(self, request, context):
        return await self._call("Predict", request, context, self._predict)

    async def _predict(self, request: pb.PredictRequest, context, call):
        servable = self._route(request.model, call)
        names = servable.predictor.input_names
        given = dict(request.inputs)
        if len(names) == 1 and len(given) == 1:
            given = {names[0]: next(iter(given.values()))}  # a one-input model takes it under any name
        missing, unknown = [n for n in names if n not in given], sorted(set(given) - set(names))
        if missing or unknown:
            raise InputError(f"the model's inputs are {names}" + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {[u[:100] for u in unknown[:10]]}" if unknown else ""))
        arrays = {n: to_numpy(given[n], f"input {n!r}") for n in names}
        rows = {len(a) for a in arrays.values()}
        if len(rows) != 1:
            raise InputError(f"inputs differ in their first (batch) dimension: "
                             f"{ {n: list(a.shape) for n, a in arrays.items()} }")
        (n,) = rows
        if n == 0:
            raise InputError("the inputs hold no rows (first dimension 0)")
        if n > self.limits.max_images:
            raise LimitError(f"{n} rows in one request, over the server's --max-images {self.limits.max_images}")
        wanted = list(request.output_filter)

        def finish(p, outs):
            named = dict(zip(p.output_names_for(len(outs)), outs))
            bad = [w for w in wanted if w not in named]
            if bad:
                raise InputError(f"output_filter names {[b[:100] for b in bad[:10]]}; the outputs are {list(named)}")
            return {k: v for k, v in named.items() if not wanted or k in wanted}

        outputs = await self._compute(servable, n, lambda p: [p.check(arrays[k], k) for k in names], finish, context)
        reply = pb.PredictResponse(model=pb.ModelSpec(name=servable.name, version=servable.version))
        for k, v in outputs.items():
            to_proto(v, reply.outputs[k])
        return reply

    async def GetModelMetadata(self, request, context):
        return await self._call("GetModelMetadata", request, context, self._metadata)

    async def _metadata(self, request: pb.GetModelMetadataRequest, context, call):
        servable = self._route(request.model, call)
        p = servable.predictor
        meta = p.metadata
        reply = pb.GetModelMetadataResponse(
            model=pb.ModelSpec(name=servable.name, version=servable.version), input_shape=p.input_shape or [],
            input_names=p.input_names, output_names=p.output_names or [], labels=p.labels)
        if p.preprocessing:
            pre = p.preprocessing
            reply.preprocessing.CopyFrom(pb.Preprocessing(
                mean=pre.get("mean") or [], std=pre.get("std") or [], scale=pre.get("scale", 1.0),
                channel_order=pre.get("channel_order") or "rgb", input_size=pre.get("input_size") or [],
                resize=pre.get("resize") or 0))
        if meta.get("source"):
            src = meta["source"]
            reply.source.framework = src.get("framework", "")
            for f in src.get("files", []):
                reply.source.files.add(path=f.get("path", ""), sha256=f.get("sha256", ""), size=int(f.get("size", 0)))
        training = meta.get("training") or {}
        if training.get("validation"):
            v = training["validation"]
            reply.validation.CopyFrom(pb.Validation(dataset=v.get("dataset", ""), count=int(v.get("count", 0)),
                                                    results=v.get("results") or {},
                                                    iteration=int(training.get("iteration", 0)),
                                                    epoch=int(training.get("epoch", 0))))
        status = next((m for m in self.manager.status() if m["name"] == servable.name), None)
        for v in (status or {}).get("versions", []):
            reply.versions.append(_version_status(v))
        return reply

    async def ListModels(self, request, context):
        return await self._call("ListModels", request, context, self._list)

    async def _list(self, request, context, call):
        reply = pb.ListModelsResponse()
        for m in self.manager.status():
            reply.models.append(pb.ModelStatus(name=m["name"], default_version=m["default_version"],
                                               policy=m["policy"], gate=m["gate"],
                                               versions=[_version_status(v) for v in m["versions"]]))
        return reply


def _version_status(v: dict) -> pb.VersionStatus:
    return pb.VersionStatus(version=v["version"], state=pb.VersionState.Value(v["state"].name), reason=v["reason"],
                            validation=v["validation"], default=v["default"])


