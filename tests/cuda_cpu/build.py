"""Compile CUDA C++ kernel source with the host C++ compiler into a shared library of launchable
kernels (see the package docstring).  Builds are cached on disk by a hash of everything that goes in.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "cuda_host.h")
RUNTIME = os.path.join(HERE, "runtime.cpp")
CXX = os.environ.get("CXX", "g++")
# -O1 keeps the build quick; kernel-address in call mode turns every load and store of the kernels'
# translation unit into a call of runtime.cpp's hooks (bounds check, traffic record)
KERNEL_FLAGS = ("-O1", "-g", "-std=c++20", "-fPIC", "-fsanitize=kernel-address",
                "--param=asan-instrumentation-with-call-threshold=0", "--param=asan-stack=0",
                "--param=asan-globals=0", "-fno-strict-aliasing", "-w")
RUNTIME_FLAGS = ("-O2", "-std=c++20", "-fPIC")
PARTS = 2  # kernel translation units compiled side by side (the CI machine has 2 cores)


def cache_dir() -> str:
    d = os.environ.get("PARSCAN_CUDA_CPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "parscan-cuda-cpu")
    os.makedirs(d, exist_ok=True)
    return d


_SHARED = re.compile(r"__shared__\s+([^;=]*?)\s*\b(\w+)\s*((?:\[[^\]]+\]\s*)*);")


def host_source(code: str) -> str:
    """``code`` for the host compiler: every ``__shared__ T name[N];`` becomes a reference into the
    block's shared memory (``auto& name = parscan_shared<T[N]>(id);``), one object per block."""
    count = iter(range(1 << 30))

    def repl(m):
        ctype, name, dims = m.group(1), m.group(2), re.sub(r"\s+", "", m.group(3))
        return f"auto& {name} = parscan_shared<{ctype}{dims}>({next(count)});"

    out = _SHARED.sub(repl, code)
    if "__shared__" in out:
        raise ValueError("a __shared__ declaration the harness cannot rewrite: " +
                         out[out.index("__shared__"):][:80])
    return out


def launch_bounds(code: str) -> dict[str, int]:
    """Kernel name -> the thread count of its ``__launch_bounds__`` (defines of plain integers resolved)."""
    code = re.sub(r"//[^\n]*", "", code)
    defines = dict(re.findall(r"#define\s+(\w+)\s+(\d+)\s*$", code, re.M))
    out = {}
    for bound, name in re.findall(r"__global__\s+void\s+__launch_bounds__\(\s*(\w+)[^)]*\)\s*(\w+)\s*\(", code):
        out[name] = int(defines.get(bound, bound))
    return out


def _unit(code: str, names: list[str], first: int) -> str:
    entries = "\n".join(f"static void parscan_entry_{first + i}(void** args) {{ parscan_invoke(&{n}, args); }}"
                        for i, n in enumerate(names))
    table = ", ".join(f"{{&parscan_entry_{first + i}, parscan_signature(&{n})}}" for i, n in enumerate(names))
    # the source in an unnamed namespace: each translation unit has its own copy of non-template kernels
    return (f'#include "{HEADER}"\nnamespace {{\n#line 1 "scan.cu"\n{code}\n}}\n'
            f"#line 1 \"parscan-entries\"\n{entries}\n"
            "struct parscan_kernel_info { void (*entry)(void**); std::string signature; };\n"
            f"extern \"C\" __attribute__((no_sanitize_address)) void parscan_kernels_{first}"
            "(void (**entry)(void**), const char** sig) {\n"
            f"    static const parscan_kernel_info info[] = {{{table}}};\n"
            f"    for (int i = 0; i < {len(names)}; ++i) {{ entry[i] = info[i].entry; sig[i] = info[i].signature.c_str(); }}\n"
            "}\n")


@dataclass
class Library:
    """A built shared library: ``kernels`` maps each name expression to (entry address, signature)."""

    path: str
    lib: ctypes.CDLL
    kernels: dict[str, tuple[int, list[str]]]


_loaded: dict[str, Library] = {}


def build(code: str, names: list[str], options=()) -> Library:
    """Compile ``code`` (CUDA C++) with every kernel name expression in ``names``; cached."""
    code = host_source(code)
    names = list(dict.fromkeys(names))
    chunks = [names[i::PARTS] for i in range(PARTS)] if len(names) >= PARTS else [names]
    firsts, k = [], 0
    for c in chunks:
        firsts.append(k)
        k += len(c)
    units = [_unit(code, c, f) for c, f in zip(chunks, firsts)]
    with open(HEADER) as f, open(RUNTIME) as g:
        inputs = [f.read(), g.read(), CXX, _compiler_version(), *KERNEL_FLAGS, *RUNTIME_FLAGS, *units]
    key = hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:24]
    if key in _loaded:
        return _loaded[key]
    so = os.path.join(cache_dir(), f"kernels-{key}.so")
    if not os.path.exists(so):
        _compile(units, so)
    lib = ctypes.CDLL(so)
    kernels = {}
    for c, first in zip(chunks, firsts):
        entry = (ctypes.c_void_p * len(c))()
        sig = (ctypes.c_char_p * len(c))()
        getattr(lib, f"parscan_kernels_{first}")(entry, sig)
        for i, n in enumerate(c):
            kernels[n] = (entry[i], [p for p in sig[i].decode().split(",") if p])
    _loaded[key] = Library(so, lib, kernels)
    return _loaded[key]


def _compiler_version() -> str:
    return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout


def _compile(units: list[str], so: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [([CXX, *RUNTIME_FLAGS, "-c", RUNTIME, "-o", os.path.join(tmp, "runtime.o")], None)]
        for i, u in enumerate(units):
            src = os.path.join(tmp, f"kernels{i}.cpp")
            with open(src, "w") as f:
                f.write(u)
            jobs.append(([CXX, *KERNEL_FLAGS, "-c", src, "-o", os.path.join(tmp, f"kernels{i}.o")], src))

        def run(job):
            return subprocess.run(job[0], capture_output=True, text=True)

        with ThreadPoolExecutor(max_workers=PARTS) as pool:
            results = list(pool.map(run, jobs))
        for (cmd, _), r in zip(jobs, results):
            if r.returncode:
                raise RuntimeError(f"host compile failed: {' '.join(cmd)}\n{r.stderr[-6000:]}")
        objs = [os.path.join(tmp, "runtime.o")] + [os.path.join(tmp, f"kernels{i}.o") for i in range(len(units))]
        tmp_so = os.path.join(tmp, "out.so")
        # -Bsymbolic: each library's kernels call its own runtime, even with several libraries loaded
        r = subprocess.run([CXX, "-shared", "-Wl,-Bsymbolic", "-o", tmp_so, *objs], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"host link failed:\n{r.stderr[-4000:]}")
        _move(tmp_so, so)


def _move(src: str, dst: str) -> None:
    """Atomic publication into the cache (concurrent test processes may build the same key)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), suffix=".so.part")
    os.close(fd)
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)
