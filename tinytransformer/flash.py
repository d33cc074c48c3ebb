"""Flash attention: exact attention computed tile by tile with the online softmax.

Plain attention builds the whole [T, S] score matrix. FlashAttention (Dao et
al., 2022; FlashAttention-2, Dao 2023) never does: it walks over key tiles and
keeps, for each query row, three running quantities,

    m  the largest score seen so far,
    l  the sum of exp(score - m) seen so far,
    O  the sum of exp(score - m) * v seen so far (unnormalised output).

When a new tile of scores S_ij = Q_i K_j^T * scale arrives (Br queries x Bc keys):

    m_new = max(m, rowmax(S_ij))
    P     = exp(S_ij - m_new)
    l     = exp(m - m_new) * l + rowsum(P)
    O     = exp(m - m_new) * O + P V_j

and at the end O / l is the exact softmax(Q K^T * scale) V, while
lse = m + log(l) is the row's log-sum-exp (what the backward pass needs).
The factor exp(m - m_new) rescales everything accumulated under the old
maximum; dropping it is the classic bug. The loop order is FlashAttention-2's:
outer loop over query tiles, inner loop over key tiles. With `causal`, key tiles
entirely in the future of a query tile are skipped, halving the work.

Shapes: q [B, Hq, T, D], k and v [B, Hkv, S, D], GQA by sharing as in
`attention`; causal is end-aligned (query i at key position S - T + i).

Here NumPy does the arithmetic, so this is not faster than `attention`: it
shows the algorithm that the CUDA kernels run. Three entry points share one loop:

    flash_attention(q, k, v)            out, with the signature of scaled_dot_product_attention
    flash_attention_with_lse(q, k, v)   (out, lse), lse = the log-sum-exp the backward pass needs
    flash_attention_states(q, k, v)     yields the running (m, l, O) after every tile, for teaching

Output dtype: that of the inputs (float16 is computed in float32 and returned as
float16, like `attention`); lse is in the computation dtype.

Does not handle: boolean masks other than causal, sliding windows, dropout, the backward pass.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import attention_scale, attention_shapes, float_array, positive_int
from tinytransformer._validate import check_finite_scores, float32_or_wider

__all__ = ["flash_attention", "flash_attention_with_lse", "flash_attention_states", "TileState"]


@dataclass
class TileState:
    """The running statistics of query tile `i` after processing key tile `j`."""

    i: int  # query tile index
    j: int  # key tile index
    rows: tuple  # (first, last + 1) query rows of the tile
    cols: tuple  # (first, last + 1) key columns of the tile
    m: np.ndarray  # running max            [B, Hq, Br]
    l: np.ndarray  # running sum of exp     [B, Hq, Br]
    o: np.ndarray  # unnormalised output    [B, Hq, Br, D]


def flash_attention_states(q, k, v, *, causal=False, scale=None, alibi_slopes=None, block_q: int = 16,
                           block_k: int = 16) -> Iterator[TileState]:
    """The algorithm, one tile at a time: yields the running (m, l, O) of query tile i after key tile j.

    Tiles come in FlashAttention-2's order (query tiles outside, key tiles inside);
    under `causal`, key tiles wholly in the future of a query tile are never
    visited. The last state of each query tile holds its final m, l and O.
    Arguments as in flash_attention.
    """
    q, k, v = float32_or_wider(q, "q"), float32_or_wider(k, "k"), float32_or_wider(v, "v")
    B, Hq, Hkv, T, S, D, Dv = attention_shapes(q, k, v)
    Br, Bc = positive_int(block_q, "block_q"), positive_int(block_k, "block_k")
    dtype = np.result_type(q, k, v)
    scale = dtype.type(attention_scale(scale, D))
    if alibi_slopes is not None:
        alibi_slopes = float_array(alibi_slopes, "alibi_slopes").astype(dtype, copy=False)
        if alibi_slopes.shape != (Hq,):
            raise ValueError(f"alibi_slopes: expected shape [Hq] = [{Hq}], got {alibi_slopes.shape}")
    G = Hq // Hkv
    offset = S - T  # query row r sits at key position offset + r

    for i, r0 in enumerate(range(0, T, Br)):  # outer loop: query tiles
        r1 = min(r0 + Br, T)
        Qi = q[:, :, r0:r1].reshape(B, Hkv, G, r1 - r0, D)  # [B, Hkv, G, Br, D]
        m = np.full((B, Hkv, G, r1 - r0), -np.inf, dtype=dtype)  # running max
        l = np.zeros((B, Hkv, G, r1 - r0), dtype=dtype)  # running sum
        o = np.zeros((B, Hkv, G, r1 - r0, Dv), dtype=dtype)  # running unnormalised output
        for j, c0 in enumerate(range(0, S, Bc)):  # inner loop: key tiles
            if causal and c0 > offset + r1 - 1:
                break  # this tile and all later ones are in the future of every row here
            c1 = min(c0 + Bc, S)
            Kj = k[:, :, None, c0:c1]  # [B, Hkv, 1, Bc, D]
            Vj = v[:, :, None, c0:c1]  # [B, Hkv, 1, Bc, Dv]
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by check_finite_scores
                Sij = (Qi @ Kj.swapaxes(-1, -2)) * scale  # [B, Hkv, G, Br, D] @ [B, Hkv, 1, D, Bc] -> [.., Br, Bc]
            rows = offset + np.arange(r0, r1)[:, None]  # key position of each query row, [Br, 1]
            cols = np.arange(c0, c1)[None, :]  # [1, Bc]
            check_finite_scores(Sij, q, k, (cols <= rows) if causal else None)  # finite, as in attention
            if alibi_slopes is not None:
                slopes = alibi_slopes.reshape(1, Hkv, G, 1, 1)
                Sij = Sij + slopes * (cols - rows).astype(dtype)  # + slope_h * (j - p_i)
            if causal:
                Sij = np.where(cols <= rows, Sij, -np.inf)  # key j visible iff j <= p_i
            m_new = np.maximum(m, Sij.max(axis=-1))  # m_new = max(m, rowmax(S_ij))
            m_safe = np.where(m_new == -np.inf, 0, m_new)  # rows with nothing seen yet: avoid inf - inf
            P = np.exp(Sij - m_safe[..., None])  # P = exp(S_ij - m_new); masked -> 0
            alpha = np.exp(m - m_safe)  # exp(m - m_new): rescales what was accumulated
            l = alpha * l + P.sum(axis=-1)  # l = exp(m - m_new) l + rowsum(P)
            o = alpha[..., None] * o + P @ Vj  # O = exp(m - m_new) O + P V_j
            m = m_new
            # m, l and o are new arrays at every step (never updated in place), so the
            # state can hand out views of them without copying.
            yield TileState(i, j, (r0, r1), (c0, c1), m.reshape(B, Hq, r1 - r0), l.reshape(B, Hq, r1 - r0),
                            o.reshape(B, Hq, r1 - r0, Dv))


def flash_attention_with_lse(q, k, v, *, causal=False, scale=None, alibi_slopes=None, block_q: int = 16,
                             block_k: int = 16):
    """(out [B, Hq, T, Dv], lse [B, Hq, T]): flash_attention and each row's log-sum-exp.

    lse = m + log(l) = log sum_j exp(score_j), -inf for a row that sees no key.
    out has the inputs' dtype; lse the computation dtype (float32 for float16 inputs).
    """
    out_dtype = np.result_type(*(np.asarray(a).dtype for a in (q, k, v)))
    final = {}
    for state in flash_attention_states(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes,
                                        block_q=block_q, block_k=block_k):
        final[state.i] = state  # the last state of a query tile is its final one
    B, Hq, T, _ = np.shape(q)  # (the loop above has validated the shapes)
    dtype = np.result_type(*(float32_or_wider(a, name) for a, name in ((q, "q"), (k, "k"), (v, "v"))))
    out = np.zeros((B, Hq, T, np.shape(v)[3]), dtype=dtype)  # rows of tiles that saw no key stay 0
    lse = np.full((B, Hq, T), -np.inf, dtype=dtype)
    for state in final.values():
        r0, r1 = state.rows
        seen = state.l > 0
        l = np.where(seen, state.l, 1)
        out[:, :, r0:r1] = state.o / l[..., None]  # O / l
        lse[:, :, r0:r1] = np.where(seen, state.m + np.log(l), -np.inf)  # m + log(l)
    return out.astype(out_dtype, copy=False), lse


def flash_attention(q, k, v, *, causal=False, scale=None, alibi_slopes=None, block_q: int = 16,
                    block_k: int = 16):
    """Tiled exact attention with the online softmax; equals scaled_dot_product_attention.

    q [B, Hq, T, D]; k [B, Hkv, S, D]; v [B, Hkv, S, Dv] (GQA by sharing).
    causal: end-aligned (query i at key position S - T + i); scale defaults to 1/sqrt(D).
    alibi_slopes: optional [Hq] slopes; adds slope_h * (j - (S - T + i)) to the scores.
    block_q (Br) and block_k (Bc) are the tile sizes; T and S need not be multiples.
    Returns out [B, Hq, T, Dv] in the inputs' dtype; a row that sees no key is zeros.
    Scores that are not finite raise ValueError, as in scaled_dot_product_attention.
    """
    return flash_attention_with_lse(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes,
                                    block_q=block_q, block_k=block_k)[0]
