"""Scaled dot-product attention, its masks, multi-head attention, and GQA/MQA.

Attention (Vaswani et al., 2017, "Attention Is All You Need") lets every query
position read a weighted average of the value vectors, weighted by how well its
query matches each key:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + bias, masked) V

Shapes, here and in every module: q is [B, Hq, T, D] (batch, query heads,
query positions, head dim), k and v are [B, Hkv, S, D] (S key positions).

Grouped-query attention (GQA, Ainslie et al., 2023) lets groups of
G = Hq / Hkv query heads share one key/value head: query head h reads KV head
h // G. Multi-query attention (MQA, Shazeer, 2019) is the case Hkv = 1, and
ordinary multi-head attention (MHA) the case Hkv = Hq. We never copy K/V G
times: q is viewed as [B, Hkv, G, T, D] and broadcast against k [B, Hkv, 1, S, D].

Masks are boolean, True meaning "may attend". The causal mask is aligned to the
end: with T queries and S keys, query i sits at key position S - T + i, which
is exactly the situation of cached decoding (S - T positions already cached).
A query whose every key is masked gets an output of zeros, never NaN.

    >>> import numpy as np
    >>> q = k = v = np.eye(2).reshape(1, 1, 2, 2)
    >>> out = scaled_dot_product_attention(q, k, v, causal=True)
    >>> out[0, 0, 0].tolist()   # the first query can only see the first key
    [1.0, 0.0]

`softmax` opens the module: the textbook three lines, exp(x - max x) / sum.
`masked_softmax` follows it, the same on finite input and hardened for what
attention meets (masked keys, rows with every key masked, +inf, NaN); the
attention functions use it.

`scaled_dot_product_attention` is the reference: general masks and biases, every
input checked. `scaled_dot_product_attention_fast` follows it, for what a model
asks (causal or not, ALiBi): the same equation with the scores changed in place
and no mask built, tested equal to the reference; a model's prefill runs it.

Does not handle: dropout, attention over packed variable-length batches (use a
key-padding mask), or memory efficiency (see `flash` for the tiled version).
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import (attention_scale, attention_shapes, check_finite_scores, float32_or_wider,
                                       float_array)
from tinytransformer._validate import positive_int as _positive_int
from tinytransformer.layers import linear

__all__ = [
    "softmax",
    "masked_softmax",
    "causal_mask",
    "sliding_window_mask",
    "padding_mask",
    "attention_weights",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_fast",
    "softmax_attention_rows",
    "causal_attention_in_query_blocks",
    "repeat_kv",
    "split_heads",
    "merge_heads",
    "multi_head_attention",
]


def softmax(x, axis: int = -1):
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x), the textbook one.

    Subtracting the row maximum changes nothing mathematically (it cancels in
    the ratio) but keeps exp() from overflowing: every exponent is <= 0. For
    finite, non-empty input; `masked_softmax` below handles the rest.
    """
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))  # exponents <= 0: no overflow
    return e / np.sum(e, axis=axis, keepdims=True)


