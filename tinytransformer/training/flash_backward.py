"""Flash attention's backward pass: the gradients, tile by tile, without the T x S matrix.

The plain backward (`backward.attention_backward`) needs P = softmax(Z), a
[T, S] matrix per head. FlashAttention (Dao et al., 2022; FlashAttention-2,
Dao 2023) never stores it; the forward keeps only the output O and each row's
log-sum-exp lse = log sum_j exp(Z_j) (`flash.flash_attention_with_lse`). Two
facts let the backward work tile by tile from those:

1. P can be recomputed exactly, one tile at a time, from the saved lse:
       P_ij = exp(Z_ij - lse_i)           (no running max needed any more)
2. The softmax backward dZ = P * (dP - rowsum(dP * P)) needs one number per row,
   and that number is available before the loop:
       rowsum(dP * P)_i = sum_j P_ij (dO_i . v_j) = dO_i . O_i  =: D_i
   so D = rowsum(dO * O) [B, H, T], computed once.

Then, for each key tile j (outer loop) and each query tile i (inner loop):

    Z_ij = Q_i K_j^T * scale (+ ALiBi, causal mask)       [Br, Bc]
    P_ij = exp(Z_ij - lse_i)
    dV_j += P_ij^T dO_i                                    [Bc, Br] @ [Br, Dv]
    dP_ij = dO_i V_j^T                                     [Br, Dv] @ [Dv, Bc]
    dZ_ij = P_ij * (dP_ij - D_i)
    dQ_i += dZ_ij K_j * scale,   dK_j += dZ_ij^T Q_i * scale

The key-tile-outer order is FlashAttention-2's: dK_j and dV_j are finished
when their inner loop ends (on a GPU each thread block owns one key tile), and
dQ_i collects a contribution from every key tile. Under `causal`, pairs of
tiles where every key is in the future of every query are skipped.

Shapes: q [B, Hq, T, D], k and v [B, Hkv, S, D], GQA by sharing (the G query
heads of a KV head all add into its dK and dV); causal is end-aligned (query i
at key position S - T + i), as in `attention` and `flash`.

    >>> import numpy as np
    >>> from tinytransformer.flash import flash_attention_with_lse
    >>> from tinytransformer.training.backward import attention_backward
    >>> q, k, v, dout = np.random.default_rng(0).standard_normal((4, 1, 2, 5, 3))
    >>> out, lse = flash_attention_with_lse(q, k, v, causal=True, block_q=2, block_k=2)
    >>> tiled = flash_attention_backward(q, k, v, out, lse, dout, causal=True, block_q=2, block_k=2)
    >>> plain = attention_backward(dout, q, k, v, causal=True)
    >>> all(np.allclose(a, b) for a, b in zip(tiled, plain))
    True

Here NumPy does the arithmetic, so this is not faster than the plain backward:
it shows the algorithm, and that it needs memory O(T + S) per head besides the
inputs and outputs.

Does not handle: boolean masks other than causal, sliding windows, dropout.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import attention_scale, attention_shapes, float_array, positive_int
from tinytransformer._validate import float32_or_wider

__all__ = ["flash_attention_backward"]


def flash_attention_backward(q, k, v, out, lse, dout, *, causal=False, scale=None, alibi_slopes=None,
                             block_q: int = 16, block_k: int = 16):
    """(dq, dk, dv) of attention, from the forward's out and lse, in tiles of Br x Bc.

    q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv]; out and dout [B, Hq, T, Dv];
    lse [B, Hq, T] as returned by `flash.flash_attention_with_lse` (-inf for a row
    that sees no key). causal, scale, alibi_slopes as in the forward; block_q (Br)
    and block_k (Bc) need not divide T and S. Equals `attention_backward`.
    """
    q, k, v = float32_or_wider(q, "q"), float32_or_wider(k, "k"), float32_or_wider(v, "v")
    out, dout, lse = float32_or_wider(out, "out"), float32_or_wider(dout, "dout"), float32_or_wider(lse, "lse")
    B, Hq, Hkv, T, S, D, Dv = attention_shapes(q, k, v)
    for array, name in ((out, "out"), (dout, "dout")):
        if array.shape != (B, Hq, T, Dv):
            raise ValueError(f"{name}: expected shape [B, Hq, T, Dv] = {[B, Hq, T, Dv]}, got {array.shape}")
    if lse.shape != (B, Hq, T):
        raise ValueError(f"lse: expected shape [B, Hq, T] = {[B, Hq, T]}, got {lse.shape}")
    Br, Bc = positive_int(block_q, "block_q"), positive_int(block_k, "block_k")
    dtype = np.result_type(q, k, v, dout)
    scale = dtype.type(attention_scale(scale, D))
    if alibi_slopes is not None:
        alibi_slopes = float_array(alibi_slopes, "alibi_slopes").astype(dtype, copy=False)
        if alibi_slopes.shape != (Hq,):
            raise ValueError(f"alibi_slopes: expected shape [Hq] = [{Hq}], got {alibi_slopes.shape}")
        alibi_slopes = alibi_slopes.reshape(1, Hkv, -1, 1, 1)  # [1, Hkv, G, 1, 1]
    G = Hq // Hkv
    offset = S - T  # query row r sits at key position offset + r

    q5 = q.reshape(B, Hkv, G, T, D)  # the G query heads of each KV head: [B, Hkv, G, T, D]
    do5 = dout.reshape(B, Hkv, G, T, Dv)
    big_d = np.sum(dout * out, axis=-1).reshape(B, Hkv, G, T)  # D_i = rowsum(dO * O)
    lse5 = lse.reshape(B, Hkv, G, T)
    lse5 = np.where(lse5 == -np.inf, np.inf, lse5)  # a row that sees no key: P = exp(Z - inf) = 0, no NaN
    dq = np.zeros((B, Hkv, G, T, D), dtype=dtype)
    dk = np.zeros((B, Hkv, S, D), dtype=dtype)
    dv = np.zeros((B, Hkv, S, Dv), dtype=dtype)

    for c0 in range(0, S, Bc):  # outer loop: key tiles j
        c1 = min(c0 + Bc, S)
        Kj = k[:, :, None, c0:c1]  # [B, Hkv, 1, Bc, D]
        Vj = v[:, :, None, c0:c1]  # [B, Hkv, 1, Bc, Dv]
        cols = np.arange(c0, c1)[None, :]  # [1, Bc]
        for r0 in range(0, T, Br):  # inner loop: query tiles i
            r1 = min(r0 + Br, T)
            if causal and offset + r1 - 1 < c0:
                continue  # every key of tile j is in the future of every query of tile i
            Qi, dOi = q5[..., r0:r1, :], do5[..., r0:r1, :]  # [B, Hkv, G, Br, D], [.., Br, Dv]
            Zij = (Qi @ Kj.swapaxes(-1, -2)) * scale  # [B, Hkv, G, Br, D] @ [B, Hkv, 1, D, Bc] -> [.., Br, Bc]
            rows = offset + np.arange(r0, r1)[:, None]  # key position of each query row, [Br, 1]
            if alibi_slopes is not None:
                Zij = Zij + alibi_slopes * (cols - rows).astype(dtype)  # + slope_h * (j - p_i)
            if causal:
                Zij = np.where(cols <= rows, Zij, -np.inf)  # key j visible iff j <= p_i
            Pij = np.exp(Zij - lse5[..., r0:r1, None])  # P_ij = exp(Z_ij - lse_i), exact, [.., Br, Bc]
            dv[:, :, c0:c1] += (Pij.swapaxes(-1, -2) @ dOi).sum(axis=2)  # dV_j += P^T dO_i, summed over G
            dPij = dOi @ Vj.swapaxes(-1, -2)  # [.., Br, Dv] @ [.., Dv, Bc] -> [.., Br, Bc]
            dZij = Pij * (dPij - big_d[..., r0:r1, None]) * scale  # dZ = P (dP - D_i), times scale
            dq[..., r0:r1, :] += dZij @ Kj  # dQ_i += dZ K_j * scale, [.., Br, Bc] @ [.., Bc, D]
            dk[:, :, c0:c1] += (dZij.swapaxes(-1, -2) @ Qi).sum(axis=2)  # dK_j += dZ^T Q_i * scale
    return dq.reshape(B, Hq, T, D), dk, dv
