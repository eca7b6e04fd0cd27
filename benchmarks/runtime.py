"""Runtime speed against PyTorch, and for inference against onnxruntime too (the model exported by
kindling export onnx, full graph optimisations), measured interleaved in one run on the same threads;
and a fully convolutional Caffe net (FCN-8s) against OpenCV's dnn module at two sizes.

    python benchmarks/runtime.py [--json out.json] [--contended] [--quick]
    python benchmarks/runtime.py --fcn-only          # just FCN-8s against OpenCV dnn

For each workload and mode (inference; training = forward + backward + SGD step) it alternates a
kindling batch and a PyTorch batch, so both see the same machine weather, and reports the median
records/s of each and their ratio. With --contended the set is repeated while a neighbour process
keeps one core busy. It also prints the GEMM efficiency of the largest VGG convolution, and RSS
after 10 and after 200 training iterations (steady state must not grow).

Fairness: both frameworks live in this one process, so PyTorch runs with OMP_WAIT_POLICY=PASSIVE
(unless you set it): by default its OpenMP threads keep spinning after each batch and steal the
cores from whatever runs next, which here measured kindling 1.5x slower than when run alone, while
PyTorch's own speed changed by under 5%. On machines that set OPENBLAS_CORETYPE (older OpenBLAS
builds crash on some CPUs), numpy's OpenBLAS is held to that older kernel; the kernel in use is
printed. To measure the current one: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: see the docstring

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402
from _cpu import CpuMeter  # noqa: E402

from kindling.runtime import blas, nn  # noqa: E402
from kindling.runtime.optim import SGD  # noqa: E402

THREADS = int(os.environ.get("KINDLING_NUM_THREADS", "2"))
TARGETS = {("lenet", "inference"): 1.0, ("lenet", "training"): 0.8, ("vgg_cnn", "inference"): 1.0,
           ("vgg_cnn", "training"): 0.8, ("resnet18", "inference"): 0.8}
WORKLOADS = {
    # name: (builder, input shape without batch, batch, modes)
    "lenet": (_models.lenet, (1, 28, 28), 64, ("inference", "training")),
    "vgg_cnn": (_models.vgg_cnn, (3, 32, 32), 64, ("inference", "training")),
    "resnet18": (_models.resnet18, (3, 224, 224), 8, ("inference",)),
}


def _kindling_step(model, mode, x, y, criterion, optim):
    if mode == "inference":
        return lambda: model.forward(x)

    model.propagate_down = False  # as PyTorch: the input needs no gradient

    def step():
        model.zero_grad()
        out = model.forward(x)
        criterion.forward(out, y)
        model.backward(x, criterion.backward(out, y))
        optim.update(model)
    return step


def _torch_step(torch, tmodel, mode, tx, ty, lr):
    if mode == "inference":
        def infer():
            with torch.no_grad():
                return tmodel(tx)
        return infer
    opt = torch.optim.SGD(tmodel.parameters(), lr=lr)
    loss_fn = torch.nn.NLLLoss()

    def step():
        opt.zero_grad()
        loss_fn(tmodel(tx), ty).backward()
        opt.step()
    return step


def _onnxruntime_step(model, mode, x):
    """onnxruntime on the kindling model exported to ONNX (inference only: it does not train), with
    the same threads and its full graph optimisations: the fastest CPU runtime users would pick."""
    if mode != "inference":
        return None
    try:
        import onnxruntime
        from kindling.converters.onnx.exporter import to_onnx
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    sess = onnxruntime.InferenceSession(to_onnx(model, input_shapes={"input": list(x.shape)}).SerializeToString(),
                                        options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def measure(name, mode, repeats, torch):
    builder, shape, batch, _ = WORKLOADS[name]
    rng = np.random.default_rng(0)
    model = builder()
    tmodel = _models.torch_twin(model)
    training = mode == "training"
    model.train(training)
    tmodel.train(training)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    k = _kindling_step(model, mode, x, y, nn.ClassNLLCriterion(), SGD(learningrate=0.01))
    t = _torch_step(torch, tmodel, mode, torch.from_numpy(x), torch.from_numpy(y), 0.01)
    o = _onnxruntime_step(model, mode, x)
    steps = [("kindling", k), ("torch", t)] + ([("onnxruntime", o)] if o else [])
    for _ in range(2):  # warm up: buffers, caches, thread pools
        for _, f in steps:
            f()
    times = {who: [] for who, _ in steps}
    others = []  # cores other processes kept busy during each repetition
    for _ in range(repeats):
        with CpuMeter() as meter:
            for who, f in steps:
                start = time.perf_counter()
                f()
                times[who].append(time.perf_counter() - start)
        others.append(meter.others)
    krps = batch / statistics.median(times["kindling"])
    trps = batch / statistics.median(times["torch"])
    out = {"kindling_rps": round(krps, 1), "torch_rps": round(trps, 1), "ratio": round(krps / trps, 3),
           "target": TARGETS.get((name, mode))}
    if o:
        quiet = [i for i, c in enumerate(others) if c <= 0.3]
        orps = batch / statistics.median(times["onnxruntime"])
        out.update(onnxruntime_rps=round(orps, 1), ratio_vs_onnxruntime=round(krps / orps, 3),
                   others_cores_median=round(statistics.median(others), 2), quiet_repetitions=len(quiet))
        if quiet:
            qk = statistics.median([times["kindling"][i] for i in quiet])
            qo = statistics.median([times["onnxruntime"][i] for i in quiet])
            out["quiet_ratio_vs_onnxruntime"] = round(qo / qk, 3)
    return out


def gemm_efficiency(repeats=7):
    """The largest convolution of the VGG-style CNN (64->64 channels at 32x32, batch 64): the whole
    layer's forward as GFLOP/s, and its GEMMs alone (the same cache-sized blocks, the same threads,
    without gathering the columns), against the backend's bare sgemm on the whole matrix shape."""
    from kindling.runtime.parallel import pool
    conv = nn.Conv2d(64, 64, 3, padding=1)
    x = np.random.default_rng(0).standard_normal((64, 64, 32, 32)).astype(np.float32)
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # as the previous conv hands it on
    m, kdim, n = 64 * 32 * 32, 64 * 9, 64
    flops = 2.0 * m * kdim * n
    conv.forward(x)
    block_rows = conv._scratch["cols0"].shape[0]
    blocks = [np.random.default_rng(i).standard_normal((block_rows, kdim)).astype(np.float32) for i in range(2)]
    wm = conv._scratch["wmat"][0]
    a = np.random.default_rng(1).standard_normal((m, kdim)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((kdim, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)

    def gemms_only():
        def work(wi, lo, hi):
            for r in range(lo, hi, block_rows):
                rows = min(block_rows, hi - r)
                blas.gemm(blocks[wi % 2][:rows], wm, out[r:r + rows], parallel=False)
        pool.run(m, work)

    res = {"layer": [], "gemm_in_layer": [], "bare_sgemm": []}
    for _ in range(repeats):
        for key, f in (("layer", lambda: conv.forward(x)), ("gemm_in_layer", gemms_only),
                       ("bare_sgemm", lambda: blas.gemm(a, b, out))):
            start = time.perf_counter()
            f()
            res[key].append(time.perf_counter() - start)
    g = {k: round(flops / statistics.median(v) / 1e9, 1) for k, v in res.items()}
    g["shape"] = f"{m}x{kdim}x{n}"
    g["layer_vs_bare"] = round(g["layer"] / g["bare_sgemm"], 3)
    g["gemm_vs_bare"] = round(g["gemm_in_layer"] / g["bare_sgemm"], 3)
    return g


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steady_state(iterations=200):
    """RSS after iteration 10 and after the last: buffers are reused, so it must not grow."""
    model = _models.vgg_cnn()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    step = _kindling_step(model, "training", x, y, nn.ClassNLLCriterion(), SGD(learningrate=0.01))
    rss = {}
    for i in range(1, iterations + 1):
        step()
        if i in (10, iterations):
            rss[i] = round(_rss_mb(), 1)
    return {"rss_mb_after_10": rss[10], f"rss_mb_after_{iterations}": rss[iterations],
            "growth_mb": round(rss[iterations] - rss[10], 1)}


# ---- a fully convolutional Caffe net against OpenCV's dnn module --------------------------------------
FCN_PROTOTXT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "caffe" / "zoo" / "fcn8s_voc_deploy.prototxt"
FCN_NARROW = 4  # FCN-8s with a quarter of VGG-16's channels: the real topology, seconds instead of minutes
FCN_SIZES = ((224, 224), (375, 500))  # a square crop and a photo's own size: the net takes any size
FCN_SCORES = {"score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"}
QUIET = 0.3  # cores other processes may use in a repetition that counts as quiet


def fcn_vs_opencv(repeats: int, tmp: Path) -> dict:
    """Batch-1 inference of FCN-8s (converted from the real prototxt, seeded weights) at two
    sizes, kindling and OpenCV dnn alternating on the same threads; each repetition records the
    cores other processes used (benchmarks/_cpu.py), and quiet repetitions are reported apart."""
    import cv2

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from caffe_nets import photo, zoo_net
    from kindling.converters import caffe
    cv2.setNumThreads(THREADS)
    proto, weights = zoo_net(tmp, FCN_PROTOTXT, narrow=FCN_NARROW, keep_widths=FCN_SCORES)
    model = caffe.convert(proto, weights).evaluate()
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    results = {}
    for size in FCN_SIZES:
        x = photo(size)
        ours = model.forward(x).copy()
        net.setInput(x)
        theirs = net.forward()
        err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))
        reps = []
        for _ in range(repeats):
            rep = {}
            for who in ("kindling", "opencv"):
                with CpuMeter() as cpu:
                    start = time.perf_counter()
                    if who == "kindling":
                        model.forward(x)
                    else:
                        net.setInput(x)
                        net.forward()
                    rep[who] = time.perf_counter() - start
                rep[f"{who}_others"] = cpu.others
            reps.append(rep)
        row = {"max_rel_error": err}
        for label, subset in (("all", reps), ("quiet", [r for r in reps if max(r["kindling_others"],
                                                                                   r["opencv_others"]) <= QUIET])):
            if not subset:
                row[label] = None
                continue
            k = statistics.median(r["kindling"] for r in subset)
            o = statistics.median(r["opencv"] for r in subset)
            row[label] = {"repetitions": len(subset), "kindling_ms": round(1000 * k, 1),
                          "opencv_ms": round(1000 * o, 1), "ratio": round(o / k, 3),
                          "others_median": round(statistics.median(max(r["kindling_others"], r["opencv_others"])
                                                                   for r in subset), 2)}
        results[f"{size[0]}x{size[1]}"] = row
    return results


