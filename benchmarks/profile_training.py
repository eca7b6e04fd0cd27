"""Where a training iteration's time goes, layer by layer, in kindling and in PyTorch: forward and
backward apart, each convolution's and linear layer's time and GFLOP/s beside the bare GEMMs of the
same shapes (kindling's blas.gemm on the whole matrices: the speed the layer could reach).

    python benchmarks/profile_training.py [--models lenet,vgg_cnn,resnet18] [--iterations 3]
                                          [--markdown table.md]

kindling's layers are timed by wrapping each leaf module's forward and backward; PyTorch's through
its profiler (torch.profiler): a labelled range per module opened and closed by forward hooks,
and for the backward the autograd nodes linked (by sequence number) to the ops in that range. Both run the same model with the same weights (benchmarks/
_models.py), one iteration to warm up, then ``--iterations`` timed ones, interleaved; a layer's
figure is its median. The cores other processes used during the timed iterations are printed:
on a busy machine every time here is stretched, PyTorch's more than kindling's.

FLOPs: a convolution's forward is 2*N*OH*OW*Cout*Cin/groups*kh*kw, its backward twice that (input
and weight gradient; once for a layer whose input needs no gradient); a linear layer likewise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/runtime.py

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cpu  # noqa: E402
import _models  # noqa: E402

from kindling.runtime import blas, nn  # noqa: E402
from kindling.runtime.optim import SGD  # noqa: E402

THREADS = int(os.environ.get("KINDLING_NUM_THREADS", "2"))
MODELS = {"lenet": (_models.lenet, (1, 28, 28), 64), "vgg_cnn": (_models.vgg_cnn, (3, 32, 32), 64),
          "resnet18": (_models.resnet18, (3, 224, 224), 16)}


def leaves(model):
    return [m for m in model.modules() if not m.children()]


def gemm_shapes(m, x_shape, first: bool):
    """(forward GEMM (M, K, N), backward GEMMs [(M, K, N), ...]) of a convolution or linear layer
    whose input has ``x_shape``, else None."""
    kind = type(m).__name__
    if kind == "Conv2d":
        n, c, _, _ = x_shape
        _, _, oh, ow = m.output_shape(x_shape)
        kh, kw = m.kernel_size
        rows, k, cout = n * oh * ow, c // m.groups * kh * kw, m.out_channels // m.groups
        fwd = (rows, k, cout)
        bwd = [(k, rows, cout)] + ([] if first else [(rows, cout, k)])  # weight grad, input grad
        return fwd, bwd, m.groups
    if kind == "Linear":
        rows, k, n = int(np.prod(x_shape[:-1])), m.in_features, m.out_features
        return (rows, k, n), [(k, rows, n)] + ([] if first else [(rows, n, k)]), 1
    return None


def bare_gemm_seconds(shapes, groups, repeats=3):
    """Median seconds of kindling's blas.gemm on these (M, K, N) products, ``groups`` times each."""
    rng = np.random.default_rng(0)
    total = 0.0
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        blas.gemm(a, b, out)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(groups):
                blas.gemm(a, b, out)
            times.append(time.perf_counter() - t)
        total += statistics.median(times)
    return total


class KindlingTimer:
    """Wraps each leaf module's forward and backward to add up its seconds per iteration."""

    def __init__(self, model):
        self.fwd, self.bwd, self.input_shapes = {}, {}, {}
        for m in leaves(model):
            self._wrap(m)

    def _wrap(self, m):
        forward, backward = m.forward, m.backward

        def timed_forward(x, *args, **kwargs):
            t = time.perf_counter()
            out = forward(x, *args, **kwargs)
            self.fwd[m.name] = self.fwd.get(m.name, 0.0) + time.perf_counter() - t
            self.input_shapes[m.name] = np.shape(x)
            return out

        def timed_backward(x, g):
            t = time.perf_counter()
            out = backward(x, g)
            self.bwd[m.name] = self.bwd.get(m.name, 0.0) + time.perf_counter() - t
            return out
        m.forward, m.backward = timed_forward, timed_backward

    def reset(self):
        self.fwd, self.bwd = {}, {}


class TorchTimer:
    """Per leaf module, a labelled profiler range around its forward (forward hooks); its backward
    is the autograd nodes whose sequence numbers the ops inside that range carry (the profiler
    links each backward node to the forward op that made it)."""

    def __init__(self, torch, tmodel):
        self.torch = torch
        self._open = {}
        for i, m in enumerate(x for x in tmodel.modules() if not list(x.children())):
            label = f"L{i:03d}"
            m.register_forward_pre_hook(lambda mod, inp, label=label: self._enter(label))
            m.register_forward_hook(lambda mod, inp, out, label=label: self._exit(label))

    def _enter(self, key):
        self._open[key] = self.torch.ops.profiler._record_function_enter_new(key, None)

    def _exit(self, key):
        handle = self._open.pop(key, None)
        if handle is not None:
            self.torch.ops.profiler._record_function_exit._RecordFunction(handle)

    @staticmethod
    def seconds(prof) -> dict:
        """{label.forward|label.backward: seconds in this profile}"""
        events = list(prof.events())
        ranges = [e for e in events if len(e.name) == 4 and e.name[0] == "L" and e.name[1:].isdigit()]
        out, owner = {}, {}
        for r in ranges:
            out[r.name + ".forward"] = out.get(r.name + ".forward", 0.0) + r.cpu_time_total / 1e6
            for e in events:
                if (e.thread == r.thread and e.sequence_nr >= 0 and r.time_range.start <= e.time_range.start
                        and e.time_range.end <= r.time_range.end):
                    owner.setdefault(e.sequence_nr, r.name)  # ranges come outermost first: leaves are disjoint
        for e in events:
            if e.name.startswith("autograd::engine::evaluate_function:") and e.sequence_nr in owner:
                key = owner[e.sequence_nr] + ".backward"
                out[key] = out.get(key, 0.0) + e.cpu_time_total / 1e6
        return out


