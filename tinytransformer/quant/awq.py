"""AWQ: activation-aware weight quantisation, by scaling up the weights that meet large activations.

Lin et al., 2024, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration". A few input channels of a layer see much larger
activations than the rest, so the rounding errors of their weights matter
most. Multiplying those weight columns by s > 1 before round-to-nearest makes
their relative rounding error smaller, and dividing the input by s undoes it:

    y = x W^T = (x / s) (W diag(s))^T  ~  (x / s) Q(W diag(s))^T

where Q is plain round-to-nearest (zero-point, groups of 128). The division
by s costs nothing at inference: it is folded into the layer before, e.g. the
RMSNorm weight gamma <- gamma / s in front of the q/k/v or gate/up projections
(all layers that read the same normalised x share one s).

The scale comes from the mean activation magnitude per input channel, with one
exponent alpha chosen by grid search on calibration inputs x [n, C_in]:

    s_x   = mean_t |x[t, :]|                            [C_in]
    s     = s_x^alpha / sqrt(max(s_x^alpha) min(s_x^alpha))   alpha in {0, 1/20, ..., 19/20}
    alpha = argmin  sum over the layers || x W^T - (x / s) Q(W diag(s))^T ||^2

alpha = 0 gives s = 1: exactly round-to-nearest. (The paper also searches a
clipping range per group; we stop at the scales.)

    >>> import numpy as np
    >>> from tinytransformer.quant.uniform import round_to_nearest
    >>> from tinytransformer.quant.gptq import output_error
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((32, 256)).astype(np.float32)
    >>> x = rng.standard_normal((256, 256)).astype(np.float32) * np.exp(rng.standard_normal(256)).astype(np.float32)
    >>> search = awq_search([w], x, bits=4, group_size=128)
    >>> rtn, _ = round_to_nearest(w, bits=4, group_size=128)
    >>> bool(search.alpha > 0 and output_error(x, w, search.effective_weights([w])[0]) < output_error(x, w, rtn))
    True

Shapes: weights [C_out, C_in] (applied as x @ W^T), activations x [n, C_in],
scales [C_in]. Does not handle: the clipping search, scaling pairs that do not
share an input exactly (attention's v -> o under grouped-query attention), a
loss on the output of a whole block rather than of the layers themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import finite_array, positive_int
from tinytransformer.quant.gptq import gram_error
from tinytransformer.quant.uniform import round_to_nearest

__all__ = ["activation_scales", "awq_scales", "awq_search", "awq_search_statistics", "AWQSearch", "fake_quantize"]

MIN_SCALE = 1e-4  # channels that never activate get this scale instead of 0


def activation_scales(x) -> np.ndarray:
    """s_x = mean |x| over every token, per input channel: x [..., C_in] -> [C_in] float32."""
    x = finite_array(x, "x")
    return np.abs(x.reshape(-1, x.shape[-1])).mean(axis=0)


def awq_scales(s_x: np.ndarray, alpha: float) -> np.ndarray:
    """s = s_x^alpha, clamped at 1e-4, over sqrt(max(s) min(s)) so that the scales straddle 1."""
    s = np.maximum(np.asarray(s_x, np.float32) ** np.float32(alpha), np.float32(MIN_SCALE))
    return s / np.sqrt(s.max() * s.min())


def fake_quantize(weight: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """Round-to-nearest with zero points in groups, dequantised: the Q of the equations above."""
    return round_to_nearest(weight, bits=bits, group_size=group_size)[0]


@dataclass(frozen=True)
class AWQSearch:
    """The chosen exponent and scales, and the output error at every alpha tried."""

    alpha: float
    scales: np.ndarray  # float32 [C_in]
    alphas: np.ndarray  # the grid
    errors: np.ndarray  # summed squared output error per alpha
    bits: int
    group_size: int

    def scaled_weights(self, weights) -> list[np.ndarray]:
        """Q(W diag(s)): what is stored; the input must be divided by s (fold 1/s into the norm)."""
        return [fake_quantize(np.asarray(w, np.float32) * self.scales, self.bits, self.group_size) for w in weights]

    def effective_weights(self, weights) -> list[np.ndarray]:
        """Q(W diag(s)) diag(1/s): the weight the layer effectively applies to the unscaled input."""
        return [q / self.scales for q in self.scaled_weights(weights)]


def awq_search(weights, x, *, bits: int = 4, group_size: int = 128, n_grid: int = 20) -> AWQSearch:
    """Grid-search alpha for the layers `weights` (each [C_out_k, C_in]) that all read the input x [n, C_in]."""
    x = finite_array(x, "x")
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)  # [n, C_in]
    return awq_search_statistics(weights, rows.T @ rows / rows.shape[0], activation_scales(rows),
                                 bits=bits, group_size=group_size, n_grid=n_grid)


def awq_search_statistics(weights, gram, s_x, *, bits: int = 4, group_size: int = 128,
                          n_grid: int = 20) -> AWQSearch:
    """`awq_search` from the input's statistics: gram = x^T x / n [C_in, C_in] and s_x = mean |x| [C_in].

    The output error of a layer needs no more: || x D^T ||^2 / n = sum over rows of d^T gram d.
    """
    n_grid = positive_int(n_grid, "n_grid")
    gram = np.asarray(gram, dtype=np.float64)
    weights = [finite_array(w, f"weights[{i}]") for i, w in enumerate(weights)]
    for i, w in enumerate(weights):
        if w.ndim != 2 or w.shape[1] != gram.shape[0]:
            raise ValueError(f"weights[{i}]: expected shape [C_out, {gram.shape[0]}] (the input's C_in), got {w.shape}")
    alphas = np.arange(n_grid) / n_grid
    errors = np.zeros(n_grid)
    for a, alpha in enumerate(alphas):
        search = AWQSearch(float(alpha), awq_scales(s_x, alpha), alphas, errors, bits, group_size)
        errors[a] = sum(gram_error(gram, w, w_hat) for w, w_hat in zip(weights, search.effective_weights(weights)))
    best = int(np.argmin(errors))  # the first of equal errors: alpha = 0 (RTN) wins ties
    return AWQSearch(float(alphas[best]), awq_scales(s_x, alphas[best]), alphas, errors, bits, group_size)
