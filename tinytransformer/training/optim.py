"""The optimiser: AdamW, gradient clipping by global norm, and the learning-rate schedule.

Gradient descent moves every parameter against its gradient, theta -= lr * g.
Adam (Kingma & Ba, 2015) scales each parameter's step by running estimates of
its gradient's first and second moments, so that every parameter moves at a
similar rate whatever the size of its gradients:

    m = b1 m + (1 - b1) g              v = b2 v + (1 - b2) g^2
    mhat = m / (1 - b1^t)              vhat = v / (1 - b2^t)       (bias correction: m, v start at 0)
    theta -= lr * mhat / (sqrt(vhat) + eps)

AdamW (Loshchilov & Hutter, 2019) decouples the weight decay from the gradient:
theta -= lr * wd * theta is applied directly, not added to g (where Adam's
scaling would weaken it for parameters with large gradients). As in GPT-2 and
nanoGPT, only matrices decay (weights, embeddings); gains and biases do not.

Two more habits of transformer training:

    clipping   if the global norm ||g|| = sqrt(sum of all g^2) exceeds max_norm,
               scale every gradient by max_norm / ||g|| (one bad batch cannot throw
               the weights far);
    schedule   the learning rate rises linearly for `warmup_steps` (Adam's moment
               estimates are noisy at first), then follows half a cosine down to min_lr.

Parameters and gradients are flat dicts name -> array (the model's own dict);
`AdamW.step` updates the arrays in place.

    >>> import numpy as np
    >>> params = {"w": np.array([[1.0]])}
    >>> opt = AdamW(params, lr=0.1, weight_decay=0.0)
    >>> opt.step({"w": np.array([[5.0]])})              # the first step is lr * sign(g)
    >>> params["w"].round(6).tolist()
    [[0.9]]

Does not handle: other optimisers (SGD with momentum, Lion, Adafactor), per-group
learning rates, AMSGrad, mixed-precision master weights, sharded optimiser state.
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import positive_float

__all__ = ["AdamW", "clip_grad_norm", "global_norm", "warmup_cosine"]


class AdamW:
    """AdamW over a dict of arrays, updated in place by `step(grads)`.

    params: name -> float array (these very arrays are updated).
    lr, betas=(b1, b2), eps, weight_decay: as in torch.optim.AdamW.
    decay(name, array) -> bool: which parameters decay; default: arrays with 2 or more axes.
    """

    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, decay=None):
        if not isinstance(params, dict) or not params:
            raise ValueError(f"params: expected a non-empty dict name -> array, got {type(params).__name__}")
        for name, array in params.items():
            if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
                raise ValueError(f"params[{name!r}]: expected a floating-point ndarray, got {type(array).__name__}")
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay}")
        self.params = params
        self.lr, self.betas, self.eps = positive_float(lr, "lr"), (float(b1), float(b2)), positive_float(eps, "eps")
        self.weight_decay = float(weight_decay)
        decay = decay or (lambda name, array: array.ndim >= 2)
        self.decayed = {name for name, array in params.items() if decay(name, array)}
        self.m = {name: np.zeros_like(a) for name, a in params.items()}  # first moment
        self.v = {name: np.zeros_like(a) for name, a in params.items()}  # second moment
        self.t = 0  # steps taken

    def step(self, grads: dict, lr: float | None = None) -> None:
        """One update with gradients `grads` (name -> array, every parameter); lr overrides self.lr."""
        missing = self.params.keys() - grads.keys()
        if missing:
            raise ValueError(f"grads: expected a gradient for every parameter, missing {sorted(missing)}")
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.betas
        self.t += 1
        bias1, bias2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}]: expected shape {p.shape}, got {g.shape}")
            if name in self.decayed and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay  # decoupled decay: theta -= lr * wd * theta
            m *= b1
            m += (1.0 - b1) * g  # m = b1 m + (1 - b1) g
            v *= b2
            v += (1.0 - b2) * (g * g)  # v = b2 v + (1 - b2) g^2
            denom = np.sqrt(v / bias2)  # sqrt(vhat)
            denom += self.eps
            p -= (lr / bias1) * m / denom  # theta -= lr * mhat / (sqrt(vhat) + eps)

    def state_dict(self) -> dict:
        """The optimiser state as plain arrays: {"t": [t], "m.<name>": ..., "v.<name>": ...}."""
        state = {"t": np.array([self.t], dtype=np.int64)}
        state.update({f"m.{n}": a for n, a in self.m.items()})
        state.update({f"v.{n}": a for n, a in self.v.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (shapes must match the parameters)."""
        if "t" not in state or np.size(state["t"]) != 1:
            raise ValueError("state['t']: expected the step count, one integer")
        for name, p in self.params.items():
            for moment, key in ((self.m, f"m.{name}"), (self.v, f"v.{name}")):
                if key not in state or np.shape(state[key]) != p.shape:
                    raise ValueError(f"state[{key!r}]: expected an array of shape {p.shape}")
                moment[name][...] = state[key]
        self.t = int(np.asarray(state["t"]).reshape(-1)[0])


def global_norm(grads: dict) -> float:
    """sqrt(sum over every gradient array of the sum of its squares), in float64."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place by max_norm / (norm + 1e-6) when their global norm exceeds max_norm.

    Returns the norm before clipping (worth logging: spikes show instability).
    The 1e-6 is torch.nn.utils.clip_grad_norm_'s, which this matches.
    """
    max_norm = positive_float(max_norm, "max_norm")
    norm = global_norm(grads)
    coefficient = max_norm / (norm + 1e-6)
    if coefficient < 1.0:
        for g in grads.values():
            g *= coefficient
    return norm


def warmup_cosine(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate at `step` (0-based): linear warm-up, then a cosine down to min_lr.

        step < warmup:  max_lr * (step + 1) / warmup_steps
        then:           min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                        progress = (step - warmup) / (total - warmup), at most 1

    After total_steps the rate stays at min_lr.
    """
    if step < 0 or warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"step, warmup_steps, total_steps: expected >= 0, >= 0, >= 1, "
                         f"got {step}, {warmup_steps}, {total_steps}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
