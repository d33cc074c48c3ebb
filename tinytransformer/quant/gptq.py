"""GPTQ: round a layer's weights one input column at a time, moving each rounding error onto the rest.

Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (after Optimal Brain Quantization,
Frantar & Alistarh, 2022). Round-to-nearest (RTN) minimises the error of each
weight alone. What matters is the layer's output on real inputs X [n, C_in]:

    minimise || X W^T - X W_hat^T ||^2   over W_hat on the grid,
    a quadratic form with Hessian H = 2 X^T X / n  [C_in, C_in]  (the same for every output row)

Quantising input column j to q_j leaves an error e_j = (w_j - q_j); the
remaining unquantised columns k > j can absorb it exactly (to first order) by

    w_k <- w_k - e_j [H^-1]_jk / [H^-1]_jj                          (the OBS update)

GPTQ makes this fast and stable: it quantises columns in a fixed order (all
rows at once), reads the updates off the Cholesky factor U of H^-1 (upper,
H^-1 = U^T U: row j of U holds [H^-1]_jk / sqrt([H^-1]_jj) after the earlier
columns are eliminated), adds damping lambda = 1% of mean(diag H) to H first,
and applies the updates lazily: within a block of 128 columns at once, to the
columns after the block in one matrix product.

    for each block [i1, i2):
        for j in block:  q_j = quant(w_j);  err_j = (w_j - q_j) / U_jj
                         w_k -= err_j U_jk           for k in (j, i2)
        W[:, i2:] -= Err[:, block] @ U[block, i2:]

With group_size g, each group of g input columns gets its own zero-point scale
(`uniform.zero_point_params`), computed from the group's weights as they are
when the group's first column is reached (after earlier updates), or, with
static_groups, from the original weights before anything moves. act_order
quantises the columns with the largest H_jj (the busiest inputs) first.
At 2 bits the first way can lose to round-to-nearest: later groups absorb
the earlier errors, their range grows, and their 4-level grid gets coarser;
static grids do not have that problem.

With H = I nothing is moved (the off-diagonal of U is zero) and GPTQ is
exactly round-to-nearest; on real activations its output error is smaller.

    >>> import numpy as np
    >>> from tinytransformer.quant.uniform import round_to_nearest
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((16, 256)).astype(np.float32)
    >>> x = (rng.standard_normal((512, 256)) @ rng.standard_normal((256, 256)) / 16).astype(np.float32)
    >>> rtn, _ = round_to_nearest(w, bits=4, group_size=128)
    >>> q = gptq_quantize(w, hessian(x), bits=4, group_size=128)
    >>> bool(output_error(x, w, q.weight) < 0.5 * output_error(x, w, rtn))
    True
    >>> np.array_equal(gptq_quantize(w, np.eye(256), bits=4).weight, rtn)   # H = I: round-to-nearest
    True

Shapes: weight [C_out, C_in] (applied as x @ W^T), activations x [n, C_in].
Does not handle: quantising the blocks of a model one after the other with
the outputs of the quantised blocks as the next inputs (the calibration
inputs are passed in), symmetric grids, static groups, packing into
GPU-kernel layouts (the result is dequantised weights plus codes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import finite_array, positive_int
from tinytransformer.quant.uniform import round_to_grid, zero_point_params

__all__ = ["hessian", "gptq_quantize", "GPTQResult", "output_error", "gram_error"]


def hessian(x) -> np.ndarray:
    """H = 2 X^T X / n for activations x [n, C_in] (any leading axes): [C_in, C_in], float64."""
    x = finite_array(x, "x", dtype=np.float64)
    rows = x.reshape(-1, x.shape[-1])
    return 2.0 * (rows.T @ rows) / max(rows.shape[0], 1)  # [C_in, n] @ [n, C_in]


def output_error(x, weight, weight_hat) -> float:
    """The layer's squared output error || x W^T - x W_hat^T ||^2 / n, in float64."""
    rows = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(weight)[1])
    diff = np.asarray(weight, np.float64) - np.asarray(weight_hat, np.float64)  # [C_out, C_in]
    return float(np.sum((rows @ diff.T) ** 2) / rows.shape[0])


