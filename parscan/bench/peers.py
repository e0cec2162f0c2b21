"""Suite ``peers`` (GPU): the same problems through the peers that are importable; each missing one is listed
with the reason."""

from __future__ import annotations

from ..scan import linear_scan
from ._common import _events, _stats


def _peer_heinsen(cp, a, x):
    """Log-space cumsum scan (Heinsen 2023) from CuPy primitives (complex logs handle negative values)."""
    la = cp.cumsum(cp.log(a.astype(cp.complex64)), axis=-1)
    return cp.exp(la + cp.log(cp.cumsum(cp.exp(cp.log(x.astype(cp.complex64)) - la), axis=-1))).real


def _peer_blelloch(cp, a, x):
    """A Hillis-Steele scan over pairs from CuPy array operations (log2 T passes)."""
    A, H = a.copy(), x.copy()
    d = 1
    while d < a.shape[-1]:
        H[..., d:] = A[..., d:] * H[..., :-d] + H[..., d:]
        A[..., d:] = A[..., d:] * A[..., :-d]
        d *= 2
    return H


def suite_peers(ctx):
    cp = ctx["cupy"]
    rows = []
    peers = {"heinsen log-space (cupy)": lambda a, x: _peer_heinsen(cp, a, x),
             "hillis-steele from array ops (cupy)": lambda a, x: _peer_blelloch(cp, a, x)}
    missing = {}
    try:
        import jax

        peers["jax.lax.associative_scan"] = _jax_peer(jax)
    except ImportError as exc:
        missing["jax.lax.associative_scan"] = f"jax not importable ({exc})"
    try:
        from accelerated_scan.warp import scan as warp_scan  # noqa: F401
        import torch

        peers["accelerated-scan warp"] = _torch_peer(torch, warp_scan)
    except ImportError as exc:
        missing["accelerated-scan warp"] = f"accelerated_scan/torch not importable ({exc})"
    missing["flash-linear-attention hgrn"] = "not wired into the harness yet"
    missing["torch associative_scan"] = "not wired into the harness yet"
    Ts = (2**7, 2**10, 2**13) if ctx["quick"] else tuple(2**k for k in range(7, 17))
    for T in Ts:
        shape = (8, 1536, T)
        x = cp.random.standard_normal(shape, dtype=cp.float32)
        a = cp.random.uniform(0.5, 0.999, shape, dtype=cp.float32)
        base = _stats(_events(cp, lambda: linear_scan(a, x), ctx["repeats"]))[0]
        rows.append(dict(suite="peers", name="parscan", length=T, ms=base * 1e3, gelem_s=x.size / base / 1e9))
        for name, fn in peers.items():
            try:
                t = _stats(_events(cp, lambda: fn(a, x), ctx["repeats"]))[0]
            except Exception as exc:  # noqa: BLE001 - a peer failing is reported, not fatal
                rows.append(dict(suite="peers", name=name, length=T, skipped=f"{type(exc).__name__}: {exc}"))
                continue
            rows.append(dict(suite="peers", name=name, length=T, ms=t * 1e3, gelem_s=x.size / t / 1e9,
                             parscan_speedup=t / base))
        ctx["progress"].step(f"peers T={T}")
    rows += [dict(suite="peers", name=n, skipped=why) for n, why in missing.items()]
    return rows


def _jax_peer(jax):
    import jax.numpy as jnp

    def combine(p, q):
        return q[0] * p[0], q[0] * p[1] + q[1]

    f = jax.jit(lambda a, x: jax.lax.associative_scan(combine, (a, x), axis=-1)[1])

    def run(a, x):
        out = f(jnp.from_dlpack(a), jnp.from_dlpack(x))
        out.block_until_ready()
        return out

    return run


def _torch_peer(torch, warp_scan):
    def run(a, x):
        return warp_scan(torch.from_dlpack(a), torch.from_dlpack(x))

    return run
