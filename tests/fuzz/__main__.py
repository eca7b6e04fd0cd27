"""python -m tests.fuzz [--inputs N] [--targets a,b] [--seed S] ...: N mutated inputs per target,
each in a forked worker under a memory limit and a timeout; prints counts by outcome per target
and writes every bad input to --findings (replay one with --replay FILE --targets NAME)."""
from __future__ import annotations

import os

# one thread per worker: the fuzz runs beside other work, and fork() wants no pool threads
for _var in ("KINDLING_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# no BLAS calibration in every worker (kindling info describes the backend): loaders do not care
os.environ.setdefault("KINDLING_BLAS", "openblas")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .engine import Campaign, classify  # noqa: E402
from .mutate import generate  # noqa: E402
from .targets import TARGETS, load  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--inputs", type=int, default=1000, help="inputs per target (default 1000)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first input number (to continue a campaign)")
    p.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per input (default 10)")
    p.add_argument("--memory-mb", type=int, default=2048,
                   help="address space a worker may add to what it has at start (default 2048)")
    p.add_argument("--findings", default="fuzz-findings", help="folder for bad inputs (default ./fuzz-findings)")
    p.add_argument("--json", help="also write the counts to this file")
    p.add_argument("--progress", type=int, default=0, metavar="N", help="print the counts so far every N inputs")
    p.add_argument("--replay", help="run this one file through the target in this process, with a traceback")
    args = p.parse_args(argv)
    names = [n for n in args.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    if args.replay:
        import tempfile
        data = Path(args.replay).read_bytes()
        with tempfile.TemporaryDirectory() as d:
            r = classify(load(names[0]).target, data, Path(d))
        print(f"{r.outcome} {r.kind}\n{r.detail}")
        if r.kind == "exception":  # again, with the whole traceback
            with tempfile.TemporaryDirectory() as d:
                load(names[0]).target(data, Path(d))
        return 0 if r.outcome != "bad" else 1
    report = {}
    for name in names:
        report[name] = run_target(name, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    bad = sum(r["bad"] for r in report.values())
    print(f"{'all targets':>12}: {bad} bad over {sum(r['inputs'] for r in report.values())} inputs")
    return 1 if bad else 0


def run_target(name: str, args) -> dict:
    mod = load(name)
    seeds = mod.seeds()
    campaign = Campaign(mod.target, memory_mb=args.memory_mb, timeout=args.timeout)
    start = time.perf_counter()
    findings = Path(args.findings)
    try:
        for i in range(args.start, args.start + args.inputs):
            data = generate(args.seed, name, i, seeds, getattr(mod, "TOKENS", ()), getattr(mod, "NESTING", ()),
                            structured=getattr(mod, "structured", None))
            result = campaign.run(data)
            done = i + 1 - args.start
            if args.progress and done % args.progress == 0 and done < args.inputs:
                c = campaign.counts
                print(f"{name:>12}: {done} inputs in {time.perf_counter() - start:.0f} s: ok {c['ok']}, "
                      f"clean error {c['clean']}, bad {c['bad']} (so far)", flush=True)
            if result.outcome == "bad":
                findings.mkdir(parents=True, exist_ok=True)
                stem = findings / f"{name}-{args.seed}-{i}"
                stem.with_suffix(".bin").write_bytes(data)
                stem.with_suffix(".txt").write_text(f"{result.kind}\n{result.detail}\n")
                print(f"{name} #{i}: bad ({result.kind}): {result.detail.strip().splitlines()[-1][:200]}",
                      file=sys.stderr, flush=True)
    finally:
        campaign.close()
    seconds = time.perf_counter() - start
    counts = {k: campaign.counts.get(k, 0) for k in ("ok", "clean", "bad")}
    kinds = {f"{o}:{k}": n for (o, k), n in sorted(campaign.kinds.items()) if o == "bad"}
    print(f"{name:>12}: {args.inputs} inputs in {seconds:.0f} s: ok {counts['ok']}, clean error {counts['clean']}, "
          f"bad {counts['bad']}" + (f" ({', '.join(f'{k} {n}' for k, n in kinds.items())})" if kinds else ""),
          flush=True)
    return {"inputs": args.inputs, "seconds": round(seconds, 1), **counts, "bad_kinds": kinds}


if __name__ == "__main__":
    sys.exit(main())
