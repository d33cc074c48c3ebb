"""AdamW, clipping and the schedule: equal to torch's, and the laws they are built on."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from strategies.basics import seeds
from tinytransformer.testing import assert_close
from tinytransformer.training.optim import AdamW, clip_grad_norm, global_norm, warmup_cosine

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _params(rng):
    return {"w": rng.standard_normal((3, 4)), "gain": rng.standard_normal(4), "table": rng.standard_normal((5, 2))}


@given(seeds(), st.floats(1e-4, 1e-1), st.floats(0.0, 0.3), st.sampled_from([(0.9, 0.999), (0.8, 0.95), (0.0, 0.5)]))
def test_adamw_equals_torch_adamw_over_20_steps(seed, lr, weight_decay, betas):
    torch = require("torch", "torch.optim.AdamW is the oracle")
    rng = np.random.default_rng(seed)
    params = _params(rng)
    theirs = {n: torch.tensor(a.copy(), requires_grad=True) for n, a in params.items()}
    decay = [theirs["w"], theirs["table"]]  # matrices decay, the gain does not
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": [theirs["gain"]], "weight_decay": 0.0}], lr=lr, betas=betas, eps=1e-8)
    ours = AdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay)
    for step in range(20):
        grads = {n: rng.standard_normal(a.shape) * 10.0 ** rng.integers(-3, 2) for n, a in params.items()}
        step_lr = lr * (step + 1) / 20  # a changing rate, as a schedule gives
        for n, t in theirs.items():
            t.grad = torch.from_numpy(grads[n].copy())
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        optimizer.step()
        ours.step(grads, lr=step_lr)
    for n in params:
        assert_close(params[n], theirs[n].detach().numpy(), rtol=1e-12, err_msg=n)


@given(seeds(), st.floats(1e-3, 1.0))
def test_adamw_first_step_moves_every_parameter_by_lr(seed, lr):
    """Bias correction makes mhat = g and vhat = g^2 at t = 1, so the step is lr * g / (|g| + eps),
    about lr * sign(g) whatever the gradient's size."""
    rng = np.random.default_rng(seed)
    params = _params(rng)
    before = {n: a.copy() for n, a in params.items()}
    grads = {n: rng.standard_normal(a.shape) for n, a in params.items()}
    AdamW(params, lr=lr, weight_decay=0.0, eps=1e-12).step(grads)
    for n in params:
        assert_close(before[n] - params[n], lr * grads[n] / (np.abs(grads[n]) + 1e-12), rtol=1e-9, atol=1e-12)


def test_weight_decay_is_decoupled_and_skips_vectors():
    params = {"w": np.full((2, 2), 2.0), "b": np.full(2, 2.0)}
    AdamW(params, lr=0.1, weight_decay=0.5).step({"w": np.zeros((2, 2)), "b": np.zeros(2)})
    assert_close(params["w"], np.full((2, 2), 2.0 * (1 - 0.1 * 0.5)))  # zero gradient, still shrinks
    assert_close(params["b"], np.full(2, 2.0))


def test_adamw_state_round_trips():
    rng = np.random.default_rng(0)
    params = _params(rng)
    a = AdamW(params, lr=0.01)
    grads = {n: rng.standard_normal(p.shape) for n, p in params.items()}
    a.step(grads)
    copy = {n: p.copy() for n, p in params.items()}
    b = AdamW(copy, lr=0.01)
    b.load_state_dict(a.state_dict())
    a.step(grads)
    b.step(grads)
    for n in params:
        assert_close(copy[n], params[n])


@given(seeds(), st.floats(0.01, 100.0))
def test_clip_grad_norm_equals_torch(seed, max_norm):
    torch = require("torch", "torch.nn.utils.clip_grad_norm_ is the oracle")
    rng = np.random.default_rng(seed)
    grads = {n: rng.standard_normal(a.shape) * 3 for n, a in _params(rng).items()}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    norm = clip_grad_norm(grads, max_norm)
    assert_close(norm, expected_norm)
    for t, g in zip(tensors, grads.values()):
        assert_close(g, t.grad.numpy())
    assert global_norm(grads) <= max_norm * (1 + 1e-9) or math.isclose(norm, global_norm(grads))


@given(st.integers(0, 50), st.integers(1, 500), st.floats(1e-5, 1.0), st.floats(0.0, 1.0))
def test_schedule_warms_up_linearly_then_decays_to_min_lr(warmup, extra, max_lr, min_fraction):
    total = warmup + extra
    min_lr = max_lr * min_fraction
    rates = [warmup_cosine(s, max_lr=max_lr, warmup_steps=warmup, total_steps=total, min_lr=min_lr)
             for s in range(total + 5)]
    if warmup:  # equal steps up from max_lr / warmup to max_lr
        assert_close(rates[:warmup], max_lr * np.arange(1, warmup + 1) / warmup, rtol=1e-12)
    assert_close(rates[warmup], max_lr, rtol=1e-12)  # the cosine starts at the top
    assert all(a >= b - 1e-15 for a, b in zip(rates[warmup:], rates[warmup + 1:]))  # never rises after warm-up
    assert_close(rates[total:], np.full(5, min_lr), atol=1e-15)


@pytest.mark.parametrize("call, message", [
    (lambda: AdamW({}, lr=0.1), "params: expected a non-empty dict"),
    (lambda: AdamW({"w": np.ones(2, int)}), r"params\['w'\]: expected a floating-point ndarray"),
    (lambda: AdamW({"w": np.ones(2)}, lr=-1), "lr: expected a finite number > 0"),
    (lambda: AdamW({"w": np.ones(2)}, betas=(1.0, 0.9)), r"betas: expected two numbers in \[0, 1\)"),
    (lambda: AdamW({"w": np.ones(2)}).step({}), r"grads: expected a gradient for every parameter, missing \['w'\]"),
    (lambda: AdamW({"w": np.ones(2)}).step({"w": np.ones(3)}), r"grads\['w'\]: expected shape \(2,\)"),
    (lambda: clip_grad_norm({"w": np.ones(2)}, 0.0), "max_norm: expected a finite number > 0"),
    (lambda: AdamW({"w": np.ones(2)}).load_state_dict({"m.w": np.ones(2), "v.w": np.ones(2)}), r"state\['t'\]"),
    (lambda: AdamW({"w": np.ones(2)}).load_state_dict({"t": [1], "m.w": np.ones(3), "v.w": np.ones(2)}),
     r"state\['m.w'\]: expected an array of shape \(2,\)"),
    (lambda: warmup_cosine(-1, max_lr=1.0, warmup_steps=0, total_steps=1), "step, warmup_steps, total_steps"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
