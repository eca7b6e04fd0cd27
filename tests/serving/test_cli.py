"""`kindling serve` as a process: graceful shutdown on SIGTERM with requests in flight, and 10,000
fuzzed requests that neither crash nor wedge it nor grow its memory."""
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import grpc
import numpy as np
import pytest

import snapshots
from harness import free_port, make_repository, wait_for
from kindling.protos import serving_pb2 as pb
from kindling.protos import serving_pb2_grpc as pb_grpc
from kindling.serving import Client

EXPECTED_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}


class ServeProcess:
    """``kindling serve`` in a child process on a free port; its JSON log lines collected."""

    def __init__(self, repository, *args):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "kindling", "serve", "--repository", str(repository),
                                      "--port", str(self.port), "--poll-seconds", "0.2", "--settle-seconds", "0",
                                      *map(str, args)], stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.other: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self.event("listening") or self.proc.poll() is not None, 60, what="the server to listen")
        assert self.proc.poll() is None, "\n".join(self.other)

    def _read(self):
        for line in self.proc.stderr:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.other.append(line)

    def event(self, name):
        return next((e for e in self.events if e.get("event") == name), None)

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_sigterm_stops_accepting_finishes_in_flight_requests_and_exits_0(tmp_path):
    snapshots.slow_snapshot(tmp_path / "slow", filters=256)  # ~20 ms an image: the three overlap
    metrics = free_port()
    server = ServeProcess(tmp_path, "--workers", "1", "--max-batch", "8", "--metrics-port", metrics)
    try:
        x = np.zeros((8, 3, 192, 192), np.float32)
        results = []

        def ask():
            with Client(server.target, timeout=60) as c:
                try:
                    results.append(c.classify("slow", list(x), top_k=1).version)
                except Exception as e:  # reported by the assertion below
                    results.append(e)

        in_flight = [threading.Thread(target=ask) for _ in range(3)]
        for t in in_flight:
            t.start()
        wait_for(lambda: _metric(metrics, 'kindling_requests_in_flight{method="Classify"}') >= 3, interval=0.005,
                 what="three requests in flight")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: server.event("stopping"), what="the server to start stopping")
        with Client(server.target, timeout=5) as late:
            with pytest.raises(Exception):
                late.classify("slow", [x[0]])
        for t in in_flight:
            t.join(60)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    assert results == [1, 1, 1], results
    assert server.event("stopped") is not None


