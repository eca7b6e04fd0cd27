"""Training throughput through the Optimizer (with its data pipeline) against the runtime's bare
forward/backward/update loop and a plain PyTorch loop, interleaved in one run; and the image
pipeline (decode, resize, crop, normalize) with 2 threads against the same steps in one PIL +
numpy loop, on small noisy JPEGs and on phone-camera-size photos (where kindling decodes a JPEG at
the smallest DCT scale its resize allows).

    python benchmarks/training.py [--json out.json]

Targets: the Optimizer adds no more than 10% over the bare loop; frozen layers save backward time.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/runtime.py

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402

from kindling.runtime import nn  # noqa: E402
from kindling.runtime.data import ArrayDataSet, ImageFolder, Pipeline, batches  # noqa: E402
from kindling.runtime.optim import SGD, Optimizer, Trigger  # noqa: E402

WORKLOADS = {"lenet": (_models.lenet, (1, 28, 28)), "vgg_cnn": (_models.vgg_cnn, (3, 32, 32))}
BATCH, ITERATIONS = 64, 8


def kindling_optimizer(build, x, y, frozen=()):
    model = build()
    if frozen:
        model.freeze(*frozen)
    data = ArrayDataSet(x, y)

    def run():
        opt = Optimizer(model, data, nn.ClassNLLCriterion(), SGD(learningrate=0.01), Trigger.max_iteration(ITERATIONS),
                        BATCH, workers=2)
        opt.optimize()
    return run


def kindling_bare(build, x, y):
    model = build()
    model.propagate_down = False
    crit, sgd = nn.ClassNLLCriterion(), SGD(learningrate=0.01)

    def run():
        for i in range(ITERATIONS):
            xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
            model.zero_grad()
            out = model.forward(xb)
            crit.forward(out, yb)
            model.backward(xb, crit.backward(out, yb))
            sgd.update(model)
    return run


def torch_loop(torch, build, x, y):
    tmodel = _models.torch_twin(build())
    opt = torch.optim.SGD(tmodel.parameters(), lr=0.01)
    loss_fn = torch.nn.NLLLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def run():
        for i in range(ITERATIONS):
            opt.zero_grad()
            loss_fn(tmodel(tx[i * BATCH:(i + 1) * BATCH]), ty[i * BATCH:(i + 1) * BATCH]).backward()
            opt.step()
    return run


def interleaved(runs: dict, repeats: int) -> dict:
    for f in runs.values():
        f()
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: round(ITERATIONS * BATCH / statistics.median(v), 1) for k, v in times.items()}


CAT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "images" / "cat.jpg"


def _images(kind: str, rng):
    """noise: 400x300 random pixels (the worst case for a JPEG decoder); photo: the real cat photo
    from the fixtures at a phone camera's 4032x3024 (or a smooth synthetic image without it)."""
    if kind == "noise":
        return lambda: Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    if CAT.exists():
        photo = Image.open(CAT).convert("RGB").resize((4032, 3024), Image.BICUBIC)
    else:
        yy, xx = np.mgrid[0:3024, 0:4032]
        photo = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
    return lambda: photo


def pipeline_throughput(repeats: int, kind: str = "noise", per_class: int = 32) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        make = _images(kind, np.random.default_rng(0))
        for c in range(4):
            (Path(tmp) / str(c)).mkdir()
            for i in range(per_class):
                make().save(Path(tmp) / str(c) / f"{i}.jpg", quality=90)
        pre = {"resize": 256, "input_size": [224, 224], "channel_order": "bgr", "mean": [104, 117, 123]}
        data = ImageFolder(tmp, Pipeline.from_metadata(pre))
        files = [p for p, _ in data.samples]
        mean = np.array([104, 117, 123], np.float32).reshape(3, 1, 1)

        def threaded():
            for _ in batches(data, 32, workers=2):
                pass

        def single_loop():
            out = []
            for p in files:
                img = Image.open(p).convert("RGB")
                s = 256 / min(img.size)
                img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BILINEAR)
                left, top = (img.size[0] - 224) // 2, (img.size[1] - 224) // 2
                a = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1)[::-1]
                out.append(a - mean)
            return np.stack(out)

        times = {"kindling_2_threads": [], "pil_numpy_loop": []}
        for _ in range(repeats):
            for k, f in (("kindling_2_threads", threaded), ("pil_numpy_loop", single_loop)):
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        res = {k: round(len(files) / statistics.median(v), 1) for k, v in times.items()}
        res["ratio"] = round(res["kindling_2_threads"] / res["pil_numpy_loop"], 2)
        return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    logging.getLogger("kindling.optim").setLevel(logging.WARNING)
    report = {}
    rng = np.random.default_rng(0)
    for name, (build, shape) in WORKLOADS.items():
        x = rng.standard_normal((BATCH * ITERATIONS, *shape)).astype(np.float32)
        y = rng.integers(0, 10, BATCH * ITERATIONS)
        runs = {"optimizer": kindling_optimizer(build, x, y), "bare_loop": kindling_bare(build, x, y),
                "torch_loop": torch_loop(torch, build, x, y)}
        frozen = ("conv1", "conv2") if name == "lenet" else ("conv0", "conv1", "conv3", "conv4")
        runs["optimizer_convs_frozen"] = kindling_optimizer(build, x, y, frozen)
        r = interleaved(runs, args.repeats)
        r["optimizer_overhead"] = round(r["bare_loop"] / r["optimizer"] - 1, 3)
        r["optimizer_vs_torch"] = round(r["optimizer"] / r["torch_loop"], 3)
        r["frozen_speedup"] = round(r["optimizer_convs_frozen"] / r["optimizer"], 2)
        report[name] = r
        print(f"{name:8s} training records/s: Optimizer {r['optimizer']}, bare loop {r['bare_loop']}, PyTorch loop "
              f"{r['torch_loop']} -> Optimizer overhead {r['optimizer_overhead']:+.1%} (target <= +10%), "
              f"vs PyTorch {r['optimizer_vs_torch']:.2f}x; convs frozen {r['optimizer_convs_frozen']} "
              f"({r['frozen_speedup']:.2f}x)", flush=True)
    for kind, what, per_class in (("noise", "400x300 noise JPEGs", 32), ("photo", "4032x3024 photo JPEGs", 8)):
        p = pipeline_throughput(max(3, args.repeats // 2), kind, per_class)
        report[f"image_pipeline_{kind}"] = p
        print(f"image pipeline on {what} (decode, resize 256, crop 224, normalize) images/s: kindling with 2 "
              f"threads {p['kindling_2_threads']}, single PIL+numpy loop {p['pil_numpy_loop']} -> {p['ratio']:.2f}x",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
