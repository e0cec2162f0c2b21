"""The sign task, the model's gradients, Adam, and training (a T = 1,024 run is marked slow)."""

import json

import numpy as np
import pytest

from parscan import cli, tasks


def test_sign_batch():
    x, labels = tasks.sign_batch(np.random.default_rng(0), 50, 16)
    assert x.shape == (50, 16, 128) and labels.shape == (16,)
    np.testing.assert_array_equal(x[0, :, 0], np.where(labels == 1, 1.0, -1.0))
    assert (x[0, :, 1:] == 0).all() and (x[1:, :, 0] == 0).all()
    np.testing.assert_array_equal(x[1:].sum(-1), 1.0)  # one-hot after the first step
    with pytest.raises(ValueError, match="length and batch must be >= 1"):
        tasks.sign_batch(np.random.default_rng(0), 0, 1)


def test_model_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    model = tasks.SignModel(128, 3, 2, dtype="float64", seed=1, forget_bias=1.0)
    x, labels = tasks.sign_batch(rng, 6, 4, dtype="float64")
    _, _, grads = model.loss_and_grads(x, labels)
    assert set(grads) == set(model.params)
    for name in ("out.W", "layer0.U", "layer1.W_g", "layer1.b", "layer0.b_j"):
        v = model.params[name]
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            old = v[idx]
            v[idx] = old + 1e-6
            lp = model.loss_and_grads(x, labels)[0]
            v[idx] = old - 1e-6
            lm = model.loss_and_grads(x, labels)[0]
            v[idx] = old
            fd[idx] = (lp - lm) / 2e-6
        np.testing.assert_allclose(grads[name], fd, rtol=1e-4, atol=1e-8, err_msg=name)


def test_adam_clips_the_global_norm_and_steps_against_the_gradient():
    model = tasks.SignModel(128, 2, 1, dtype="float64", seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    grads = {k: np.full_like(v, 100.0) for k, v in model.params.items()}
    opt = tasks.Adam(lr=0.01, clip=1.0)
    norm = opt.step(model, grads)
    assert norm == pytest.approx(100.0 * np.sqrt(sum(v.size for v in before.values())))
    for k, v in model.params.items():  # first Adam step moves every weight by lr against the gradient
        np.testing.assert_allclose(before[k] - v, 0.01, rtol=1e-6)


def test_train_command_writes_its_log(tmp_path, capsys):
    log = tmp_path / "log.json"
    rc = cli.main(["train", "--length", "8", "--hidden", "4", "--layers", "1", "--batch", "4",
                   "--max-steps", "3", "--every", "1", "--log", str(log)])
    assert rc in (0, 1)
    data = json.loads(log.read_text())
    assert data["config"]["length"] == 8 and len(data["steps"]) == data["steps_run"] <= 3
    assert "step 3/3" in capsys.readouterr().out or data["converged"]
    assert cli.main(["train", "--length", "0"]) == 2


@pytest.mark.slow
def test_gilrlstm_learns_the_1024_step_sign_task_on_the_cpu(tmp_path):
    log = tasks.train(length=1024, hidden=64, layers=2, batch=8, lr=1e-3, max_steps=1500, seed=0,
                      progress=False, log_path=str(tmp_path / "log.json"))
    assert log["converged"], log["steps"][-5:]