def _metric(port, series: str) -> float:
    """One series' value from the server's Prometheus endpoint (0 before it first appears)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(series + " ")), 0.0)


def _bomb(width, height):
    data = bytearray(snapshots.png(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def fuzzed_requests(n, seed=0):
    """(method, request) pairs: real images cut, flipped and mislabelled, random bytes, tensors of
    wrong shapes, dtypes and sizes, hostile names and versions, too many images, bombs, and some
    valid requests among them."""
    rng = np.random.default_rng(seed)
    images, _ = snapshots.digit_images()
    pngs = [snapshots.png(i) for i in images[:20]]
    from caffe_nets import FIXTURES
    jpeg = (FIXTURES / "images" / "cat.jpg").read_bytes()
    names = ["digits", "digits", "digits", "", "../digits", "digits/../../etc", "d" * 300, "dígits", "\0", "DIGITS"]

    def image(small=False):
        kind = rng.integers(0, 9)
        src = pngs[rng.integers(0, len(pngs))] if small or rng.random() < 0.9 else jpeg
        if kind == 0:
            return pb.ImageInput(encoded=src)
        if kind == 1:
            return pb.ImageInput(encoded=src[:rng.integers(0, len(src))])
        if kind == 2:
            b = bytearray(src)
            for _ in range(rng.integers(1, 20)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
            return pb.ImageInput(encoded=bytes(b))
        if kind == 3:
            return pb.ImageInput(encoded=rng.bytes(int(rng.integers(0, 2000))))
        if kind == 4:
            return pb.ImageInput(encoded=_bomb(int(rng.integers(1, 1 << 31)), int(rng.integers(1, 1 << 31))))
        if kind == 5:
            shape = [int(d) for d in rng.integers(-2, 40, rng.integers(0, 5))]
            return pb.ImageInput(tensor=pb.Tensor(shape=shape, dtype=int(rng.integers(0, 7)),
                                                  data=rng.bytes(int(rng.integers(0, 5000)))))
        if kind == 6:
            return pb.ImageInput(tensor=pb.Tensor(shape=[1, 28, 28], dtype=pb.FLOAT32,
                                                  data=rng.standard_normal(784).astype("<f4").tobytes()))
        if kind == 7:
            return pb.ImageInput(tensor=pb.Tensor(shape=[1 << 40, 1 << 40], dtype=pb.FLOAT32, data=b"\0" * 8))
        return pb.ImageInput()

    for i in range(n):
        spec = pb.ModelSpec(name=names[rng.integers(0, len(names))] if rng.random() < 0.3 else "digits",
                            version=int(rng.choice([40, 41, -1, 1 << 62])) if rng.random() < 0.2 else 0)
        kind = rng.integers(0, 10)
        if kind < 7:
            count = int(rng.choice([0, 1, 1, 1, 2, 3, 17]))
            many = [image(small=True) for _ in range(min(count, 3))] * (count // 3 or 1)
            if rng.random() < 0.003:  # over --max-message-bytes
                many, count = [pb.ImageInput(encoded=bytes((1 << 20) + 100))], 0
            yield "Classify", pb.ClassifyRequest(model=spec, images=many if count != 1 else [image()],
                                                 top_k=int(rng.choice([0, 1, 5, -3, 1 << 30])))
        elif kind < 9:
            r = pb.PredictRequest(model=spec, output_filter=list(rng.choice(["prob", "x", ""], rng.integers(0, 2))))
            for name in rng.choice(["data", "input", "z"], rng.integers(0, 3)):
                shapes = ([2, 1, 28, 28], [1, 28, 28], [0, 1, 28, 28], [3, 1, 1, 1])
                shape = shapes[rng.integers(0, len(shapes))]
                data = np.zeros(max(int(np.prod(shape)), 0), "<f4").tobytes()
                r.inputs[str(name)].CopyFrom(pb.Tensor(shape=shape, dtype=pb.FLOAT32, data=data[:len(data) - 4 * int(
                    rng.integers(0, 2))]))
            yield "Predict", r
        else:
            yield "GetModelMetadata", pb.GetModelMetadataRequest(model=spec)


def test_ten_thousand_fuzzed_requests_neither_crash_nor_wedge_nor_grow_the_server(trained, tmp_path):
    _, folder = trained
    make_repository(tmp_path, folder, [40])
    server = ServeProcess(tmp_path, "--max-images", "16", "--max-message-bytes", 1 << 20)
    try:
        codes: dict[str, int] = {}
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ServingStub(channel)

            def send(requests, window=32):
                pending = []
                for method, request in requests:
                    pending.append(getattr(stub, method).future(request, timeout=30))
                    if len(pending) >= window:
                        _collect(pending.pop(0), codes)
                for f in pending:
                    _collect(f, codes)

            send(fuzzed_requests(500, seed=1))  # the same kinds of work first, so buffers and caches exist
            before = server.rss_mb()
            start = time.monotonic()
            send(fuzzed_requests(10_000, seed=2))
            took = time.monotonic() - start
            after = server.rss_mb()
        unexpected = {c: n for c, n in codes.items() if c not in EXPECTED_CODES}
        assert not unexpected, (unexpected, codes)
        assert codes.get("OK", 0) > 500 and codes.get("INVALID_ARGUMENT", 0) > 3000, codes
        assert server.proc.poll() is None
        with Client(server.target, timeout=10) as c:  # still answers, and right
            images, labels = snapshots.digit_images()
            assert c.classify("digits", [snapshots.png(images[17])]).results[0].labels[0] == str(labels[17])
            assert c.health("digits") == "SERVING"
        assert after - before < 50, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
        print(f"10,000 fuzzed requests in {took:.1f} s: {codes}; RSS {before:.0f} -> {after:.0f} MB")
    finally:
        server.stop()
    assert server.proc.returncode == 0


def _collect(future, codes):
    try:
        future.result()
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    codes[code] = codes.get(code, 0) + 1


def test_a_port_in_use_or_a_missing_repository_is_a_clear_error(trained, tmp_path):
    from harness import RunningServer, config
    _, folder = trained
    make_repository(tmp_path, folder, [40])
    with RunningServer(config(tmp_path)) as server:
        r = subprocess.run([sys.executable, "-m", "kindling", "serve", "--repository", str(tmp_path), "--port",
                            str(server.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{server.port}" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "kindling", "serve", "--repository", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "the repository must be a folder of model folders" in r.stderr
