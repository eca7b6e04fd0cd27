"""The optimizer's update alone: one step over the model's flat parameter buffer
(``OptimMethod.update``) against the same method stepping each array on its own (``apply`` over
``entries``, the path before issue 16 and still the path of a Spark task's owned slices),
interleaved in blocks in both orders, on LeNet, the VGG-style CNN and ResNet-18, with SGD
(momentum, weight decay) and Adam. It also checks that both paths moved the weights identically.

    python benchmarks/optim_update.py [--repeats N] [--json out.json]

Prints microseconds per update (medians; quiet repetitions apart, see benchmarks/_cpu.py) and
the ratio per-array / flat (> 1: the flat update is faster), and the update's share of a training
step (forward + backward + update) measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cpu  # noqa: E402
import _models  # noqa: E402

from kindling.runtime import nn  # noqa: E402
from kindling.runtime.optim import SGD, Adam  # noqa: E402
from kindling.runtime.optim.engine import compute_gradients, prepare_for_training  # noqa: E402

MODELS = {"lenet": (_models.lenet, (1, 28, 28), 10, 64), "vgg_cnn": (_models.vgg_cnn, (3, 32, 32), 10, 64),
          "resnet18": (lambda: _models.resnet18(num_classes=10), (3, 64, 64), 10, 16)}
METHODS = {"sgd": lambda: SGD(learningrate=0.01, momentum=0.9, dampening=0.0, weightdecay=5e-4),
           "adam": lambda: Adam(learningrate=1e-3, weightdecay=5e-4)}


def _trained_pair(build, shape, classes, batch):
    """Two copies of one model with the same gradients from a real backward pass."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    models = []
    for _ in range(2):
        model = build()
        if models:
            model.load_state_dict(models[0].state_dict())
        prepare_for_training(model)
        compute_gradients(model, nn.CrossEntropyCriterion(), x, y)
        models.append(model)
    return models, x, y


def measure(name, method_name, repeats):
    build, shape, classes, batch = MODELS[name]
    (per_model, flat_model), x, y = _trained_pair(build, shape, classes, batch)
    per_method, flat_method = METHODS[method_name](), METHODS[method_name]()
    steps = {"per_array": lambda: per_method.apply(per_method.entries(per_model)),
             "flat": lambda: flat_method.update(flat_model)}
    # the same number of updates on each side, in both orders, then the weights must agree
    reps = _cpu.alternate(steps, repeats, block=20) + _cpu.alternate(dict(reversed(steps.items())), repeats, block=20)
    same = all(np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(per_model.named_parameters(),
                                                                      flat_model.named_parameters()))
    summary = _cpu.summarize(reps, 1, "flat", "per_array")
    criterion = nn.CrossEntropyCriterion()
    step_times = []
    for _ in range(3):
        t = time.perf_counter()
        compute_gradients(flat_model, criterion, x, y)
        flat_method.update(flat_model)
        step_times.append(time.perf_counter() - t)
    step = statistics.median(step_times)
    flat_us = 1e6 / summary["all"]["flat"]
    return {"summary": summary, "identical_weights": same, "step_ms": round(step * 1e3, 2),
            "flat_share_of_step": round(flat_us * 1e-6 / step, 4),
            "per_array_share_of_step": round(1e-6 * 1e6 / summary["all"]["per_array"] / step, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="repetitions (a block of updates of each path) per order")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    report = {}
    for name in MODELS:
        for method_name in METHODS:
            r = measure(name, method_name, args.repeats)
            report[f"{name}/{method_name}"] = r
            s = r["summary"]
            line = (f"{name:9s} {method_name:4s}  per-array {1e6 / s['all']['per_array']:8.1f} us  "
                    f"flat {1e6 / s['all']['flat']:8.1f} us  per-array/flat {s['all']['ratio']:.2f} "
                    f"(paired {s['all']['paired_ratio']:.2f}; others {s['others_cores_median']:.2f} cores)")
            q = s["quiet"]
            line += (f"; quiet {s['quiet_repetitions']}/{s['repetitions']}: {q['ratio']:.2f}" if q
                     else f"; quiet 0/{s['repetitions']}")
            line += (f"; update share of a {r['step_ms']:.1f} ms step: {100 * r['per_array_share_of_step']:.1f}% -> "
                     f"{100 * r['flat_share_of_step']:.1f}%; identical weights: {r['identical_weights']}")
            print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
