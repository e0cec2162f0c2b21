"""The deer-gpu benchmark suite end to end on tiny sizes, with NumPy standing in for CuPy and the GRU
baseline kernel in the CUDA simulator: the harness's logic (timing, rows, checks) cannot rot before a
GPU session runs it.  Timings here mean nothing and are not looked at."""

import os
import time
from types import SimpleNamespace

import numpy as np

from parscan.bench import Progress, deer_gpu

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_numba_simulator.py"


class _Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _fake_cupy():
    cuda = SimpleNamespace(Event=_Event, get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t),
                           Device=lambda *a: SimpleNamespace(synchronize=lambda: None),
                           memory=SimpleNamespace(OutOfMemoryError=MemoryError))
    return SimpleNamespace(asarray=np.asarray, zeros=np.zeros, float32=np.float32, abs=np.abs, cuda=cuda,
                           get_default_memory_pool=lambda: SimpleNamespace(free_all_blocks=lambda: None))


def test_deer_gpu_suite_rows():
    ctx = dict(cupy=_fake_cupy(), quick=True, deer_sizes=((1, 3), (10,), 2),
               progress=Progress(2, enabled=False))
    rows = deer_gpu.suite_deer_gpu(ctx)
    assert [(r["name"], r["hidden"]) for r in rows] == [("deer", 1), ("quasi", 1), ("deer", 3), ("quasi", 3)]
    for r in rows:
        assert r["converged"] and r["max_error"] < 1e-5 and r["iterations"] >= 1
        assert r["speedup"] > 0 and r["speedup_vs_loop"] > 0 and r["length"] == 10 and r["batch"] == 2
