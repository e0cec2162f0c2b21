"""Suite ``dask``: :func:`parscan.dask.linear_scan` on a LocalCluster of worker processes (issue #17).

A float32 exponential moving average ``h[t] = 0.999 h[t-1] + x[t]`` of one long series (2^28
elements, 1 GiB, in 64 time chunks, and 2^22 in 256 small chunks, where the carries' latency shows;
``--quick``: 2^22 in 16 and 2^20 in 64) on ``LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)`` (each worker's Numba pinned to one thread), timed as:

- ``parscan.dask`` with the carries computed by one scan of the stacked chunk pairs (``scan``, the
  default) and by a chain of one-pair scans (``sequential``);
- ``dask.array.cumsum`` of the same x: the same graph shape (a scan along chunks, a carry between
  them) with a cheaper operator, the yardstick: target parscan.dask <= 1.5x its time (``vs_cumsum``);
- one in-memory :func:`parscan.linear_scan` of the same data in this process, on all of Numba's
  threads here (its ``threads``); ``vs_in_memory`` is each Dask row's time over it.

x is generated on the workers (``dask.array.random``) and persisted before timing; a timed run builds
the graph and persists the result on the workers (nothing is gathered), then releases it.  Rounds are
round-robin (cumsum, scan, sequential), and each ratio is a median over the rounds' ratios.
Correctness (the last chunk against the in-memory scan) is checked before timing.  Throughput is
reported per worker (elements / second / worker and GB/s / worker at 8 bytes an element: x read, h
written once, the minimum) and per compute thread (``threads``: one per worker, Numba pinned to one).

Each worker re-reads Numba's configuration before its first task: a spawned worker imports ``__main__``
(which imports parscan, hence Numba) before Dask applies ``env=``, so Numba would otherwise keep the
default thread count, and its next compilation would refuse the new one.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ._common import _stats, _wall

WORKERS = 2
DECAY = 0.999


def _configs(quick):
    """(elements, time chunks): the issue's 1 GiB in 64 chunks, and small chunks where the carries'
    latency shows (the pairs' chain vs tree)."""
    return [(2**22, 16), (2**20, 64)] if quick else [(2**28, 64), (2**22, 256)]


def _forgotten(client, keys, timeout=60.0):
    """Wait until the scheduler has forgotten ``keys`` (so the next run of the same graph computes afresh)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.run_on_scheduler(lambda dask_scheduler, ks=keys: sum(k in dask_scheduler.tasks for k in ks)):
            return
        time.sleep(0.01)
    raise TimeoutError("the scheduler kept a benchmark's results after they were released")


def _timed_persist(client, make, wait):
    """Wall time to build ``make()`` and persist it on the workers; the result is then released."""
    t0 = time.perf_counter()
    r = make().persist()
    wait(r)
    t = time.perf_counter() - t0
    keys = list(r.__dask_graph__())
    del r
    _forgotten(client, keys)
    return t


def _reload_numba_config():
    import numba  # noqa: PLC0415

    numba.core.config.reload_config()


def suite_dask(ctx):
    try:
        import dask.array as da
        from distributed import Client, LocalCluster, wait
    except ImportError as exc:
        return [dict(suite="dask", name="parscan.dask", skipped=f"dask/distributed not importable ({exc}); "
                                                                 f"pip install 'parscan[dask]'")]
    from .. import dask as pdask
    from ..scan import linear_scan

    quick, prog = ctx["quick"], ctx["progress"]
    repeats = ctx["repeats"] if quick else min(ctx["repeats"], 7)
    rows = []
    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env={"NUMBA_NUM_THREADS": "1"})
    client = Client(cluster, timeout=120)
    client.run(_reload_numba_config)
    try:
        for n, nchunks in _configs(quick):
            times, mem = _measure(client, da, wait, pdask, linear_scan, n, nchunks, repeats)
            prog.step(f"dask: {n} elements in {nchunks} chunks")
            rows += _rows(times, mem, n, nchunks)
    finally:
        client.close(timeout=60)
        cluster.close(timeout=60)
    return rows


def _measure(client, da, wait, pdask, linear_scan, n, nchunks, repeats):
    x = da.random.default_rng(0).standard_normal(n, chunks=n // nchunks, dtype=np.float32).persist()
    wait(x)
    makers = {
        "dask.array.cumsum": lambda: da.cumsum(x),
        "parscan.dask scan": lambda: pdask.linear_scan(DECAY, x, method="scan"),
        "parscan.dask sequential": lambda: pdask.linear_scan(DECAY, x, method="sequential"),
    }
    # correctness first: the last chunk (every carry feeds it) against the in-memory scan
    xm = np.concatenate(client.gather(client.compute(x.to_delayed().ravel().tolist())))
    want = linear_scan(DECAY, xm)
    for method in ("scan", "sequential"):
        last = pdask.linear_scan(DECAY, x, method=method).blocks[-1].compute()
        if not np.allclose(last, want[-last.size:], rtol=1e-4, atol=1e-3):
            raise AssertionError(f"parscan.dask ({method}) disagrees with parscan.linear_scan")
    del want
    for make in makers.values():  # warm-up: imports and compiled kernels loaded on every worker
        _timed_persist(client, make, wait)
    times = {k: [] for k in makers}
    for _ in range(repeats):
        for k, make in makers.items():
            times[k].append(_timed_persist(client, make, wait))
    mem = list(_wall(lambda: linear_scan(DECAY, xm), repeats))
    return times, mem


def _rows(times, mem, n, nchunks):
    import numba  # noqa: PLC0415

    rows = []
    common = dict(suite="dask", elements=n, chunks=nchunks, dtype="float32")
    base = np.asarray(times["dask.array.cumsum"])
    m_mem = _stats(mem)[0]
    for k, ts in times.items():
        m, lo, hi = _stats(ts)
        row = dict(common, name=k, workers=WORKERS, threads=WORKERS, s=m, s_range=[lo, hi],
                   melem_s_per_worker=n / m / WORKERS / 1e6, gbps_per_worker=8 * n / m / WORKERS / 1e9,
                   melem_s_per_thread=n / m / WORKERS / 1e6, vs_in_memory=m / m_mem)
        if k != "dask.array.cumsum":
            r = np.asarray(ts) / base
            row.update(vs_cumsum=float(np.median(r)), vs_cumsum_range=[float(r.min()), float(r.max())],
                       target="<= 1.5", meets=bool(np.median(r) <= 1.5))
        rows.append(row)
    m, lo, hi = _stats(mem)
    threads = numba.get_num_threads()  # the in-memory scan runs on all of them
    rows.append(dict(common, name="parscan.linear_scan in memory", workers=0, threads=threads, s=m, s_range=[lo, hi],
                     melem_s_per_thread=n / m / threads / 1e6, vs_in_memory=1.0))
    return rows
