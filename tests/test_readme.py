"""README.md's snippets run as written: every ```python block, each in a fresh namespace unless its first
line says it continues the block before (``# continues the block above``); a block that needs a GPU
says so (``# needs a CUDA GPU``) and is skipped where there is none; a block whose optional package
(JAX, Dask, xarray, torch) is missing is skipped naming it.  The set-up commands are checked for presence."""

import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CONTINUES = "# continues the block above"
NEEDS_GPU = "# needs a CUDA GPU"
OPTIONAL = {"jax", "dask", "xarray", "torch", "optax"}


def _blocks(fence):
    text = open(README, encoding="utf-8").read()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(rf"^```{fence}\n(.*?)^```", text, re.S | re.M)]


PYTHON = _blocks("python")


def _chain(i):
    """Block i with the blocks it continues, first to last."""
    start = i
    while start > 0 and PYTHON[start][1].startswith(CONTINUES):
        start -= 1
    return PYTHON[start:i + 1]


def _has_gpu():
    from parscan import available_backends

    return available_backends()["cupy"].available


def test_readme_has_snippets():
    assert len(PYTHON) >= 5  # Quickstart, resets, JAX, Dask, xarray


@pytest.mark.parametrize("i", range(len(PYTHON)), ids=[f"README.md:{line}" for line, _ in PYTHON])
def test_python_block_runs_as_written(i):
    chain = _chain(i)
    code = "".join(c for _, c in chain)
    if NEEDS_GPU in code and not _has_gpu():
        pytest.skip("the block says it needs a CUDA GPU; there is none here")
    for mod in sorted(set(re.findall(r"^\s*(?:import|from)\s+(\w+)", code, re.M)) & OPTIONAL):
        pytest.importorskip(mod, reason=f"the block uses {mod}")
    ns = {"__name__": "__readme__"}
    for line, c in chain:
        exec(compile(c, f"README.md:{line}", "exec"), ns)


def test_set_up_commands_are_there():
    bash = "".join(c for _, c in _blocks("bash"))
    assert 'pip install -e ".[cuda13]" && parscan demo' in bash
    assert 'pip install -e ".[cuda13,test]" && pytest' in bash
    assert "parscan = parscan.cli:main" in open(os.path.join(ROOT, "setup.cfg")).read()  # the command exists


def test_a_continuation_runs_after_the_blocks_it_continues(monkeypatch):
    blocks = [(1, "v = 1\n"), (5, f"{CONTINUES}\nv += 1\n"), (9, f"{CONTINUES}\nassert v == 2\n"), (13, "w = 0\n")]
    monkeypatch.setattr(sys.modules[__name__], "PYTHON", blocks)
    assert _chain(2) == blocks[:3] and _chain(3) == blocks[3:] and _chain(0) == blocks[:1]
