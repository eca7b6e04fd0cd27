"""A real server on 127.0.0.1 with real clients: answers, metadata, the gate, health, bad input."""
import json
import io
import logging
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import kindling
import snapshots
from harness import RunningServer, config, free_port, make_repository, wait_for
from kindling.protos import serving_pb2 as pb
from kindling.protos import serving_pb2_grpc as pb_grpc
from kindling.runtime.predict import Predictor
from kindling.serving import Client, ServingError, log

BEST = 40


@pytest.fixture(scope="module")
def digits(trained, tmp_path_factory):
    """A server on a repository holding the best snapshot, and a few digit PNGs on disk."""
    _, folder = trained
    root = tmp_path_factory.mktemp("repo")
    make_repository(root, folder, [BEST])
    images, labels = snapshots.digit_images()
    files = []
    for i in (0, 1, 2, 3, 17):
        f = root / f"digit{i}.png"
        f.write_bytes(snapshots.png(images[i]))
        files.append(f)
    with RunningServer(config(root, max_images=8, max_pixels=480 * 360, max_message_bytes=1 << 20)) as server:
        yield server, root, files


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kindling", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_classify_equals_kindling_run_on_the_same_files(digits):
    server, root, files = digits
    from caffe_nets import FIXTURES
    files = [*files, FIXTURES / "images" / "cat.jpg"]
    snapshot = root / "digits" / f"model.{BEST}"
    ran = run_cli("run", snapshot, "--input", *files, "--top-k", 3)
    assert ran.returncode == 0, ran.stderr
    with Client(server.target) as client:
        answer = client.classify("digits", files, top_k=3)
    assert answer.model == "digits" and answer.version == BEST
    local = Predictor.load(snapshot).classify(files, top_k=3)
    printed = _printed(ran.stdout)
    for f, got, ref in zip(files, answer.results, local):
        assert got.indices == ref.indices and got.labels == ref.labels
        np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5)
        assert [label for label, _ in printed[str(f)]] == got.labels
        np.testing.assert_allclose([s for _, s in printed[str(f)]], got.scores, atol=6e-5)  # printed to 4 places
    # and the command-line client prints the same
    asked = run_cli("classify", "--server", server.target, "--model", "digits", "--top-k", 3, *files)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines()[-1] == f"(model digits version {BEST})"
    for f, row in _printed(asked.stdout).items():
        assert [label for label, _ in row] == [label for label, _ in printed[f]]
        np.testing.assert_allclose([s for _, s in row], [s for _, s in printed[f]], atol=2e-4)
    # it also classifies correctly: these are real digits
    _, labels = snapshots.digit_images()
    assert [r.labels[0] for r in answer.results[:5]] == [str(labels[i]) for i in (0, 1, 2, 3, 17)]


def _printed(stdout: str) -> dict:
    """{file: [(label, score), ...]} from `kindling run` / `kindling classify` lines."""
    rows = {}
    for line in stdout.splitlines():
        if ": " in line:
            path, classes = line.rsplit(": ", 1)
            rows[path] = [(c.rsplit(" ", 1)[0], float(c.rsplit(" ", 1)[1])) for c in classes.split(", ")]
    return rows


def test_predict_gives_the_models_outputs(digits):
    server, root, _ = digits
    images, _ = snapshots.digit_images()
    x = images[:6, None].astype(np.float32) / 255
    expected = Predictor.load(root / "digits" / f"model.{BEST}").predict(x)["prob"]
    with Client(server.target) as client:
        version, out = client.predict("digits", {"data": x})
        assert version == BEST and list(out) == ["prob"]
        np.testing.assert_allclose(out["prob"], expected, rtol=1e-5, atol=1e-6)
        _, out = client.predict("digits", x, outputs=["prob"])  # one input: any single name
        np.testing.assert_allclose(out["prob"], expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ServingError, match=r"output_filter names \['nope'\]; the outputs are \['prob'\]"):
            client.predict("digits", x, outputs=["nope"])
        # a preprocessed tensor to Classify gives what the image gives
        from_tensor = client.classify("digits", [x[0]], top_k=2).results[0]
        from_png = client.classify("digits", [snapshots.png(images[0])], top_k=2).results[0]
        assert from_tensor.indices == from_png.indices


