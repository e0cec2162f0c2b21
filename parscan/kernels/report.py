"""Compile every GPU kernel without a GPU and report its resources (``parscan kernels``).

- CUDA C++ (``scan.cu``): NVRTC from the pip wheel compiles every name expression of the CuPy backend
  to a cubin for each architecture, with ptxas's verbose report (registers, shared memory, stack,
  spill stores/loads).
- Numba: ``cuda.compile_ptx`` builds each kernel signature's PTX, and nvJitLink (also a pip wheel)
  assembles it for the architecture with the same report.  numba-cuda asks the current device for the
  compute capability of device functions even when compiling ahead of time; with no driver, that one
  query is answered with the requested architecture.

Neither needs a driver, so CI runs this on machines without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from unittest import mock

import numpy as np


@dataclass
class Row:
    backend: str
    kernel: str
    arch: str
    registers: int
    smem: int
    stack: int
    spill_stores: int
    spill_loads: int


def parse_ptxas(log: str):
    """{mangled entry name: (registers, smem, stack, spill stores, spill loads)} from a verbose ptxas log."""
    out, name = {}, None
    stack = stores = loads = 0
    for line in log.splitlines():
        m = re.search(r"Function properties for '?([\w$.]+)'?", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            stack, stores, loads = (int(v) for v in m.groups())
            continue
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line, re.IGNORECASE)
        if m and name:
            smem = int(m.group(2) or 0)
            if name not in out:
                out[name] = (int(m.group(1)), smem, stack, stores, loads)
            elif smem and not out[name][1]:  # nvJitLink repeats the entry with the shared memory
                out[name] = (out[name][0], smem, *out[name][2:])
    return out


def cuda_rows(arch: str, names=None):
    """Rows for every CuPy-backend kernel of the common module (or the name expressions ``names``)
    compiled by NVRTC for ``arch`` (e.g. "sm_90")."""
    from cupy.cuda import nvrtc

    from . import cupy_scan

    names = [n for n, _ in cupy_scan.instantiations()] if names is None else list(names)
    prog = nvrtc.createProgram(cupy_scan.source(), "scan.cu", [], [])
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, [*cupy_scan.OPTIONS, f"--gpu-architecture={arch}", "-Xptxas", "-v"])
        except Exception as exc:
            raise RuntimeError(f"NVRTC failed for {arch}:\n{nvrtc.getProgramLog(prog)}") from exc
        info = parse_ptxas(nvrtc.getProgramLog(prog))
        rows = []
        for n in names:
            lowered = nvrtc.getLoweredName(prog, n)
            rows.append(Row("cupy", n, arch, *info[lowered]))
        return rows
    finally:
        nvrtc.destroyProgram(prog)


def _numba_signatures():
    """(label, acc dtype, backward, argument types) for each dtype's forward and backward kernel, and
    the matrix scan's pass per dtype (backward None)."""
    from numba import types as T

    def arr(t):
        return T.Array(t, 1, "C")

    st = T.UniTuple(T.int64, 4)
    nt = {"float16": T.float16, "float32": T.float32, "float64": T.float64,
          "complex64": T.complex64, "complex128": T.complex128}
    for store, acc in [("float16", "float32"), ("float32", "float32"), ("float64", "float64"),
                       ("complex64", "complex64"), ("complex128", "complex128")]:
        real = T.float32 if acc in ("float32", "complex64") else T.float64
        op = (arr(nt[store]), T.int64, st)
        gop = (arr(nt[acc]), T.int64, st)
        for backward in (False, True):
            sig = (*op, *op, *op, *op, T.boolean, arr(T.boolean), T.int64, st, T.boolean, *op, *op, *gop, arr(real),
                   st, T.int64, T.int64,
                   T.boolean, T.int64, arr(T.int64), arr(T.int32), arr(real), arr(real), arr(real))
            yield f"scan[{store}, {'backward' if backward else 'forward'}]", acc, backward, sig
    for acc in ("float32", "float64", "complex64", "complex128"):
        a = arr(nt[acc])
        i64, b = T.int64, T.boolean
        flags = arr(T.boolean)
        sig = (b, a, i64, T.UniTuple(i64, 4), b, i64, a, i64, T.UniTuple(i64, 3), a, i64, T.UniTuple(i64, 2), b,
               flags, i64, T.UniTuple(i64, 3), i64, b, flags, a, a, i64, T.UniTuple(i64, 4), i64, i64, i64, i64, i64,
               b, b)
        yield f"matrix_pass[{acc}]", acc, None, sig


def _nvjitlink_log(ptx: str, arch: str) -> str:
    from cuda.bindings import nvjitlink

    handle = nvjitlink.create(2, [f"-arch={arch}", "-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "scan.ptx")
        nvjitlink.complete(handle)
        size = nvjitlink.get_info_log_size(handle)
        buf = bytearray(size)
        nvjitlink.get_info_log(handle, buf)
        return buf.decode(errors="replace")
    finally:
        nvjitlink.destroy(handle)


def numba_rows(arch: str):
    """Rows for every Numba-backend kernel compiled to PTX and assembled for ``arch``."""
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    from .launch import items_for
    from . import matrix_launch, numba_matrix, numba_scan

    cc = (int(arch[3:-1]), int(arch[-1]))

    class _Device:
        compute_capability = cc

    rows = []
    with mock.patch.object(dispatcher, "get_current_device", lambda: _Device()):
        for label, acc, backward, sig in _numba_signatures():
            if backward is None:  # the matrix scan's pass
                scan = numba_matrix.matrix_kernel(acc, matrix_launch.THREADS)
            else:
                scan = numba_scan._kernels(acc, backward, items_for(np.dtype(acc)))[0]
            ptx, _ = cuda.compile_ptx(scan.py_func, sig, cc=cc)
            info = parse_ptxas(_nvjitlink_log(ptx, arch))
            if len(info) != 1:
                raise RuntimeError(f"expected one entry in the ptxas report of {label}, got {list(info)}")
            rows.append(Row("numba", label, arch, *next(iter(info.values()))))
    return rows


def report(archs=("sm_80", "sm_90"), backends=("cupy", "numba")):
    rows = []
    for arch in archs:
        if "cupy" in backends:
            rows += cuda_rows(arch)
        if "numba" in backends:
            rows += numba_rows(arch)
    return rows


def format_table(rows) -> str:
    head = ("backend", "kernel", "arch", "regs", "smem B", "stack B", "spill st B", "spill ld B")
    body = [(r.backend, r.kernel, r.arch, r.registers, r.smem, r.stack, r.spill_stores, r.spill_loads)
            for r in rows]
    widths = [max(len(str(v)) for v in col) for col in zip(head, *body)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)) for line in [head, *body]]
    return "\n".join(lines)