def _print_fcn(results: dict) -> None:
    for size, row in results.items():
        for label in ("all", "quiet"):
            r = row[label]
            if r is None:
                print(f"[fcn8s/{FCN_NARROW} {size} {label}] no repetition had others <= {QUIET} cores", flush=True)
                continue
            print(f"[fcn8s/{FCN_NARROW} {size} {label}] kindling {r['kindling_ms']:7.1f} ms   opencv "
                  f"{r['opencv_ms']:7.1f} ms   ratio {r['ratio']:.2f} (target >= 1.0; opencv time / kindling time)"
                  f"   {r['repetitions']} repetitions, others median {r['others_median']:.2f} cores "
                  f"(outputs agree to {row['max_rel_error']:.1e})", flush=True)


def _burn():
    while True:
        pass


def run_set(torch, repeats, label):
    results = {}
    for name, (_, _, _, modes) in WORKLOADS.items():
        for mode in modes:
            r = measure(name, mode, repeats, torch)
            results[f"{name}/{mode}"] = r
            tgt = f" (target >= {r['target']})" if r["target"] else ""
            ort = ""
            if "onnxruntime_rps" in r:
                quiet = (f", quiet {r['quiet_ratio_vs_onnxruntime']:.2f} over {r['quiet_repetitions']}"
                         if "quiet_ratio_vs_onnxruntime" in r else ", no quiet repetition")
                ort = (f"   onnxruntime {r['onnxruntime_rps']:8.1f} rec/s   kindling/onnxruntime "
                       f"{r['ratio_vs_onnxruntime']:.2f}{quiet} (others used {r['others_cores_median']:.2f} cores)")
            print(f"[{label}] {name:9s} {mode:9s} kindling {r['kindling_rps']:8.1f} rec/s   torch {r['torch_rps']:8.1f}"
                  f" rec/s   ratio {r['ratio']:.2f}{tgt}{ort}", flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--contended", action="store_true", help="repeat the set with a neighbour busy on one core")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved timed batches per workload and framework")
    ap.add_argument("--steady-iterations", type=int, default=200)
    ap.add_argument("--fcn-only", action="store_true",
                    help="only the fully convolutional net (FCN-8s) against OpenCV dnn, at two sizes")
    ap.add_argument("--fcn-repeats", type=int, default=15, help="interleaved batch-1 runs per size and side")
    args = ap.parse_args(argv)
    if args.fcn_only:
        import tempfile
        blas.set_threads(THREADS)
        with tempfile.TemporaryDirectory() as tmp:
            results = fcn_vs_opencv(args.fcn_repeats, Path(tmp))
        _print_fcn(results)
        if args.json:
            with open(f"{args.json}.tmp", "w") as f:
                json.dump({"fcn_vs_opencv": results, "threads": THREADS}, f, indent=2)
            os.replace(f"{args.json}.tmp", args.json)
        return

    import torch
    torch.set_num_threads(THREADS)
    blas.set_threads(THREADS)
    info = blas.describe()
    print(f"kindling BLAS: {info['backend']} {info['version']} (kernel {info['openblas_kernel']}; {info['reason']}), "
          f"{info['threads']} threads; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    report = {"backend": info, "torch": torch.__version__, "threads": THREADS}
    report["quiet"] = run_set(torch, args.repeats, "quiet")
    if args.contended:
        neighbour = multiprocessing.Process(target=_burn, daemon=True)
        neighbour.start()
        try:
            report["contended"] = run_set(torch, args.repeats, "contended")
        finally:
            neighbour.terminate()
    g = gemm_efficiency()
    report["vgg_largest_conv_gflops"] = g
    print(f"VGG largest conv {g['shape']}: layer {g['layer']} GFLOP/s, its GEMM {g['gemm_in_layer']}, bare sgemm "
          f"{g['bare_sgemm']} -> layer/bare {g['layer_vs_bare']:.2f}, gemm/bare {g['gemm_vs_bare']:.2f} (target >= 0.70)")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        report["fcn_vs_opencv"] = fcn_vs_opencv(args.fcn_repeats, Path(tmp))
    _print_fcn(report["fcn_vs_opencv"])
    s = steady_state(args.steady_iterations)
    report["steady_state"] = s
    print(f"steady state (VGG-style training): RSS {s['rss_mb_after_10']} MB after 10 iterations, "
          f"{s[f'rss_mb_after_{args.steady_iterations}']} MB after {args.steady_iterations} (growth {s['growth_mb']} MB)")
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