def gram_error(gram, weight, weight_hat) -> float:
    """The same error from the input statistics alone: sum over rows of d^T G d, G = x^T x / n, d = w - w_hat."""
    diff = np.asarray(weight, np.float64) - np.asarray(weight_hat, np.float64)  # [C_out, C_in]
    return float(np.sum((diff @ gram) * diff))


@dataclass(frozen=True)
class GPTQResult:
    """GPTQ's quantised layer: dequantised weight, codes, and the zero-point grid of every group."""

    weight: np.ndarray  # float32 [C_out, C_in]: s (q - z), in the original column order
    codes: np.ndarray  # uint8 [C_out, C_in]
    scale: np.ndarray  # float32 [C_out, n_groups]
    zero: np.ndarray  # uint8 [C_out, n_groups]
    group_index: np.ndarray  # int [C_in]: the group of every input column (scattered with act_order)
    bits: int

    @property
    def bits_per_weight(self) -> float:
        """bits + (float32 scale + bits-wide zero) per group; the group index is not counted."""
        return self.bits + (32 + self.bits) * self.scale.shape[1] / self.codes.shape[1]


def gptq_quantize(weight, hessian_matrix, *, bits: int = 4, group_size: int | None = 128, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = False, static_groups: bool = False) -> GPTQResult:
    """Quantise weight [C_out, C_in] to `bits`-bit zero-point groups, minimising the output error under H."""
    W = finite_array(weight, "weight").copy()  # float32 [C_out, C_in], updated in place
    H = finite_array(hessian_matrix, "hessian_matrix", dtype=np.float64).copy()
    n_out, n_in = W.shape if W.ndim == 2 else (None, None)
    if W.ndim != 2 or H.shape != (n_in, n_in):
        raise ValueError(f"hessian_matrix: expected shape [C_in, C_in] = [{n_in}, {n_in}] for weight "
                         f"{weight.shape}, got {H.shape}")
    group = n_in if group_size is None else positive_int(group_size, "group_size")
    block = group * max(1, positive_int(block_size, "block_size") // group)  # whole groups per lazy block

    dead = np.diag(H) == 0  # inputs that are always zero: any weight is exact; set it to 0
    H[dead, dead] = 1
    W[:, dead] = 0
    n_groups = -(-n_in // group)  # the last group of a row is shorter when group does not divide C_in
    scales = np.zeros((n_out, n_groups), dtype=np.float32)
    zeros = np.zeros((n_out, n_groups), dtype=np.float32)
    if static_groups:  # every grid from the original weights, in the original column order
        for g in range(n_groups):
            s, z = zero_point_params(W[:, g * group:(g + 1) * group], bits)  # [C_out, 1] each
            scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n_in)
    W, H = W[:, perm], H[perm][:, perm]
    column_group = perm // group if static_groups else np.arange(n_in) // group  # the group of position j
    H[np.diag_indices(n_in)] += damp * np.mean(np.diag(H))  # lambda I
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)  # upper: H^-1 = U^T U

    Q = np.zeros_like(W)
    codes = np.zeros(W.shape, dtype=np.uint8)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        W1 = W[:, i1:i2].copy()  # this block, with the updates of earlier columns applied as we go
        Err1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            j = i1 + i
            if j % group == 0 and not static_groups:  # a new group: its grid from its weights as they are now
                s, z = zero_point_params(W1[:, i:i + group], bits)  # [C_out, 1] each
                scales[:, j // group], zeros[:, j // group] = s[:, 0], z[:, 0]
            s, z = scales[:, column_group[j], None], zeros[:, column_group[j], None]  # [C_out, 1]
            w = W1[:, i:i + 1]  # [C_out, 1]
            q = round_to_grid(w, s, z, bits)
            codes[:, j] = q[:, 0]
            Q[:, j] = (s * (q - z))[:, 0]  # x_hat = s (q - z)
            err = (w[:, 0] - Q[:, j]) / U[j, j]  # [C_out]
            W1[:, i:] -= err[:, None] * U[j, j:i2][None, :]  # move the error onto the block's later columns
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # ... and, lazily, onto every column after the block

    inverse = np.argsort(perm)
    group_index = column_group[inverse]
    return GPTQResult(Q[:, inverse], codes[:, inverse], scales, zeros.astype(np.uint8), group_index, bits)
