"""The sign task (parscan/tasks.py) trained in JAX: two parscan.jax.GILRLSTM layers, a linear readout of
the last h, softmax cross-entropy, optax Adam with global-norm clipping, one jitted training step.

    python examples/jax_sign_task.py            # 300 steps, T = 64, hidden 32, batch 16, on the CPU

Both recurrences of each layer are parscan scans run on XLA's buffers (jax.experimental.buffer_callback);
the gradients are the layer's hand-written backward (see parscan.jax).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import parscan.jax as pj
from parscan.tasks import sign_batch


def make_model(input_size=128, hidden=32, layers=2, seed=0, forget_bias=5.0):
    """``(apply, params)``: the model of parscan.tasks.SignModel as a pure function of a params pytree."""
    rng = np.random.default_rng(seed)
    cells, params = [], {}
    for k in range(layers):
        cell = pj.GILRLSTM(input_size if k == 0 else hidden, hidden, seed=int(rng.integers(2**31)),
                           forget_bias=forget_bias)
        p = cell.init()
        p["b_g"] = p["b_g"] + forget_bias  # the GILR gate keeps its state too (as SignModel does)
        cells.append(cell)
        params[f"layer{k}"] = p
    bound = 1 / np.sqrt(hidden)
    params["out"] = {"W": jnp.asarray(rng.uniform(-bound, bound, (hidden, 2)).astype(np.float32)),
                     "b": jnp.zeros(2, jnp.float32)}

    def apply(params, x):
        h = x
        for k, cell in enumerate(cells):
            h, _ = cell(params[f"layer{k}"], h)
        return h[-1] @ params["out"]["W"] + params["out"]["b"]  # logits from the final h

    return apply, params


def train(steps=300, length=64, hidden=32, batch=16, lr=3e-3, clip=20.0, seed=0, every=50):
    """Train on fresh batches; returns ``{"loss": [...], "accuracy": [...], "seconds": s}``."""
    apply, params = make_model(hidden=hidden, seed=seed)
    opt = optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))
    state = opt.init(params)

    def loss_fn(params, x, labels):
        logits = apply(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    @jax.jit
    def step(params, state, x, labels):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, labels)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, acc

    rng = np.random.default_rng(seed + 1)
    log = {"loss": [], "accuracy": []}
    start = time.perf_counter()
    for k in range(steps):
        x, labels = sign_batch(rng, length, batch)
        params, state, loss, acc = step(params, state, jnp.asarray(x), jnp.asarray(labels))
        log["loss"].append(float(loss))
        log["accuracy"].append(float(acc))
        if every and (k + 1) % every == 0:
            print(f"step {k + 1:4d}  loss {np.mean(log['loss'][-every:]):.4f}  "
                  f"accuracy {np.mean(log['accuracy'][-every:]):.3f}", flush=True)
    log["seconds"] = time.perf_counter() - start
    return log


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    log = train(args.steps, args.length, args.hidden, args.batch, args.lr)
    print(f"{args.steps} steps in {log['seconds']:.1f} s; loss {np.mean(log['loss'][:20]):.3f} (first 20) -> "
          f"{np.mean(log['loss'][-20:]):.3f} (last 20)")
