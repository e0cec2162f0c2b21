"""The paper's synthetic long-dependency task, a small model for it, Adam, and the training loop.

Sign task (Hochreiter & Schmidhuber's problem 2b, as Martin & Cundy 2018 use it): a sequence of T
128-dimensional inputs; x_0 = (+-1, 0, ..., 0) and every later x_t is a random one-hot vector over
dimensions 1..127 (dimension 0 only ever carries the sign); the label is the sign of x_0, read out
after the whole sequence.  A model has to carry one bit across T steps.

Model: stacked :class:`~parscan.layers.GILRLSTM` layers, a linear readout of the last layer's final
h, softmax cross-entropy; all gradients by hand.  Optimiser: Adam with global-norm clipping.
The paper: 2 layers, 512 units (64 for T = 1M), Adam lr 1e-4, clip 20, forget bias 5.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from .layers import GILRLSTM, _module


def sign_batch(rng, length, batch, dim=128, dtype="float32", xp=np):
    """``(x (length, batch, dim), labels (batch,) in {0, 1})`` for the sign task."""
    if length < 1 or batch < 1 or dim < 2:
        raise ValueError("length and batch must be >= 1 and dim >= 2")
    labels = rng.integers(0, 2, batch)
    x = np.zeros((length, batch, dim), dtype)
    idx = rng.integers(1, dim, (length - 1, batch))
    x[np.arange(1, length)[:, None], np.arange(batch)[None, :], idx] = 1
    x[0, :, 0] = np.where(labels == 1, 1.0, -1.0)
    return xp.asarray(x), xp.asarray(labels)


class SignModel:
    """Stacked GILR-LSTM, linear readout of the final h, softmax cross-entropy over 2 classes."""

    def __init__(self, input_size=128, hidden=64, layers=2, *, classes=2, dtype="float32", xp=None, seed=0,
                 forget_bias=5.0):
        self.xp = _module(xp)
        rng = np.random.default_rng(seed)
        self.layers = []
        for k in range(layers):
            layer = GILRLSTM(input_size if k == 0 else hidden, hidden, dtype=dtype, xp=self.xp,
                             seed=int(rng.integers(2**31)), forget_bias=forget_bias)
            layer.params["b_g"] = layer.params["b_g"] + forget_bias  # the GILR gate keeps its state too
            self.layers.append(layer)
        bound = 1 / np.sqrt(hidden)
        self.out = {"W": self.xp.asarray(rng.uniform(-bound, bound, (hidden, classes)).astype(dtype)),
                    "b": self.xp.zeros(classes, dtype)}

    @property
    def params(self):
        """Every parameter array by name (the layers' own arrays, not copies)."""
        p = {f"layer{k}.{n}": v for k, layer in enumerate(self.layers) for n, v in layer.params.items()}
        p.update({f"out.{n}": v for n, v in self.out.items()})
        return p

    def set_param(self, name, value):
        scope, n = name.split(".", 1)
        if scope == "out":
            self.out[n] = value
        else:
            self.layers[int(scope[5:])].params[n] = value

    def loss_and_grads(self, x, labels):
        """``(loss, accuracy, grads)`` for one batch; grads has the names of :attr:`params`."""
        xp = self.xp
        caches, h = [], x
        for layer in self.layers:
            h, _, cache = layer.forward(h)
            caches.append(cache)
        last = h[-1]
        logits = last @ self.out["W"] + self.out["b"]
        z = logits - logits.max(axis=1, keepdims=True)
        p = xp.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        B = labels.shape[0]
        rows = xp.arange(B)
        loss = float(-xp.log(p[rows, labels] + 1e-30).mean())
        acc = float((p.argmax(axis=1) == labels).mean())
        dlogits = p.copy()
        dlogits[rows, labels] -= 1
        dlogits /= B
        grads = {"out.W": last.T @ dlogits, "out.b": dlogits.sum(0)}
        gh = xp.zeros_like(h)
        gh[-1] = dlogits @ self.out["W"].T
        for k in range(len(self.layers) - 1, -1, -1):
            gh, g, _ = self.layers[k].backward(gh, caches[k])
            grads.update({f"layer{k}.{n}": v for n, v in g.items()})
        return loss, acc, grads


class Adam:
    """Adam (Kingma & Ba) with global-norm gradient clipping."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, clip=20.0):
        self.lr, self.b1, self.b2, self.eps, self.clip = lr, betas[0], betas[1], eps, clip
        self.m, self.v, self.t = {}, {}, 0

    def step(self, model, grads):
        """Update ``model``'s parameters in place of their names; returns the gradient norm before clipping."""
        xp = model.xp
        norm = float(xp.sqrt(sum(float((g * g).sum()) for g in grads.values())))
        scale = self.clip / norm if self.clip and norm > self.clip else 1.0
        self.t += 1
        params = model.params
        for name, g in grads.items():
            g = g * scale
            m = self.m.get(name)
            if m is None:
                m = self.m[name] = xp.zeros_like(g)
                self.v[name] = xp.zeros_like(g)
            v = self.v[name]
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            mhat = m / (1 - self.b1 ** self.t)
            vhat = v / (1 - self.b2 ** self.t)
            model.set_param(name, params[name] - self.lr * mhat / (xp.sqrt(vhat) + self.eps))
        return norm


def train(length=1024, hidden=64, layers=2, batch=8, *, lr=1e-3, clip=20.0, max_steps=5000, seed=0,
          xp=None, log_path=None, every=10, patience=5, progress=True, out=None):
    """Train a :class:`SignModel` on the sign task until ``patience`` consecutive batches are 100%
    correct (or ``max_steps``); returns the log (also written as JSON to ``log_path``)."""
    xp = _module(xp)
    out = sys.stdout if out is None else out
    rng = np.random.default_rng(seed)
    model = SignModel(128, hidden, layers, xp=xp, seed=seed)
    opt = Adam(lr=lr, clip=clip)
    log = dict(config=dict(length=length, hidden=hidden, layers=layers, batch=batch, lr=lr, clip=clip,
                           max_steps=max_steps, seed=seed, xp=xp.__name__),
               steps=[], converged=False)
    if progress:
        print(f"sign task: T = {length}, {layers} x {hidden} GILR-LSTM, batch {batch} (the first step compiles "
              f"the scans' kernels unless they are cached)", file=out, flush=True)
    streak, t0 = 0, time.perf_counter()
    for step in range(1, max_steps + 1):
        x, labels = sign_batch(rng, length, batch, xp=xp)
        loss, acc, grads = model.loss_and_grads(x, labels)
        norm = opt.step(model, grads)
        streak = streak + 1 if acc == 1.0 else 0
        elapsed = time.perf_counter() - t0
        log["steps"].append(dict(step=step, loss=loss, accuracy=acc, grad_norm=norm, seconds=elapsed))
        if progress and (step % every == 0 or step == 1 or streak >= patience):
            width = 30
            done = int(width * step / max_steps)
            print(f"\r[{'#' * done}{'.' * (width - done)}] step {step}/{max_steps}  loss {loss:.4f}  "
                  f"acc {acc:.2f}  streak {streak}  {elapsed:.0f}s", end="", file=out, flush=True)
        if streak >= patience:
            log["converged"] = True
            break
    log["seconds"] = time.perf_counter() - t0
    log["steps_run"] = len(log["steps"])
    if progress:
        verdict = "converged" if log["converged"] else "did not converge"
        print(f"\n{verdict} after {log['steps_run']} steps, {log['seconds']:.1f} s", file=out)
    if log_path:
        with open(log_path, "w") as f:
            json.dump(log, f, indent=1)
    return log
