"""Attention over a paged KV cache: each sequence's keys and values found through its block table.

The paged cache (`paged_cache`) keeps keys and values in blocks of a shared pool;
a decode step attends each sequence's new queries over the blocks its table
lists. These functions take one layer's pool and the step's tables:

    q [B, Hq, T, D]; k_pool, v_pool [n_blocks, Hkv, block_size, D];
    block_tables [B, max_blocks] int; context_lens [B] int (the new tokens included)

    query t of sequence b sits at position context_lens[b] - T + t

`paged_decode_attention` is the reference: gather each sequence's blocks, call
ordinary attention. `paged_decode_attention_batched` does the whole batch in one
padded call; `paged_decode_attention_fast` is the reference loop with the
equation inlined. The tests check both against the reference, and the CUDA
kernel (`cuda.paged_decode_attention`) shares the reference's argument checks.

A paged cache hands the model a `PagedKeys` (where one layer's keys lie: the pool,
the tables, the lengths); `packed_paged_attention` attends a packed step, whose
sequences bring different numbers of new tokens in one row, group by group.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> k_pool, v_pool = rng.standard_normal((2, 4, 1, 2, 8))      # 4 blocks of 2 positions, 1 head
    >>> q = rng.standard_normal((1, 1, 1, 8))
    >>> out = paged_decode_attention(q, k_pool, v_pool, np.array([[3, 0]]), np.array([3]))
    >>> bool(np.allclose(out, paged_decode_attention_fast(q, k_pool, v_pool, np.array([[3, 0]]), np.array([3]))))
    True

Does not handle: a variable-length kernel over a packed step (`packed_paged_attention`
calls these once per group of sequences with the same number of new tokens),
quantised blocks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import attention_scale, float_array, query_key_heads, rank4
from tinytransformer.attention import scaled_dot_product_attention, softmax_attention_rows

__all__ = ["check_paged_decode_inputs", "paged_decode_attention", "paged_decode_attention_batched",
           "paged_decode_attention_fast", "PagedKeys", "packed_paged_attention"]


@dataclass(frozen=True)
class PagedKeys:
    """Where one layer's keys and values lie for a step over a paged cache: what attention reads.

    k_pool, v_pool [n_blocks, Hkv, block_size, D]; block_tables [B, max_blocks];
    context_lens [B] (the new tokens included). counts: None for a rectangular batch
    (queries [B, Hq, T, D]), or the new tokens of each sequence when the step is
    packed into one row (queries [1, Hq, sum(counts), D], sequence after sequence).
    """

    k_pool: np.ndarray
    v_pool: np.ndarray
    block_tables: np.ndarray
    context_lens: np.ndarray
    counts: tuple[int, ...] | None = None


def check_paged_decode_inputs(q, k_pool, v_pool, block_tables, context_lens, alibi_slopes=None):
    """Validate the arguments of a paged decode; returns (B, Hq, T, D, Hkv, block_size).

    Shared by the NumPy reference and the CUDA launcher so that both reject the
    same inputs with the same messages. Works on anything with .shape/.dtype;
    block_tables and context_lens must be host (NumPy) integer arrays.
    """
    B, Hq, T, D = rank4(q, "q", "[B, Hq, T, D]")
    n_blocks, Hkv, block_size, Dk = rank4(k_pool, "k_pool", "[n_blocks, Hkv, block_size, D]")
    rank4(v_pool, "v_pool", "[n_blocks, Hkv, block_size, D]")
    if tuple(v_pool.shape) != tuple(k_pool.shape):
        raise ValueError(f"v_pool: expected the shape of k_pool {tuple(k_pool.shape)}, got {tuple(v_pool.shape)}")
    if D < 1:
        raise ValueError(f"q: expected a head dim >= 1, got shape {tuple(q.shape)}")
    if Dk != D:
        raise ValueError(f"k_pool: expected head dim {D} (q's), got {Dk}")
    query_key_heads(Hq, Hkv, "k_pool")
    block_tables, context_lens = np.asarray(block_tables), np.asarray(context_lens)
    if block_tables.ndim != 2 or block_tables.shape[0] != B or block_tables.dtype.kind not in "iu":
        raise ValueError(f"block_tables: expected an integer array [B={B}, max_blocks], got dtype "
                         f"{block_tables.dtype} shape {block_tables.shape}")
    if context_lens.shape != (B,) or context_lens.dtype.kind not in "iu":
        raise ValueError(f"context_lens: expected an integer array [B={B}], got dtype {context_lens.dtype} "
                         f"shape {context_lens.shape}")
    capacity = block_tables.shape[1] * block_size
    if B and (context_lens.min() < 1 or context_lens.max() > capacity):
        raise ValueError(f"context_lens: expected values in [1, max_blocks * block_size = {capacity}], "
                         f"got {context_lens.tolist()}")
    for b in range(B):
        used = block_tables[b, : -(-int(context_lens[b]) // block_size)]
        if used.size and (used.min() < 0 or used.max() >= n_blocks):
            raise ValueError(f"block_tables: row {b} uses blocks {used.tolist()}, expected ids in "
                             f"[0, n_blocks={n_blocks}) for its {int(context_lens[b])} positions")
    if alibi_slopes is not None and tuple(np.shape(alibi_slopes)) != (Hq,):
        raise ValueError(f"alibi_slopes: expected shape [Hq] = [{Hq}], got {tuple(np.shape(alibi_slopes))}")
    return B, Hq, T, D, Hkv, block_size


def paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                           alibi_slopes=None, attention=scaled_dot_product_attention):
    """Attention of T new query tokens per sequence over that sequence's paged cache.

    q [B, Hq, T, D]; k_pool, v_pool [n_blocks, Hkv, block_size, D] (one layer);
    block_tables [B, max_blocks] int; context_lens [B] int, counting the new tokens.
    Query t of sequence b sits at position p = context_lens[b] - T + t; with causal
    it sees keys j <= p. alibi_slopes [Hq] adds slope_h * (j - p) to the scores.
    Returns [B, Hq, T, D] in q's dtype (empty for B = 0).

    This is the reference: gather each sequence's keys and values into contiguous
    arrays and call `attention` (scaled_dot_product_attention by default; any
    function with its signature, e.g. flash.flash_attention) on them.
    """
    q, k_pool, v_pool = np.asarray(q), np.asarray(k_pool), np.asarray(v_pool)
    B, Hq, T, D, Hkv, block_size = check_paged_decode_inputs(q, k_pool, v_pool, block_tables,
                                                             context_lens, alibi_slopes)
    scale = attention_scale(scale, D)
    block_tables, context_lens = np.asarray(block_tables), np.asarray(context_lens)
    out = np.zeros((B, Hq, T, D), dtype=np.result_type(q, k_pool, v_pool))
    for b in range(B):
        L = int(context_lens[b])
        k = _gather_sequence(k_pool, block_tables[b], L)[None]  # [1, Hkv, L, D]
        v = _gather_sequence(v_pool, block_tables[b], L)[None]
        out[b] = attention(q[b:b + 1], k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)[0]
    return out


def _gather_sequence(pool, table, length: int) -> np.ndarray:
    """One sequence's keys (or values) [Hkv, length, D] from pool [n_blocks, Hkv, bs, D], block table [max_blocks]."""
    n_blocks, Hkv, block_size, D = pool.shape
    n_used = -(-length // block_size)
    blocks = np.asarray(table[:n_used], dtype=np.int64)  # [n_used] physical blocks, in order
    # pool[blocks[i], h] for every head h and block i: [Hkv, n_used, bs, D], whose last three axes
    # are already the [Hkv, S, D] layout (one copy; pool[blocks] then a transpose would make two)
    heads = np.arange(Hkv)[:, None]  # [Hkv, 1]
    return pool[blocks[None, :], heads].reshape(Hkv, n_used * block_size, D)[:, :length]


def paged_decode_attention_batched(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                                   alibi_slopes=None):
    """paged_decode_attention for the whole batch in one attention call (same arguments, same result).

    The reference calls attention once per sequence, a Python loop that a server
    decoding many sequences pays in every layer. Here every sequence's blocks are
    gathered into one padded [B, Hkv, S, D] (S: the longest sequence, in whole
    blocks); the padding, and keys in a query's future, are masked per row, and
    scaled_dot_product_attention runs once on the batch.
    """
    q, k_pool, v_pool = np.asarray(q), np.asarray(k_pool), np.asarray(v_pool)
    B, Hq, T, D, Hkv, block_size = check_paged_decode_inputs(q, k_pool, v_pool, block_tables,
                                                             context_lens, alibi_slopes)
    if B == 0:
        return np.zeros((0, Hq, T, D), dtype=np.result_type(q, k_pool, v_pool))
    lengths = np.asarray(context_lens).astype(np.int64)  # [B]
    n_used = -(-int(lengths.max()) // block_size)
    # [B, n_used] physical blocks; the -1 padding of shorter tables reads block 0, masked below
    blocks = np.maximum(np.asarray(block_tables)[:, :n_used], 0).astype(np.int64)
    S = n_used * block_size
    heads = np.arange(Hkv)[None, :, None]  # [1, Hkv, 1]
    k = k_pool[blocks[:, None, :], heads].reshape(B, Hkv, S, D)  # [B, Hkv, n_used, bs, D] -> [B, Hkv, S, D], no copy
    v = v_pool[blocks[:, None, :], heads].reshape(B, Hkv, S, D)
    j = np.arange(S)  # key positions
    p = lengths[:, None] - T + np.arange(T)  # [B, T]: the position of each query
    mask = j[None, None, :] < lengths[:, None, None]  # [B, T or 1, S]: keys this sequence holds
    if causal:
        mask = mask & (j[None, None, :] <= p[:, :, None])  # [B, T, S]
    bias = None
    if alibi_slopes is not None:  # slope_h * (j - p), as the reference adds it
        bias = np.asarray(alibi_slopes)[None, :, None, None] * (j[None, None, None, :] - p[:, None, :, None])
    return scaled_dot_product_attention(q, k, v, scale=attention_scale(scale, D), mask=mask[:, None], bias=bias)


def paged_decode_attention_fast(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                                alibi_slopes=None):
    """paged_decode_attention with scaled_dot_product_attention inlined (same arguments, same result).

    The reference's time in a decode step is mostly not arithmetic: for every
    sequence in every layer, the general attention function checks its arguments
    and builds masks again. Here the arguments are checked once for the batch,
    and for each sequence (no padding) the work is the equation and nothing more
    (`attention.softmax_attention_rows`, in place on the scores):

        s = (q * scale) k^T   (+ ALiBi)   [Hkv, G T, L]: the G query heads of a KV head as one matrix
        out = softmax(s) v                [Hkv, G T, D]

    with the causal mask built only when a sequence brings T > 1 new tokens (a
    single new token sees every cached key). Should a score not be finite, the
    batch is handed to the reference, which raises its error.
    """
    q, k_pool, v_pool = float_array(q, "q"), float_array(k_pool, "k_pool"), float_array(v_pool, "v_pool")
    B, Hq, T, D, Hkv, block_size = check_paged_decode_inputs(q, k_pool, v_pool, block_tables,
                                                             context_lens, alibi_slopes)
    G = Hq // Hkv
    out_dtype = np.result_type(q, k_pool, v_pool)
    dtype = np.promote_types(out_dtype, np.float32)  # float16 is computed in float32, as the reference does
    scale = attention_scale(scale, D)
    block_tables, context_lens = np.asarray(block_tables), np.asarray(context_lens)
    qs = q.reshape(B, Hkv, G * T, D).astype(dtype) * dtype.type(scale)  # row g T + t: head h G + g, query t
    slopes = None if alibi_slopes is None else np.asarray(alibi_slopes, dtype=dtype)  # [Hq]
    out = np.empty((B, Hkv, G * T, D), dtype=dtype)
    for b in range(B):
        L = int(context_lens[b])
        k = _gather_sequence(k_pool, block_tables[b], L).astype(dtype, copy=False)  # [Hkv, L, D]
        v = _gather_sequence(v_pool, block_tables[b], L).astype(dtype, copy=False)
        if not softmax_attention_rows(qs[b], k, v, T, causal=causal, alibi_slopes=slopes, out=out[b]):
            return paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, causal=causal,
                                          scale=scale, alibi_slopes=alibi_slopes)
    return out.reshape(B, Hq, T, D).astype(out_dtype, copy=False)


def packed_paged_attention(paged: Callable, q, keys: PagedKeys):
    """Attention of a packed step: q [1, Hq, N, D], N = sum(keys.counts), sequence i's rows after
    sequence i-1's; each query end-aligned to its own sequence, as `paged` (a function with
    paged_decode_attention's arguments, e.g. a bound one without options) does for a batch.

    Sequences that bring the same number T of new tokens form one [b, Hq, T, D] batch: one call
    of `paged` per distinct T (every decode of a step in one call, each prefill alone).
    """
    counts = np.array(keys.counts)
    Hq, N, D = np.shape(q)[1:]
    if counts.sum() != N:
        raise ValueError(f"q: expected the {int(counts.sum())} packed rows of keys.counts, got shape {np.shape(q)}")
    pools = keys.k_pool, keys.v_pool
    if (counts == counts[0]).all():  # one group (a step of decodes only): the rows are already in order
        B, T = len(counts), int(counts[0])
        qg = np.swapaxes(np.reshape(q, (Hq, B, T, D)), 0, 1)  # [1, Hq, B T, D] -> [B, Hq, T, D]
        og = paged(qg, *pools, keys.block_tables, keys.context_lens)
        return np.swapaxes(og, 0, 1).reshape(1, Hq, N, D)
    starts = np.cumsum(counts) - counts  # [B]: each sequence's first row
    out = np.empty(np.shape(q), dtype=np.result_type(q, *pools))  # [1, Hq, N, D]
    for T in np.unique(counts):  # the sequences that bring T tokens, as one [b, Hq, T, D] batch
        group = np.flatnonzero(counts == T)
        rows = (starts[group, None] + np.arange(T)).reshape(-1)  # [b * T], sequence-major
        qg = np.swapaxes(q[0][:, rows].reshape(Hq, len(group), T, D), 0, 1)  # [b, Hq, T, D]
        og = paged(qg, *pools, keys.block_tables[group], keys.context_lens[group])
        out[0][:, rows] = np.swapaxes(og, 0, 1).reshape(Hq, len(group) * T, D)
    return out
