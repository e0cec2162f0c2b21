"""The memory-traffic model: scan.cu's global accesses, as recorded by the CPU harness, turned into
bytes per element and coalescing figures (the precondition for the GPU roofline, checkable here).

Every global load and store of a launch is logged (address, size, thread, instruction site).  A
*warp access* is what the 32 threads of a warp do at one instruction site as their n-th access there;
it fetches the distinct 32-byte sectors it touches.  Per launch set and case:

- requested B/el: bytes the kernels asked for (operands: a, x, h, grad_*; status: the look-back's
  counter, flags and values), per element of the problem;
- sector B/el: 32 x the sectors fetched, summed over warp accesses (the L1/L2 transaction volume;
  equal to the requested bytes when every access is coalesced);
- efficiency: distinct bytes used / sector bytes fetched, per instruction site (source line); the
  worst operand load and store site is the figure the target is about (>= 90%);
- resets B/el: the reset flags' bytes in sectors (one byte a step; read once per block and step when
  broadcast over channels), reported apart from the operands and the status (their sites count in the
  worst load site).

Run ``python -m tests.cuda_cpu.traffic --out benchmarks/results`` from the repository root to write
``traffic.json`` and ``traffic.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass

import numpy as np

from . import fake_cupy, installed, launches, scheduled

SECTOR = 32
WARP = 32

# scan_kernel's and sum_parts' pointer parameters, in order (see scan.cu)
_SCAN_PTRS = ("a", "x", "hh", "h0", "r", "o", "ga", "gh0", "parts", "counter", "flags", "st_a", "st_h", "st_i")
_SUM_PTRS = ("parts", "ga")
_STATUS = {"counter", "flags", "st_a", "st_h", "st_i", "parts"}
_ROLE = {False: {"x": "x", "o": "h", "r": "resets"},
         True: {"x": "grad_h", "hh": "h", "o": "grad_x", "ga": "grad_a", "r": "resets"}}


@dataclass
class Row:
    case: str
    direction: str
    layout: str
    dtype: str
    shape: tuple
    elements: int
    minimum: float                # B/el: every operand element read or written once
    requested: float              # operand B/el the kernels asked for
    sector: float                 # operand B/el in 32-byte sectors, per warp access
    status_sector: float          # look-back status (and grad_a parts) B/el in sectors
    total: float                  # sector + status_sector + resets_sector
    load_efficiency: float        # worst operand load site (the resets' included)
    store_efficiency: float       # worst operand store site
    sites: list                   # per source line: (line, operand, load/store, efficiency, share of bytes)
    resets: str = ""              # "", "time" (shape (T,): broadcast over channels) or "full"
    resets_sector: float = 0.0    # the reset flags' B/el in sectors


def _ids(*cols, sorted_=False):
    """Dense ids of the distinct rows of ``cols`` (equal rows, equal ids)."""
    order = np.arange(len(cols[0])) if sorted_ else np.lexsort(cols[::-1])
    change = np.zeros(len(order), bool)
    for c in cols:
        c = np.asarray(c)[order]
        change[1:] |= c[1:] != c[:-1]
    ids = np.empty(len(order), np.int64)
    ids[order] = np.cumsum(change)
    return ids


def _merge_complex(r, label, ptr_args):
    """A complex element is one access on the device (ld/st.v2: checked in NVRTC's PTX for scan.cu),
    but the host compiler may move its real and imaginary halves separately: merge such pairs (one
    thread, consecutive accesses, the halves of one element of a complex operand)."""
    if len(r) < 2:
        return r, label
    item = np.array([v.itemsize if v.dtype.kind == "c" else 0 for v in ptr_args] + [0])[label]
    lo = np.array([fake_cupy._extent(v)[0] for v in ptr_args] + [0])[label]
    # records are in program order per thread but threads interleave: locate each record's successor
    order = np.lexsort((r["seq"], r["thread"], r["block"]))
    rs, ls = r[order], label[order]
    item, lo = item[order], lo[order]
    nxt = np.arange(1, len(rs) + 1).clip(max=len(rs) - 1)
    pair = ((item > 0) & (2 * rs["size"] == item) & ((rs["addr"] - lo) % np.maximum(item, 1) == 0)
            & (rs["block"][nxt] == rs["block"]) & (rs["thread"][nxt] == rs["thread"])
            & (rs["addr"][nxt] == rs["addr"] + rs["size"]) & (rs["store"][nxt] == rs["store"]) & (ls[nxt] == ls))
    pair[-1] = False  # (a pair starts at an element boundary, so pairs never chain)
    second = np.zeros(len(rs), bool)
    second[1:] = pair[:-1]
    rs = rs.copy()
    rs["size"][pair] *= 2
    keep = ~second
    return rs[keep], ls[keep]


def _ptr_names(name):
    return _SUM_PTRS if name.startswith("sum_parts") else _SCAN_PTRS


def _library_base(path):
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == path and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"{path} is not mapped")


_lines: dict = {}


def _source_lines(path, pcs):
    """Instruction addresses -> 'scan.cu:LINE' (addr2line on the harness's library)."""
    todo = [p for p in pcs if (path, p) not in _lines]
    if todo:
        base = _library_base(path)
        # the hook returns to the instruction after the call: step back one byte into the call
        offs = [hex(p - base - 1) for p in todo]
        # -i: the chain of inlined calls, innermost first; the last scan.cu frame names the kernel's line
        out = subprocess.run(["addr2line", "-i", "-a", "-e", path, *offs], capture_output=True,
                             text=True).stdout
        chunks = re.split(r"^0x[0-9a-f]+$", out, flags=re.M)[1:]
        for p, chunk in zip(todo, chunks):
            frames = re.findall(r"([\w.\-]+):(\d+)", chunk)
            kernel = [f for f in frames if f[0] == "scan.cu"] or frames
            _lines[(path, p)] = f"{kernel[-1][0]}:{kernel[-1][1]}" if kernel else "?"
    return [_lines[(path, p)] for p in pcs]


def _measure(launch_list, library_path, backward):
    """(operand stats, status stats, per-site rows) over the recorded launches."""
    used_by, fetched_by = {}, {}
    req = {"operand": 0, "status": 0, "resets": 0}
    sec = {"operand": 0, "status": 0, "resets": 0}
    for launch in launch_list:
        r = launch.records
        if r is None or not len(r):
            continue
        names = _ptr_names(launch.name)
        ptr_args = [v for v in launch.args if isinstance(v, fake_cupy.ndarray)]
        label = np.full(len(r), -1)
        for idx, v in enumerate(ptr_args):
            lo, hi = fake_cupy._extent(v)
            hit = (label < 0) & (r["addr"] >= lo) & (r["addr"] < hi)
            label[hit] = idx
        assert (label >= 0).all(), "an access outside every argument's view"
        r, label = _merge_complex(r, label, ptr_args)
        # n-th access of each thread at each site
        order = np.lexsort((r["seq"], r["pc"], r["thread"], r["block"]))
        rs, ls = r[order], label[order]
        site_run = _ids(rs["block"], rs["thread"], rs["pc"], sorted_=True)
        starts = np.flatnonzero(np.diff(site_run, prepend=-1))
        nth = np.arange(len(rs)) - np.repeat(starts, np.diff(np.append(starts, len(rs))))
        group = _ids(rs["block"], rs["thread"] // WARP, rs["pc"], nth, rs["store"])
        ng = group.max() + 1
        # bytes requested (a word read by several lanes counts for each, as a broadcast costs one
        # sector) and distinct sectors fetched, per warp access
        addr = rs["addr"].astype(np.int64)
        g_used = np.bincount(group, weights=rs["size"].astype(float), minlength=ng)
        sec_group = np.concatenate([group, group])
        sec_id = np.concatenate([addr // SECTOR, (addr + rs["size"] - 1) // SECTOR])
        first_sec = np.unique(_ids(sec_group, sec_id), return_index=True)[1]
        g_fetch = np.bincount(sec_group[first_sec], minlength=ng) * SECTOR
        # attribute each warp access to its site and operand
        g_first = np.unique(group, return_index=True)[1]
        g_pc, g_store, g_label = rs["pc"][g_first], rs["store"][g_first], ls[g_first]
        lines = _source_lines(library_path, [int(p) for p in g_pc])
        for k in range(len(g_first)):
            pname = names[g_label[k]]
            kind = "status" if pname in _STATUS else "resets" if pname == "r" else "operand"
            role = pname if kind == "status" else _ROLE[backward].get(pname, pname)
            used = min(g_used[k], g_fetch[k])  # requested beyond fetched: a broadcast, 100% used
            req[kind] += used
            sec[kind] += g_fetch[k]
            site = (lines[k], role, "store" if g_store[k] else "load", kind)
            used_by[site] = used_by.get(site, 0) + used
            fetched_by[site] = fetched_by.get(site, 0) + g_fetch[k]
    sites = sorted((line, role, op, kind, used_by[(line, role, op, kind)] / fetched_by[(line, role, op, kind)],
                    fetched_by[(line, role, op, kind)]) for (line, role, op, kind) in used_by)
    return req, sec, sites


CASES = [  # name, direction, layout, dtype, shape, axis, a: "full" | "channel"[, resets: "time" | "full"]
    ("forward", False, "time-contiguous", "float32", (2, 32, 4096), -1, "full"),
    ("backward", True, "time-contiguous", "float32", (2, 32, 4096), -1, "full"),
    ("forward", False, "channel-contiguous", "float32", (4096, 64), 0, "full"),
    ("backward", True, "channel-contiguous", "float32", (4096, 64), 0, "full"),
    ("forward, a per channel", False, "time-contiguous", "float32", (64, 4096), -1, "channel"),
    ("backward, a per channel", True, "time-contiguous", "float32", (64, 4096), -1, "channel"),
    ("forward", False, "time-contiguous", "float16", (2, 32, 4096), -1, "full"),
    ("forward", False, "channel-contiguous", "float16", (4096, 64), 0, "full"),
    ("forward", False, "time-contiguous", "complex64", (2, 32, 4096), -1, "full"),
    ("forward", False, "time-contiguous", "complex128", (2, 32, 4096), -1, "full"),
    ("backward", True, "channel-contiguous", "complex128", (4096, 64), 0, "full"),
    ("forward, resets (T,)", False, "time-contiguous", "float32", (2, 32, 4096), -1, "full", "time"),
    ("backward, resets (T,)", True, "channel-contiguous", "float32", (4096, 64), 0, "full", "time"),
]


def measure(case, cp) -> Row:
    import parscan
    from parscan.kernels import cupy_scan

    name, backward, layout, dtype, shape, axis, a_kind = case[:7]
    resets = case[7] if len(case) > 7 else ""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    ashape = list(shape)
    if a_kind == "channel":
        ashape[axis] = 1
    a = rng.uniform(0.5, 0.95, ashape).astype(dtype)
    xd, ad = cp.asarray(x), cp.asarray(a)
    # resets "time": shape (T,) broadcast over every channel dimension; "full": x's shape
    rshape = shape if resets == "full" else tuple(n if d == axis % len(shape) else 1 for d, n in enumerate(shape))
    rd = cp.asarray(rng.random(rshape) < 0.01) if resets else None
    item = np.dtype(dtype).itemsize
    if backward:
        h = parscan.linear_scan(ad, xd, axis=axis, backend="cupy", resets=rd)
        gh = cp.asarray(rng.standard_normal(shape).astype(dtype))
        launches().clear()
        with scheduled(record=True):
            parscan.linear_scan_backward(ad, h, gh, axis=axis, backend="cupy", resets=rd)
        # read a, grad_h, h; write grad_x, grad_a (a and grad_a once per channel when a is constant)
        minimum = (5 if a_kind == "full" else 3) * item
    else:
        launches().clear()
        with scheduled(record=True):
            parscan.linear_scan(ad, xd, axis=axis, backend="cupy", resets=rd)
        minimum = (3 if a_kind == "full" else 2) * item
    lib = cupy_scan._module().library.path
    req, sec, sites = _measure(list(launches()), lib, backward)
    n = int(np.prod(shape))
    op_sites = [s for s in sites if s[3] in ("operand", "resets")]
    worst = lambda op: min([s[4] for s in op_sites if s[2] == op], default=1.0)  # noqa: E731
    total_fetch = sum(s[5] for s in sites)
    return Row(name, "backward" if backward else "forward", layout, dtype, tuple(shape), n, float(minimum),
               req["operand"] / n, sec["operand"] / n, sec["status"] / n,
               (sec["operand"] + sec["status"] + sec["resets"]) / n, worst("load"), worst("store"),
               [(s[0], s[1], s[2], round(s[4], 4), round(s[5] / total_fetch, 4)) for s in sites],
               resets, sec["resets"] / n)


def run(cases=CASES) -> list[Row]:
    with installed() as cp:
        return [measure(c, cp) for c in cases]


def markdown(rows) -> str:
    out = ["| case | layout | dtype | minimum B/el | requested B/el | sector B/el (operands) | status B/el "
           "| resets B/el | total / minimum | worst load site | worst store site |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.case} | {r.layout} | {r.dtype} | {r.minimum:g} | {r.requested:.2f} | {r.sector:.2f} "
                   f"| {r.status_sector:.2f} | {r.resets_sector:.3f} | {r.total / r.minimum:.3f} "
                   f"| {100 * r.load_efficiency:.1f}% | {100 * r.store_efficiency:.1f}% |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results", help="folder for traffic.json and traffic.md")
    args = p.parse_args(argv)
    rows = run()
    os.makedirs(args.out, exist_ok=True)
    meta = {"what": "scan.cu global memory traffic, recorded by the CPU harness (tests/cuda_cpu)",
            "machine": platform.processor() or platform.machine(), "sector_bytes": SECTOR, "warp": WARP}
    with open(os.path.join(args.out, "traffic.json"), "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1)
    table = markdown(rows)
    with open(os.path.join(args.out, "traffic.md"), "w") as f:
        f.write("# scan.cu memory traffic (CPU harness model)\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
