"""The ``parscan`` command (also ``python -m parscan``).  ``parscan demo`` is the default."""

from __future__ import annotations

import argparse
import re
import sys


def _demo(args):
    from . import demo

    res = demo.run(channels=args.channels, length=args.length, dtype=args.dtype, backend=args.backend,
                   repeats=args.repeats)
    tol = {"float16": 1e-2, "float32": 1e-4, "complex64": 1e-4}.get(args.dtype, 1e-10)
    if not res["max_rel_error"] <= tol:
        print(f"parscan demo: result differs from the reference by {res['max_rel_error']:.3g}", file=sys.stderr)
        return 1
    return 0


def _backends(args):
    from . import available_backends

    for st in available_backends().values():
        print(st)
    return 0


def _kernels(args):
    from .kernels import report

    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    bad = [b for b in backends if b not in ("cupy", "numba")]
    if bad or not backends:
        print(f"parscan kernels: --backend takes cupy and/or numba, got {args.backend!r}", file=sys.stderr)
        return 2
    bad = [a for a in archs if not re.fullmatch(r"sm_\d{2,3}a?", a)]
    if bad or not archs:
        print(f"parscan kernels: --arch takes names like sm_80,sm_90, got {args.arch!r}", file=sys.stderr)
        return 2
    try:
        rows = report.report(archs, backends)
    except Exception as exc:  # noqa: BLE001 - any compile failure is reported, with its log
        print(f"parscan kernels: compile failed: {exc}", file=sys.stderr)
        return 1
    print(report.format_table(rows))
    spills = [r for r in rows if r.spill_stores or r.spill_loads or r.stack]
    print(f"{len(rows)} kernels compiled for {', '.join(archs)} without a GPU; "
          f"{len(spills)} with spills or stack use")
    return 0


def _train(args):
    from . import tasks

    xp = None
    if args.device == "gpu":
        try:
            import cupy as xp
        except ImportError:
            print("parscan train: --device gpu needs CuPy (pip install parscan[cuda13])", file=sys.stderr)
            return 2
    for name in ("length", "hidden", "layers", "batch", "max_steps"):
        if getattr(args, name) < 1:
            print(f"parscan train: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    log = tasks.train(args.length, args.hidden, args.layers, args.batch, lr=args.lr, clip=args.clip,
                      max_steps=args.max_steps, seed=args.seed, xp=xp, log_path=args.log, every=args.every)
    return 0 if log["converged"] else 1


def _bench(args):
    from . import bench

    suites = [s.strip() for s in args.suite.split(",")] if args.suite else None
    dtypes = [d.strip() for d in args.dtype.split(",")]
    bad = [d for d in dtypes if d not in ("float16", "float32", "float64", "complex64", "complex128")]
    if bad:
        print(f"parscan bench: unknown dtype(s) {bad}", file=sys.stderr)
        return 2
    try:
        meta, rows, skipped = bench.run(suites, quick=args.quick, dtypes=dtypes, out=args.out,
                                        repeats=args.repeats)
    except ValueError as exc:
        print(f"parscan bench: {exc}", file=sys.stderr)
        return 2
    for suite, why in skipped.items():
        print(f"suite {suite} skipped: {why}")
    for note in meta["notes"]:
        print(note)
    with open(f"{args.out}/bench.md") as f:
        print(f.read())
    print("wrote " + ", ".join(f"{args.out}/{n}" for n in meta["outputs"]))
    return 0


def _check(args):
    from . import check

    return check.main(backends=args.backend, seed=args.seed, count=args.cases, quick=args.quick, out=args.out,
                      roofline_on=not args.no_roofline, progress=not args.no_progress, dtypes=args.dtype)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parscan", description="Parallel linear recurrences h[t] = a[t]*h[t-1] + x[t].")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="run, check and time one scan on the best backend here (default)")
    d.add_argument("--channels", type=int, default=64)
    d.add_argument("--length", type=int, default=2**18, help="time steps T")
    d.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64", "complex64",
                                                         "complex128"])
    d.add_argument("--backend", default=None, help="cupy, numba, cpu or reference (default: best here)")
    d.add_argument("--repeats", type=int, default=7)
    d.set_defaults(func=_demo)
    b = sub.add_parser("backends", help="which backends work here, and why not the rest")
    b.set_defaults(func=_backends)
    k = sub.add_parser("kernels", help="compile every GPU kernel (NVRTC, NVVM; no GPU needed) and report "
                                       "registers, shared memory and spills")
    k.add_argument("--arch", default="sm_80,sm_90", help="comma-separated target architectures")
    k.add_argument("--backend", default="cupy,numba", help="cupy, numba or both")
    k.set_defaults(func=_kernels)
    be = sub.add_parser("bench", help="benchmark suites: cpu, latency, deer, jax, dask, roofline, paper, peers, deer-gpu")
    be.add_argument("--suite", default=None, help="comma-separated suites (default: all that run here)")
    be.add_argument("--quick", action="store_true", help="a one-minute subset")
    be.add_argument("--dtype", default="float32,float16,float64,complex64", help="dtypes of the roofline suite")
    be.add_argument("--out", default="bench-results", help="folder for bench.json, bench.md and plots")
    be.add_argument("--repeats", type=int, default=None)
    be.set_defaults(func=_bench)
    c = sub.add_parser("check", help="validate this install: every backend that loads against the float64 "
                                     "reference over random cases, a short roofline, a JSON report to send")
    c.add_argument("--backend", default=None, help="comma-separated: cupy, numba, cpu (default: every GPU "
                                                   "backend that loads, else cpu)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    c.add_argument("--cases", type=int, default=None, help="how many cases (default: one per combination)")
    c.add_argument("--dtype", default=None, help="comma-separated dtypes of the cases (default: all five)")
    c.add_argument("--quick", action="store_true", help="smaller sizes and a shorter roofline")
    c.add_argument("--out", default="parscan-check.json", help="path of the JSON report")
    c.add_argument("--no-roofline", action="store_true", help="skip the bandwidth measurement (GPU)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_check)
    t = sub.add_parser("train", help="train a stacked GILR-LSTM on the paper's long-dependency sign task")
    t.add_argument("--length", type=int, default=1024, help="sequence length T")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--clip", type=float, default=20.0, help="global gradient-norm clip")
    t.add_argument("--max-steps", type=int, default=5000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--every", type=int, default=10, help="progress line every this many steps")
    t.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    t.add_argument("--log", default="train-log.json", help="JSON log of every step")
    t.set_defaults(func=_train)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["demo"] + argv
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