def test_metadata_names_what_admitted_the_version(digits, trained):
    server, root, _ = digits
    accuracies, _ = trained
    with Client(server.target) as client:
        m = client.model_metadata("digits")
    assert m.model.version == BEST and list(m.input_shape) == [-1, 1, 28, 28]
    assert list(m.input_names) == ["data"] and list(m.output_names) == ["prob"] and list(m.labels) == snapshots.LABELS
    assert m.preprocessing.channel_order == "gray" and list(m.preprocessing.input_size) == [28, 28]
    assert m.preprocessing.scale == pytest.approx(1 / 255)
    assert m.source.framework == "caffe" and [f.path for f in m.source.files] == ["lenet.prototxt",
                                                                                 "lenet_iter_10000.caffemodel"]
    assert m.validation.dataset == "digits-val" and m.validation.count == 400 and m.validation.iteration == BEST
    assert m.validation.results["Top1Accuracy"] == pytest.approx(accuracies[BEST])
    assert [(v.version, v.state, v.default) for v in m.versions] == [(BEST, pb.AVAILABLE, True)]


def test_the_gate_refuses_and_lists_while_a_validated_version_serves(trained, tmp_path):
    accuracies, folder = trained
    model_dir = make_repository(tmp_path, folder, [BEST, 1])
    kindling.save(snapshots.converted_lenet(), model_dir / "model.50")  # converted, never validated
    data = (model_dir / f"model.{BEST}").read_bytes()
    (model_dir / "model.60").write_bytes(data[:len(data) // 2])  # truncated
    corrupt = bytearray(data)
    corrupt[-100] ^= 0xFF  # one flipped bit of tensor data: the header and size look fine
    (model_dir / "model.80").write_bytes(bytes(corrupt))
    poisoned = kindling.load(model_dir / f"model.{BEST}")
    poisoned.find("ip2").params["weight"][:] = np.nan  # loads, fails its smoke test
    kindling.save(poisoned, model_dir / "model.90")
    with RunningServer(config(tmp_path, min_top1=0.9, settle_seconds=1.0)) as server, Client(server.target) as client:
        settling = {v.version for v in client.list_models().models[0].versions if v.state == pb.SETTLING}
        assert settling == {BEST, 1, 50, 60, 80, 90}  # just written: looked at once still for a second
        wait_for(lambda: all(v.state in (pb.AVAILABLE, pb.REFUSED) for v in client.list_models().models[0].versions),
                 what="every version to be settled and judged")
        states = {v.version: v for v in client.list_models().models[0].versions}
        assert states[BEST].state == pb.AVAILABLE and states[BEST].default
        assert states[1].state == pb.REFUSED
        assert states[1].reason == f"Top1Accuracy {accuracies[1]:.4g} < 0.9 on digits-val"
        assert states[50].state == pb.REFUSED and "no validation record" in states[50].reason
        assert states[60].state == pb.REFUSED and "truncated" in states[60].reason
        assert states[80].state == pb.REFUSED and "SHA-256 mismatch" in states[80].reason
        assert states[90].state == pb.REFUSED and "NaN" in states[90].reason
        for version in (1, 50, 60, 80, 90):
            with pytest.raises(ServingError) as e:
                client.classify("digits", [np.zeros((1, 28, 28), np.float32)], version=version)
            assert e.value.code is grpc.StatusCode.NOT_FOUND and f"version {version} is not available" in e.value.message
        assert client.classify("digits", [np.zeros((1, 28, 28), np.float32)]).version == BEST
        # a copy landing in two steps seconds apart is never loaded half-way; once whole it serves
        part = model_dir / "model.70"
        part.write_bytes(data[:len(data) // 3])
        wait_for(lambda: any(v.version == 70 and v.state == pb.REFUSED for v in client.list_models().models[0].versions),
                 what="the half-copied file to be looked at")
        assert client.classify("digits", [np.zeros((1, 28, 28), np.float32)]).version == BEST
        with open(part, "ab") as f:
            f.write(data[len(data) // 3:])
        wait_for(lambda: client.list_models().models[0].default_version == 70, what="the completed copy to serve")
        versions = {v.version: v for v in client.list_models().models[0].versions}
        assert versions[70].state == pb.AVAILABLE and versions[BEST].state == pb.UNLOADING  # a tie: the newer wins
        assert versions[1].state == pb.REFUSED  # a refusal never blocked the later version


def _watch(target, service, seen, stop):
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
        stop.append(stream)
        try:
            for reply in stream:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError:
            pass


def test_health_at_start_swap_refusal_and_removal(trained, tmp_path):
    _, folder = trained
    model_dir = make_repository(tmp_path, folder, [])
    (tmp_path / "other").mkdir()
    with RunningServer(config(tmp_path, min_top1=0.9, grace_seconds=0.0)) as server, Client(server.target) as client:
        assert client.health("") == "SERVING"
        assert client.health("digits") == "NOT_SERVING"  # a model with no version is never SERVING
        assert client.health("nothing-here") == "SERVICE_UNKNOWN"
        seen, streams = [], []
        watcher = threading.Thread(target=_watch, args=(server.target, "digits", seen, streams), daemon=True)
        watcher.start()
        wait_for(lambda: seen, what="the first health status")
        shutil.copyfile(folder / "model.1", model_dir / "model.1")  # below the policy: refused
        server.poll()
        assert client.health("digits") == "NOT_SERVING"
        shutil.copyfile(folder / "model.20", model_dir / "model.20")  # 0.9075: admitted
        wait_for(lambda: client.health("digits") == "SERVING", what="SERVING")
        for v in (30, 35, 39):  # swaps
            shutil.copyfile(folder / f"model.{v}", model_dir / f"model.{v}")
            wait_for(lambda v=v: client.list_models().models[0].default_version == v, what=f"version {v}")
        for v in (39, 35, 30):  # removals roll back, still serving
            (model_dir / f"model.{v}").unlink()
            wait_for(lambda v=v: client.list_models().models[0].default_version not in (0, v), what="a rollback")
        assert client.health("digits") == "SERVING"
        (model_dir / "model.20").unlink()
        wait_for(lambda: client.health("digits") == "NOT_SERVING", what="NOT_SERVING once nothing validated is left")
        wait_for(lambda: seen[-1:] == ["NOT_SERVING"], what="the watch stream to see it")
        streams[0].cancel()
    first = seen.index("SERVING")
    assert set(seen[:first]) == {"NOT_SERVING"} and set(seen[first:-1]) == {"SERVING"}, seen


def _code(call):
    try:
        call()
    except ServingError as e:
        return e.code, e.message
    except grpc.RpcError as e:  # a raw stub's error
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def _bomb_png(width, height):
    import struct
    import zlib
    data = bytearray(snapshots.png(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bad_input_gets_a_status_saying_what_is_wrong(digits):
    server, root, files = digits
    good = files[0].read_bytes()
    ok = np.zeros((1, 28, 28), np.float32)
    with Client(server.target) as c, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ServingStub(channel)
        INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        cases = {
            "not an image": (lambda: c.classify("digits", [b"GIF89a no image here"]), INVALID, "not an image"),
            "truncated": (lambda: c.classify("digits", [good[:len(good) // 2]]), INVALID, "cannot be decoded"),
            "tensor shape": (lambda: c.classify("digits", [np.zeros((3, 28, 28), np.float32)]), INVALID,
                             r"shape [1, 3, 28, 28] does not fit the model's [-1, 1, 28, 28]"),
            "tensor dtype": (lambda: stub.Classify(pb.ClassifyRequest(model=pb.ModelSpec(name="digits"), images=[
                pb.ImageInput(tensor=pb.Tensor(shape=[1, 28, 28], dtype=pb.FLOAT64, data=bytes(28 * 28 * 8)))])),
                INVALID, "dtype FLOAT64 is not accepted: send FLOAT32"),
            "tensor bytes": (lambda: stub.Classify(pb.ClassifyRequest(model=pb.ModelSpec(name="digits"), images=[
                pb.ImageInput(tensor=pb.Tensor(shape=[1, 28, 28], dtype=pb.FLOAT32, data=bytes(10)))])),
                INVALID, "holds 784 float32 values = 3,136 bytes, but data has 10 bytes"),
            "empty image": (lambda: stub.Classify(pb.ClassifyRequest(model=pb.ModelSpec(name="digits"),
                                                                     images=[pb.ImageInput()])),
                            INVALID, "neither encoded bytes nor a tensor"),
            "no images": (lambda: c.classify("digits", []), INVALID, "no images"),
            "too many images": (lambda: c.classify("digits", [good] * 9), INVALID, "9 images in one request, over the "
                                                                                   "server's --max-images 8"),
            "pixels": (lambda: c.classify("digits", [snapshots.png(np.zeros((361, 480), np.uint8))]), INVALID,
                       "480x361 = 173,280 pixels, over the limit of 172,800"),
            "bomb": (lambda: c.classify("digits", [_bomb_png(100_000, 100_000)]), INVALID, "--max-pixels is 172,800"),
            "message size": (lambda: c.classify("digits", [bytes(2 << 20)]), EXHAUSTED, "larger than max"),
            "top_k": (lambda: c.classify("digits", [good], top_k=-1), INVALID, "top_k must be >= 0"),
            "unknown model": (lambda: c.classify("cats", [good]), NOT_FOUND, "no model named 'cats'; models: digits"),
            "path as a name": (lambda: c.classify("../digits", [good]), NOT_FOUND, "no model named '../digits'"),
            "unknown version": (lambda: c.classify("digits", [good], version=7), NOT_FOUND,
                                f"version 7 is not available; available: {BEST}"),
            "negative version": (lambda: c.classify("digits", [good], version=-1), INVALID, "version must be >= 0"),
            "predict name": (lambda: c.predict("digits", {"a": ok[None], "b": ok[None]}), INVALID,
                             "the model's inputs are ['data']; missing ['data']; unknown ['a', 'b']"),
            "predict rows": (lambda: c.predict("digits", np.zeros((9, 1, 28, 28), np.float32)), INVALID,
                             "9 rows in one request"),
            "metadata": (lambda: c.model_metadata("nope"), NOT_FOUND, "no model named 'nope'"),
        }
        for name, (call, code, text) in cases.items():
            got, message = _code(call)
            assert got is code and text in message, (name, got, message)
        # and after all of that it still answers
        assert c.classify("digits", files).version == BEST


def test_queue_overflow_deadlines_and_dropped_work(trained, tmp_path):
    snapshots.slow_snapshot(tmp_path / "slow", filters=256)  # ~80 ms a request: a queue lasts long enough to see
    with RunningServer(config(tmp_path, workers=1, max_batch=4, max_queue=8)) as server:
        x = np.zeros((4, 3, 192, 192), np.float32)
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ServingStub(channel)
            request = pb.ClassifyRequest(model=pb.ModelSpec(name="slow"),
                                         images=[pb.ImageInput(tensor=pb.Tensor(shape=x.shape[1:], dtype=pb.FLOAT32,
                                                                                data=x[0].tobytes()))] * 4)
            futures = [stub.Classify.future(request, timeout=60) for _ in range(12)]
            codes = []
            for f in futures:
                try:
                    f.result()
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
                    if e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "queue is full" in e.details() and "limit 8" in e.details()
            assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"} and codes.count("OK") >= 2, codes
            # a deadline that passes while the request waits: the work is dropped, not done
            batcher = server.server.batcher
            busy = [stub.Classify.future(request, timeout=60) for _ in range(2)]
            # one request computing, the other waiting: the short one queues behind it (and fits the limit)
            wait_for(lambda: batcher.busy() == 1 and batcher.depth() == 4, interval=0.001, what="a queue")
            with pytest.raises(grpc.RpcError) as e:
                stub.Classify(request, timeout=0.05)
            assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            for f in busy:
                f.result()
            batches = server.server.metrics.batch.labels("slow")._sum.get()
            assert batches == 4 * (codes.count("OK") + 2), "the expired request was computed anyway"


def test_reflection_lists_the_services(digits):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from google.protobuf.descriptor_pool import DescriptorPool
    server, _, _ = digits
    with grpc.insecure_channel(server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert {"kindling.serving.v1.Serving", "grpc.health.v1.Health"} <= set(db.get_services())
        service = DescriptorPool(db).FindServiceByName("kindling.serving.v1.Serving")
        assert [m.name for m in service.methods] == ["Classify", "Predict", "GetModelMetadata", "ListModels"]


def test_metrics_and_json_log_lines(trained, tmp_path):
    _, folder = trained
    make_repository(tmp_path, folder, [1, BEST])
    stream = io.StringIO()
    handler = log.configure(stream)
    try:
        port = free_port()
        with RunningServer(config(tmp_path, min_top1=0.9, metrics_port=port)) as server, Client(server.target) as c:
            c.classify("digits", [np.zeros((1, 28, 28), np.float32)] * 3)
            _code(lambda: c.classify("digits", [b"junk"]))
            # an aborted call's status can reach the client a moment before its handler has unwound
            in_flight = server.server.metrics.in_flight.labels("Classify")
            wait_for(lambda: in_flight._value.get() == 0, what="no request in flight")
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        log.log.removeHandler(handler)
    for line in ('kindling_requests_total{code="OK",method="Classify",model="digits"} 1.0',
                 'kindling_requests_total{code="INVALID_ARGUMENT",method="Classify",model="digits"} 1.0',
                 'kindling_batch_size_sum{model="digits"} 3.0', "kindling_queue_images 0.0",
                 'kindling_requests_in_flight{method="Classify"} 0.0',
                 f'kindling_version_state{{model="digits",state="available",version="{BEST}"}} 1.0',
                 'kindling_refusals_total{model="digits",reason="below_policy"} 1.0',
                 'kindling_request_seconds_count{method="Classify"} 2.0'):
        assert line in text, line
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    refused = next(e for e in events if e["event"] == "refused")
    assert refused["model"] == "digits" and refused["version"] == 1 and "< 0.9 on digits-val" in refused["reason"]
    assert {"listening", "serving", "stopping", "stopped"} <= {e["event"] for e in events}
    assert all(e["ts"].endswith("Z") and e["level"] in ("info", "warning", "error") for e in events)


def test_policy_files_pin_and_roll_back_through_the_repository(trained, tmp_path):
    _, folder = trained
    model_dir = make_repository(tmp_path, folder, [20, 30, BEST])
    x = [np.zeros((1, 28, 28), np.float32)]
    with RunningServer(config(tmp_path, grace_seconds=0.0)) as server, Client(server.target) as client:
        assert client.classify("digits", x).version == BEST  # best by default
        (model_dir / "policy.json").write_text('{"versions": {"pinned": [20, 30]}}')
        wait_for(lambda: client.list_models().models[0].default_version == 30, what="the pinned versions")
        assert client.classify("digits", x, version=20).version == 20
        status = client.list_models().models[0]
        assert status.policy == "pinned 20,30" and {v.version: v.state for v in status.versions}[BEST] == pb.UNLOADED
        (model_dir / "policy.json").write_text('{"versions": {"pinned": [20]}}')  # un-pinning 30 rolls back
        wait_for(lambda: client.list_models().models[0].default_version == 20, what="the roll back to 20")
        (model_dir / "policy.json").write_text('{"versions": "newest"}')  # an unreadable policy: the last one stays
        server.poll()
        assert client.list_models().models[0].default_version == 20
        (model_dir / "policy.json").unlink()
        wait_for(lambda: client.list_models().models[0].default_version == BEST, what="best again")
        (model_dir / "policy.json").write_text('{"min": 0.99}')  # a stricter gate refuses what answered
        wait_for(lambda: client.health("digits") == "NOT_SERVING", what="nothing admitted any more")
        best = next(v for v in client.list_models().models[0].versions if v.version == BEST)
        assert best.state == pb.REFUSED and best.reason == "Top1Accuracy 0.955 < 0.99 on digits-val", best


def test_a_served_file_changed_in_place_is_reloaded_only_once_whole_and_valid(trained, tmp_path):
    _, folder = trained
    model_dir = make_repository(tmp_path, folder, [BEST])
    target = model_dir / f"model.{BEST}"
    images, _ = snapshots.digit_images()
    x = images[:4, None].astype(np.float32) / 255
    before = Predictor.load(folder / f"model.{BEST}").predict(x)["prob"]
    after = Predictor.load(folder / "model.5").predict(x)["prob"]
    with RunningServer(config(tmp_path, settle_seconds=0.3)) as server, Client(server.target) as client:
        wait_for(lambda: client.list_models().models[0].default_version == BEST, what="the snapshot to settle")
        np.testing.assert_allclose(client.predict("digits", x)[1]["prob"], before, rtol=1e-5, atol=1e-6)
        target.write_bytes(b"not a model any more")  # rewritten in place (cp does this): refused, the copy answers
        wait_for(lambda: "the file changed and is refused" in client.list_models().models[0].versions[0].reason,
                 what="the changed file to be refused")
        np.testing.assert_allclose(client.predict("digits", x)[1]["prob"], before, rtol=1e-5, atol=1e-6)
        target.write_bytes((folder / "model.5").read_bytes())  # a whole, validated file: reloaded
        wait_for(lambda: np.allclose(client.predict("digits", x)[1]["prob"], after, rtol=1e-5, atol=1e-6),
                 what="the new contents to answer")
        status = client.list_models().models[0]
        assert status.default_version == BEST and status.versions[0].reason == ""