def masked_softmax(x, axis: int = -1, mask=None):
    """softmax, hardened for attention: masks, infinities and NaN; its input is checked.

    The same as `softmax` on finite input (a test checks it), and defined where
    the textbook one gives NaN or fails. Entries equal to -inf, or where `mask`
    is False, get probability 0; a row with nothing allowed is all zeros, not
    the NaN of exp(-inf - (-inf)). Entries equal to +inf take all of their row's
    mass, shared equally (the limit as they grow: [inf, 0, 0] gives [1, 0, 0]).
    Huge logits of both signs (1e308, -1e308) do not overflow. A NaN makes its
    whole row NaN. An empty array gives an empty one.

        >>> masked_softmax([[1.0, 1.0], [-np.inf, -np.inf]]).tolist()
        [[0.5, 0.5], [0.0, 0.0]]
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"x: expected a real-valued array, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"mask: expected a boolean array (True = allowed), got dtype {mask.dtype}")
        x = np.where(mask, x, -np.inf)  # masked entries behave like a score of -inf
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)  # row max, -inf for rows with nothing allowed
    if np.any(m == np.inf):  # rows holding +inf: those entries share the mass, as in the limit
        x = np.where(m == np.inf, np.where(x == np.inf, x.dtype.type(0), x.dtype.type(-np.inf)), x)
        m = np.where(m == np.inf, x.dtype.type(0), m)
    m[m == -np.inf] = 0.0  # such rows: exp(-inf - 0) = 0 everywhere, no inf - inf
    with np.errstate(over="ignore"):  # -1e308 - 1e308 = -inf, whose exp is the right 0
        e = x - m  # <= 0 wherever allowed, so exp() cannot overflow; NaN propagates
    np.exp(e, out=e)
    total = np.sum(e, axis=axis, keepdims=True)
    total[total == 0] = 1.0  # empty rows stay zeros instead of 0 / 0
    e /= total
    return e


def causal_mask(T: int, S: int) -> np.ndarray:
    """[T, S] bool: query i (at key position S - T + i) may see keys j <= S - T + i."""
    T, S = _mask_size(T, S)
    query_pos = np.arange(S - T, S)[:, None]  # [T, 1]
    return np.arange(S)[None, :] <= query_pos  # [T, S]


def sliding_window_mask(T: int, S: int, window: int) -> np.ndarray:
    """[T, S] bool: query i sees the `window` most recent keys up to and including its own.

    A sliding window is causal too: key j is visible iff pos - window < j <= pos,
    with pos = S - T + i (Mistral's local attention; Beltagy et al., 2020).
    """
    T, S = _mask_size(T, S)
    window = _positive_int(window, "window")
    query_pos = np.arange(S - T, S)[:, None]  # [T, 1]
    key_pos = np.arange(S)[None, :]  # [1, S]
    return (key_pos <= query_pos) & (key_pos > query_pos - window)  # [T, S]


def padding_mask(lengths, S: int) -> np.ndarray:
    """[B, 1, 1, S] bool: sequence b has `lengths[b]` real keys, then padding."""
    lengths = np.asarray(lengths)
    S = _positive_int(S, "S")
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths: expected a 1-D integer array [B], got dtype {lengths.dtype} shape {lengths.shape}")
    if np.any(lengths < 0) or np.any(lengths > S):
        raise ValueError(f"lengths: expected values in [0, S={S}], got {lengths.tolist()}")
    return (np.arange(S)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, S]


def attention_weights(q, k, *, mask=None, bias=None, causal=False, window=None, scale=None, alibi_slopes=None):
    """The attention matrix P = softmax(q k^T * scale + bias), masked: [B, Hq, T, S].

    Each row of P is a probability distribution over the S keys (or all zeros
    if every key is masked for that query). Arguments as in scaled_dot_product_attention.
    """
    q, k = float32_or_wider(q, "q"), float32_or_wider(k, "k")
    B, Hq, Hkv, T, S, D, _ = attention_shapes(q, k, k, names=("q", "k", "k"))
    G = Hq // Hkv
    scale = attention_scale(scale, D)
    dtype = np.result_type(q, k)

    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by check_finite_scores below
        # the G query heads that share a KV head are one matrix of G * T rows (row g T + t): one product
        # per KV head, not G (in decoding, T = 1, that is G times fewer, and each is G times larger)
        qg = q.reshape(B, Hkv, G * T, D) * dtype.type(scale)  # [B, Hq, T, D] -> [B, Hkv, G T, D]; scale the
        # smaller operand: (q * scale) k^T = (q k^T) * scale
        scores = qg @ k.swapaxes(-1, -2)  # [B, Hkv, G T, D] @ [B, Hkv, D, S] -> [B, Hkv, G T, S]
    scores = scores.reshape(B, Hq, T, S)  # head h = kv head h // G, member h % G
    allowed = _combined_mask(mask, causal, window, (B, Hq, T, S))
    check_finite_scores(scores, q, k, allowed)

    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype.kind not in "fiu":
            raise ValueError(f"bias: expected a real-valued array, got dtype {bias.dtype}")
        _check_broadcast(bias, (B, Hq, T, S), "bias")
        scores = scores + bias.astype(dtype, copy=False)
    if alibi_slopes is not None:
        slopes = float_array(alibi_slopes, "alibi_slopes")
        if slopes.shape != (Hq,):
            raise ValueError(f"alibi_slopes: expected shape [Hq] = [{Hq}], got {slopes.shape}")
        distance = np.arange(S)[None, :] - np.arange(S - T, S)[:, None]  # j - p_i, end-aligned, [T, S]
        scores = scores + (slopes[:, None, None] * distance).astype(dtype)  # + slope_h (j - p_i), [Hq, T, S]
    return masked_softmax(scores, axis=-1, mask=allowed)  # [B, Hq, T, S]


def scaled_dot_product_attention(q, k, v, *, causal=False, scale=None, alibi_slopes=None, mask=None, bias=None,
                                 window=None):
    """softmax(q k^T * scale + bias, masked) v, with GQA by sharing.

    q [B, Hq, T, D]; k [B, Hkv, S, D]; v [B, Hkv, S, Dv] with Hq % Hkv == 0.
    causal: end-aligned (query i at key position S - T + i).
    scale: defaults to 1 / sqrt(D).
    alibi_slopes: [Hq]; adds slope_h * (j - p_i) to the scores, p_i = S - T + i (ALiBi).
    mask: bool, broadcastable to [B, Hq, T, S], True = may attend.
    bias: additive, broadcastable to [B, Hq, T, S] (relative positions, any other bias).
    window: each query sees only its `window` most recent keys (implies causal).
    Returns [B, Hq, T, Dv] in the common dtype of q, k, v (float16 is computed in float32).

    Non-finite values: every score q k^T * scale that a query may attend to must
    be finite. A NaN or inf in q or k, or scores that overflow (float32 q = k =
    1e20), raise ValueError rather than give NaN. A bias of -inf masks; +inf
    entries share the row's weight (see softmax); NaN in v or bias propagates.

    Where this differs from torch.nn.functional.scaled_dot_product_attention:
    - causal is end-aligned (query i sees keys j <= S - T + i), the convention of
      cached decoding; torch's is_causal is start-aligned (j <= i). They agree when T == S.
    - a query whose every key is masked gets zeros; torch returns NaN.
    - GQA needs no flag (torch's enable_gqa=True); there is no dropout.
    """
    out_dtype = np.result_type(*(np.asarray(a).dtype for a in (q, k, v)))  # float16 in -> float16 out
    v = float32_or_wider(v, "v")
    attention_shapes(q, k, v)
    p = attention_weights(q, k, mask=mask, bias=bias, causal=causal, window=window, scale=scale,
                          alibi_slopes=alibi_slopes)
    B, Hq, T, S = p.shape
    Hkv, Dv = v.shape[1], v.shape[3]
    pg = p.reshape(B, Hkv, Hq // Hkv * T, S)  # [B, Hq, T, S] -> [B, Hkv, G T, S]
    out = pg @ v.astype(p.dtype, copy=False)  # [B, Hkv, G T, S] @ [B, Hkv, S, Dv] -> [B, Hkv, G T, Dv]
    return out.reshape(B, Hq, T, Dv).astype(out_dtype, copy=False)  # [B, Hq, T, Dv]


def scaled_dot_product_attention_fast(q, k, v, *, causal=False, scale=None, alibi_slopes=None):
    """scaled_dot_product_attention with only the equation left (same arguments but the masks, same result).

    The reference checks its inputs, builds a boolean mask [B, Hq, T, S] and
    copies the scores to apply it; in a model's prefill those passes over the
    scores cost more than the two products. Here each sequence's scores are made
    once and changed in place (`softmax_attention_rows`). Where that could differ
    from the reference (a query that sees no key, a score that is not finite),
    the reference is called instead, and gives its result or its error.
    """
    q, k, v = float_array(q, "q"), float_array(k, "k"), float_array(v, "v")
    B, Hq, Hkv, T, S, D, Dv = attention_shapes(q, k, v)
    out_dtype = np.result_type(q, k, v)
    dtype = np.promote_types(out_dtype, np.float32)  # float16 is computed in float32, as the reference does
    scale = attention_scale(scale, D)
    slopes = None if alibi_slopes is None else float_array(alibi_slopes, "alibi_slopes")
    if (causal and T > S) or (slopes is not None and slopes.shape != (Hq,)):  # rows with no key; or a bad argument
        return scaled_dot_product_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
    qs = q.reshape(B, Hkv, Hq // Hkv * T, D).astype(dtype, copy=False) * dtype.type(scale)  # [B, Hkv, G T, D]
    out = np.empty((B, Hkv, Hq // Hkv * T, Dv), dtype=dtype)
    for b in range(B):
        if not softmax_attention_rows(qs[b], k[b].astype(dtype, copy=False), v[b].astype(dtype, copy=False), T,
                                      causal=causal, alibi_slopes=slopes, out=out[b]):
            return scaled_dot_product_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
    return out.reshape(B, Hq, T, Dv).astype(out_dtype, copy=False)


def softmax_attention_rows(qs, k, v, T: int, *, causal: bool, alibi_slopes=None, out) -> bool:
    """out = softmax(qs k^T (+ ALiBi), causal mask) v for one sequence, the scores changed in place.

    qs [Hkv, G T, D]: the queries, already scaled, the G query heads of a KV head
    as one matrix (row g T + t: head h G + g, query t); k [Hkv, S, D]; v [Hkv, S, Dv];
    out [Hkv, G T, Dv]. Query t sits at key position S - T + t (end-aligned), and
    T <= S, so every query sees key 0. Returns False, with out unfilled, if a
    score is not finite (the caller hands such inputs to the reference).
    """
    Hkv, GT, _ = qs.shape
    S = k.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        s = qs @ k.transpose(0, 2, 1)  # [Hkv, G T, D] @ [Hkv, D, S] -> [Hkv, G T, S]
    if not np.isfinite(s).all():
        return False
    if alibi_slopes is not None or (causal and T > 1):
        s = s.reshape(Hkv, GT // T, T, S)  # [Hkv, G, T, S]
        j, p = np.arange(S), S - T + np.arange(T)[:, None]  # key positions [S]; query positions [T, 1]
        if alibi_slopes is not None:
            s += np.asarray(alibi_slopes, s.dtype).reshape(Hkv, GT // T, 1, 1) * (j - p)  # slope_h * (j - p)
        if causal and T > 1:
            s[..., j > p] = -np.inf  # keys in a query's future
        s = s.reshape(Hkv, GT, S)
    s -= s.max(axis=-1, keepdims=True)  # softmax over the S keys
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    np.matmul(s, v, out=out)  # [Hkv, G T, S] @ [Hkv, S, Dv] -> [Hkv, G T, Dv]
    return True


def causal_attention_in_query_blocks(attention, q, k, v, *, block: int = 128, scale=None, alibi_slopes=None):
    """attention(q, k, v, causal=True, ...), computed `block` query rows at a time.

    Causal masking is end-aligned: query row i sits at key position S - T + i and
    sees keys 0 .. S - T + i. So the rows [s, e) need only the keys [0, S - T + e):
    each block attends over that prefix alone, which skips most of the masked
    upper triangle of the scores and keeps every score block [B, Hq, block, S]
    small. Same result as one call (a prefill optimisation; a test checks it).
    `attention` is any function with scaled_dot_product_attention's signature.
    """
    block = _positive_int(block, "block")
    T, S = np.shape(q)[2], np.shape(k)[2]
    if T <= block:
        return attention(q, k, v, causal=True, scale=scale, alibi_slopes=alibi_slopes)
    parts = []
    for s in range(0, T, block):
        e = min(s + block, T)
        keys_end = S - T + e  # keys visible to the last row of this block
        if keys_end < 1:  # (T > S: these first rows see no key at all)
            parts.append(np.zeros(np.shape(q)[:2] + (e - s, np.shape(v)[3]), dtype=np.result_type(q, k, v)))
            continue
        parts.append(attention(q[:, :, s:e], k[:, :, :keys_end], v[:, :, :keys_end], causal=True, scale=scale,
                               alibi_slopes=alibi_slopes))  # [B, Hq, e - s, Dv]
    return np.concatenate(parts, axis=2)  # [B, Hq, T, Dv]


def repeat_kv(x, n_rep: int) -> np.ndarray:
    """[B, Hkv, S, D] -> [B, Hkv * n_rep, S, D], each KV head repeated for its group.

    This is the copy that GQA avoids; it exists to show GQA equals MHA on
    repeated heads (and for libraries that need it).
    """
    x = np.asarray(x)
    n_rep = _positive_int(n_rep, "n_rep")
    if x.ndim != 4:
        raise ValueError(f"x: expected rank 4 [B, Hkv, S, D], got shape {x.shape}")
    return np.repeat(x, n_rep, axis=1)  # head h of the result is head h // n_rep of x


def split_heads(x, n_heads: int) -> np.ndarray:
    """[B, T, H * D] -> [B, H, T, D]."""
    x = np.asarray(x)
    n_heads = _positive_int(n_heads, "n_heads")
    if x.ndim != 3:
        raise ValueError(f"x: expected rank 3 [B, T, H*D], got shape {x.shape}")
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"x: last dimension {C} is not divisible by n_heads={n_heads}")
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)  # [B, T, H, D] -> [B, H, T, D]


def merge_heads(x) -> np.ndarray:
    """[B, H, T, D] -> [B, T, H * D] (the inverse of split_heads)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x: expected rank 4 [B, H, T, D], got shape {x.shape}")
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # [B, H, T, D] -> [B, T, H, D] -> [B, T, H*D]


def multi_head_attention(x, params, n_heads: int, n_kv_heads: int | None = None, *,
                         mask=None, causal=False, window=None):
    """Multi-head (or grouped-query) self-attention with projections.

    x [B, T, C]; params: "wq" [Hq*D, C], "wk" and "wv" [Hkv*D, C], "wo" [C, Hq*D]
    (weights [out, in], as layers.linear), and optional biases "bq", "bk", "bv", "bo".
    Returns [B, T, C].

        Q = x Wq^T, K = x Wk^T, V = x Wv^T;  out = concat_h(attention(Q_h, K_h, V_h)) Wo^T
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    q = split_heads(_project(x, params, "q"), n_heads)  # [B, T, Hq*D] -> [B, Hq, T, D]
    k = split_heads(_project(x, params, "k"), n_kv_heads)  # [B, T, Hkv*D] -> [B, Hkv, S=T, D]
    v = split_heads(_project(x, params, "v"), n_kv_heads)  # [B, Hkv, S, D]
    out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, window=window)
    return _project(merge_heads(out), params, "o")  # [B, T, Hq*D] -> [B, T, C]


# --- validation helpers (the public boundary) ---------------------------------------


def _mask_size(T, S) -> tuple[int, int]:
    """(T, S) as ints >= 1 whose [T, S] mask NumPy can index (T * S < 2**63)."""
    T, S = _positive_int(T, "T"), _positive_int(S, "S")
    if T * S > np.iinfo(np.intp).max:
        raise ValueError(f"T, S: a [T, S] mask of {T} x {S} entries is larger than any array; got T={T}, S={S}")
    return T, S


def _project(x, params, name):
    return linear(x, params[f"w{name}"], params.get(f"b{name}"))


def _check_broadcast(x, target, name):
    try:
        shape = np.broadcast_shapes(x.shape, target)
    except ValueError:
        shape = None
    if shape != tuple(target):
        raise ValueError(f"{name}: expected a shape broadcastable to [B, Hq, T, S] = {list(target)}, got {x.shape}")


def _combined_mask(mask, causal, window, target):
    B, Hq, T, S = target
    allowed = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"mask: expected a boolean array (True = may attend), got dtype {mask.dtype}")
        _check_broadcast(mask, target, "mask")
        allowed = mask
    if window is not None:
        structural = sliding_window_mask(T, S, window)
    elif causal:
        structural = causal_mask(T, S)
    else:
        return allowed
    return structural if allowed is None else allowed & structural
