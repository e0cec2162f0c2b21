"""The ``parscan`` command (also ``python -m parscan``).  ``parscan demo`` is the default."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
import time


DTYPES = ("float16", "float32", "float64", "complex64", "complex128")


class UsageError(Exception):
    """A user's mistake or a missing GPU: :func:`main` prints its one-line reason and exits 2."""


def _fail(command, reason) -> int:
    """The one way a command refuses: ``parscan <command>: <reason>`` on stderr, exit status 2."""
    print(f"parscan {command}: {reason}", file=sys.stderr)
    return 2


HEARTBEAT_S = 15.0  # a silent step (a compile) says it is alive this often


@contextlib.contextmanager
def _heartbeat(command, what):
    """While the body runs, ``parscan <command>: still <what> (N s)`` on stderr every HEARTBEAT_S seconds."""
    done, t0 = threading.Event(), time.perf_counter()

    def beat():
        while not done.wait(HEARTBEAT_S):
            print(f"parscan {command}: still {what} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _at_least(low, kind=int):
    """An argparse ``type`` for numbers >= ``low`` (argparse turns its refusal into a one-line error)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not v >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return v
    return parse


def _positive_float(text):
    v = _at_least(0.0, float)(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return v


def _need_backend(name, what):
    """Raise :class:`UsageError` unless backend ``name`` runs here (``what`` asked for it)."""
    from . import _backends

    st = _backends.status(name)
    if not st.available:
        raise UsageError(f"{what} is not available here: {st.reason}")


def _demo(args):
    from . import demo

    try:
        with _heartbeat("demo", "running (a first run compiles the kernels)"):
            res = demo.run(channels=args.channels, length=args.length, dtype=args.dtype, backend=args.backend,
                           repeats=args.repeats)
    except ValueError as exc:  # sizes NumPy refuses ("array is too big")
        raise UsageError(f"{exc} (--channels {args.channels} --length {args.length})") from None
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
        return _fail("kernels", f"--backend takes cupy and/or numba, got {args.backend!r}")
    bad = [a for a in archs if not re.fullmatch(r"sm_\d{2,3}a?", a)]
    if bad or not archs:
        return _fail("kernels", f"--arch takes names like sm_80,sm_90, got {args.arch!r}")
    missing = _missing_compilers(backends)
    if missing:
        return _fail("kernels", missing)
    rows = []
    try:
        for arch in archs:
            for b in backends:
                n = _kernel_count(b)
                print(f"parscan kernels: compiling {n} {b} kernels for {arch} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                with _heartbeat("kernels", f"compiling the {b} kernels for {arch}"):
                    got = report.cuda_rows(arch) if b == "cupy" else report.numba_rows(arch)
                print(f"parscan kernels: {len(got)} {b} kernels for {arch} compiled in "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                rows += got
    except Exception as exc:  # noqa: BLE001 - any compile failure is reported, with its log
        print(f"parscan kernels: compile failed: {exc}", file=sys.stderr)
        return 1
    print(report.format_table(rows))
    spills = [r for r in rows if r.spill_stores or r.spill_loads or r.stack]
    print(f"{len(rows)} kernels compiled for {', '.join(archs)} without a GPU; "
          f"{len(spills)} with spills or stack use")
    return 0


def _kernel_count(backend):
    """How many kernels ``parscan kernels`` compiles for ``backend`` and one architecture."""
    from .kernels import report

    if backend == "cupy":
        from .kernels import cupy_scan

        return len(cupy_scan.instantiations())
    return sum(1 for _ in report._numba_signatures())


def _missing_compilers(backends):
    """Why the compilers of ``backends`` cannot load here ("" when they can): they need no GPU, only the
    wheels of parscan[cuda13] (or [cuda12])."""
    import importlib

    need = {"cupy": ("cupy_backends.cuda.libs.nvrtc",), "numba": ("numba.cuda", "cuda.bindings.nvjitlink")}
    for b in backends:
        for mod in need[b]:
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                return f"compiling the {b} kernels needs {mod} ({exc}); pip install parscan[cuda13] (or [cuda12])"
    return ""


def _train(args):
    from . import tasks

    xp = None
    if args.device == "gpu":
        _need_backend("cupy", "--device gpu (the cupy backend)")
        import cupy as xp
    if args.log:
        _check_writable(args.log, "--log")
    log = tasks.train(args.length, args.hidden, args.layers, args.batch, lr=args.lr, clip=args.clip,
                      max_steps=args.max_steps, seed=args.seed, xp=xp, log_path=args.log, every=args.every)
    return 0 if log["converged"] else 1


def _bench(args):
    from . import bench

    suites = [s.strip() for s in args.suite.split(",")] if args.suite else None
    dtypes = [d.strip() for d in args.dtype.split(",")]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        return _fail("bench", f"unknown dtype(s) {bad}; --dtype takes {', '.join(DTYPES)} (comma-separated)")
    try:
        meta, rows, skipped = bench.run(suites, quick=args.quick, dtypes=dtypes, out=args.out,
                                        repeats=args.repeats)
    except ValueError as exc:
        return _fail("bench", exc)
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


def _check_writable(path, option):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: cannot write there (no such folder, or not writable)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ._backends import BACKENDS

    pos = _at_least(1)
    p = _Parser(prog="parscan", description="Parallel linear recurrences h[t] = a[t]*h[t-1] + x[t].")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    d = sub.add_parser("demo", help="run, check and time one scan on the best backend here (default)")
    d.add_argument("--channels", type=pos, default=64, help="independent sequences (>= 1)")
    d.add_argument("--length", type=pos, default=2**18, help="time steps T (>= 1)")
    d.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="data type (float16 accumulates in float32)")
    d.add_argument("--backend", default=None, choices=BACKENDS, help="default: the best that works here "
                                                                     "(parscan backends lists them)")
    d.add_argument("--repeats", type=pos, default=7, help="timed runs, after one warm-up (>= 1)")
    d.set_defaults(func=_demo)
    b = sub.add_parser("backends", help="which backends work here, and why not the rest")
    b.set_defaults(func=_backends)
    k = sub.add_parser("kernels", help="compile every GPU kernel (NVRTC, NVVM; no GPU needed) and report "
                                       "registers, shared memory and spills")
    k.add_argument("--arch", default="sm_80,sm_90", help="comma-separated target architectures")
    k.add_argument("--backend", default="cupy,numba", help="cupy, numba or both (comma-separated)")
    k.set_defaults(func=_kernels)
    be = sub.add_parser("bench", help="benchmark suites: cpu, latency, deer, jax, dask, roofline, paper, peers, deer-gpu")
    be.add_argument("--suite", default=None, help="comma-separated suites (default: all that run here)")
    be.add_argument("--quick", action="store_true", help="a one-minute subset")
    be.add_argument("--dtype", default="float32,float16,float64,complex64", help="dtypes of the roofline suite")
    be.add_argument("--out", default="bench-results", help="folder for bench.json, bench.md and plots")
    be.add_argument("--repeats", type=pos, default=None, help="timed rounds a measurement (default: 15, "
                                                               "or 5 with --quick)")
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
    t.add_argument("--length", type=pos, default=1024, help="sequence length T")
    t.add_argument("--hidden", type=pos, default=64, help="hidden units a layer")
    t.add_argument("--layers", type=pos, default=2, help="stacked GILR-LSTM layers")
    t.add_argument("--batch", type=pos, default=8, help="sequences a step")
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam's learning rate")
    t.add_argument("--clip", type=_at_least(0.0, float), default=20.0,
                   help="global gradient-norm clip (0: none)")
    t.add_argument("--max-steps", type=pos, default=5000, help="give up after this many steps")
    t.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights")
    t.add_argument("--every", type=pos, default=10, help="progress line every this many steps")
    t.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: CuPy arrays on the "
                                                                           "current CUDA device")
    t.add_argument("--log", default="train-log.json", help="JSON log of every step")
    t.set_defaults(func=_train)
    return p


def main(argv=None) -> int:
    """The command line: returns the exit status (0 ok, 1 a check failed, 2 bad usage, nothing to run it
    on or not enough memory, 130 interrupted); never a traceback for a user's mistake or a missing GPU."""
    from ._backends import BackendUnavailable

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["demo"] + argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad option reported in one line by _Parser (2)
        return exc.code
    if args.command is None:
        return _fail("", "choose a command (parscan --help lists them)")
    try:
        return args.func(args)
    except (UsageError, BackendUnavailable) as exc:
        return _fail(args.command, exc)
    except MemoryError as exc:  # NumPy's and CuPy's out-of-memory errors
        return _fail(args.command, f"out of memory ({type(exc).__name__}: {exc}); try smaller sizes")
    except KeyboardInterrupt:
        print(f"parscan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