def profile(name, iterations, torch):
    build, shape, batch = MODELS[name]
    model = build()
    tmodel = _models.torch_twin(model)
    model.train()
    tmodel.train()
    model.propagate_down = False  # as PyTorch: the images need no gradient
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    crit, sgd = nn.ClassNLLCriterion(), SGD(learningrate=0.01)
    topt, loss_fn = torch.optim.SGD(tmodel.parameters(), lr=0.01), torch.nn.NLLLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    ktimer, ttimer = KindlingTimer(model), TorchTimer(torch, tmodel)

    def kindling_step():
        model.zero_grad()
        out = model.forward(x)
        crit.forward(out, y)
        model.backward(x, crit.backward(out, y))
        sgd.update(model)

    def torch_step():
        topt.zero_grad()
        loss_fn(tmodel(tx), ty).backward()
        topt.step()

    kindling_step()
    torch_step()
    k_runs, t_runs, k_total, t_total, others = [], [], [], [], []
    for _ in range(iterations):
        with _cpu.CpuMeter() as meter:
            ktimer.reset()
            t = time.perf_counter()
            kindling_step()
            k_total.append(time.perf_counter() - t)
            k_runs.append((dict(ktimer.fwd), dict(ktimer.bwd)))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                t = time.perf_counter()
                torch_step()
                t_total.append(time.perf_counter() - t)
            t_runs.append(ttimer.seconds(prof))
        others.append(meter.others)
    rows = []
    first_weighted = True
    for i, m in enumerate(leaves(model)):
        label = f"L{i:03d}"
        med = lambda vals: statistics.median(vals) if vals else 0.0  # noqa: E731
        row = {"layer": m.name, "kind": type(m).__name__,
               "k_fwd": med([f.get(m.name, 0.0) for f, _ in k_runs]),
               "k_bwd": med([b.get(m.name, 0.0) for _, b in k_runs]),
               "t_fwd": med([r.get(label + ".forward", 0.0) for r in t_runs]),
               "t_bwd": med([r.get(label + ".backward", 0.0) for r in t_runs])}
        g = gemm_shapes(m, ktimer.input_shapes.get(m.name, ()), first_weighted) if m.name in ktimer.input_shapes \
            else None
        if g is not None:
            fwd, bwd, groups = g
            first_weighted = False
            row["fwd_flop"] = 2.0 * np.prod(fwd) * groups
            row["bwd_flop"] = sum(2.0 * np.prod(s) for s in bwd) * groups
            row["bare_fwd"] = bare_gemm_seconds([fwd], groups)
            row["bare_bwd"] = bare_gemm_seconds(bwd, groups)
        rows.append(row)
    return {"rows": rows, "k_total": statistics.median(k_total), "t_total": statistics.median(t_total),
            "others": statistics.median(others), "batch": batch}


def _gflops(flop, seconds):
    return f"{flop / seconds / 1e9:.1f}" if seconds > 0 else "-"


def table(name, p) -> str:
    head = (f"\n**{name}**, batch {p['batch']}: one iteration kindling {p['k_total'] * 1e3:.1f} ms, PyTorch "
            f"{p['t_total'] * 1e3:.1f} ms (others used {p['others']:.2f} cores)\n\n"
            "| layer | fwd ms k / torch | fwd GFLOP/s k / bare GEMM | bwd ms k / torch | bwd GFLOP/s k / bare GEMM |\n"
            "|---|---|---|---|---|\n")
    lines = []
    sums = {"k_fwd": 0.0, "k_bwd": 0.0, "t_fwd": 0.0, "t_bwd": 0.0}
    for r in p["rows"]:
        for k in sums:
            sums[k] += r[k]
        if r["k_fwd"] + r["k_bwd"] + r["t_fwd"] + r["t_bwd"] < 0.01 * (p["k_total"] + p["t_total"]) \
                and "fwd_flop" not in r:
            continue  # under 1% of an iteration and no GEMM: left out of the table (counted in the sums)
        fg = (f"{_gflops(r['fwd_flop'], r['k_fwd'])} / {_gflops(r['fwd_flop'], r['bare_fwd'])}"
              if "fwd_flop" in r else "")
        bg = (f"{_gflops(r['bwd_flop'], r['k_bwd'])} / {_gflops(r['bwd_flop'], r['bare_bwd'])}"
              if "bwd_flop" in r else "")
        lines.append(f"| {r['layer']} ({r['kind']}) | {r['k_fwd'] * 1e3:.2f} / {r['t_fwd'] * 1e3:.2f} | {fg} | "
                     f"{r['k_bwd'] * 1e3:.2f} / {r['t_bwd'] * 1e3:.2f} | {bg} |")
    lines.append(f"| all layers | {sums['k_fwd'] * 1e3:.1f} / {sums['t_fwd'] * 1e3:.1f} | | "
                 f"{sums['k_bwd'] * 1e3:.1f} / {sums['t_bwd'] * 1e3:.1f} | |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--markdown", help="also write the tables here")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(THREADS)
    blas.set_threads(THREADS)
    info = blas.describe()
    intro = (f"kindling BLAS {info['backend']} ({info['reason']}), {THREADS} threads; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads")
    print(intro, flush=True)
    out = [intro + "\n"]
    for name in args.models.split(","):
        t = table(name, profile(name, args.iterations, torch))
        print(t, flush=True)
        out.append(t)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(out))


if __name__ == "__main__":
    main()
