"""Laws of scaled dot-product attention, its masks, and GQA/MQA."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.attention import AttentionShape, attention_shapes, finite_logits, random_qkv
from strategies.basics import dtypes, seeds
from tinytransformer.attention import (
    causal_attention_in_query_blocks,
    attention_weights,
    causal_mask,
    masked_softmax,
    merge_heads,
    multi_head_attention,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
    scaled_dot_product_attention_fast,
    sliding_window_mask,
    softmax,
    split_heads,
)
from tinytransformer.testing import assert_close
from tinytransformer.positional import alibi_bias, alibi_slopes


def naive_attention(q, k, v, allowed=None, bias=None):
    """Head by head, row by row, with Python loops: the definition written out."""
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    out = np.zeros((B, Hq, T, v.shape[-1]))
    for b in range(B):
        for h in range(Hq):
            kv = h // (Hq // Hkv)
            for i in range(T):
                scores = np.array([q[b, h, i] @ k[b, kv, j] / np.sqrt(D) for j in range(S)])
                if bias is not None:
                    scores = scores + np.broadcast_to(bias, (B, Hq, T, S))[b, h, i]
                ok = np.ones(S, bool) if allowed is None else np.broadcast_to(allowed, (B, Hq, T, S))[b, h, i]
                if not ok.any():
                    continue
                w = np.exp(scores[ok] - scores[ok].max())
                out[b, h, i] = (w / w.sum()) @ v[b, kv][ok]
    return out


@pytest.mark.parametrize("softmax_of", [softmax, masked_softmax], ids=["softmax", "masked_softmax"])
@given(n=st.integers(1, 40), seed=seeds(), magnitude=st.floats(1.0, 1e4))
def test_softmax_is_stable_and_sums_to_one_for_large_logits(softmax_of, n, seed, magnitude):
    x = np.random.default_rng(seed).standard_normal(n) * magnitude
    p = softmax_of(x)
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    assert_close(p.sum(), 1.0, dtype=np.float64)
    assert_close(softmax_of(x + 1e6), p, dtype=np.float32)  # shift invariance


@given(x=finite_logits(), axis=st.integers(-1, 0))
def test_the_textbook_softmax_equals_the_hardened_one_on_finite_input(x, axis):
    """softmax and masked_softmax are the same function where the textbook one is defined: bit for bit."""
    np.testing.assert_array_equal(softmax(x, axis=axis), masked_softmax(x, axis=axis))
    assert softmax(x, axis=axis).dtype == masked_softmax(x, axis=axis).dtype == x.dtype


def test_softmax_of_fully_masked_row_is_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = masked_softmax(np.array([[1.0, 2.0], [-np.inf, -np.inf]]))
        q = masked_softmax(np.array([1.0, 2.0]), mask=np.array([False, False]))
    assert p[1].tolist() == [0.0, 0.0] and q.tolist() == [0.0, 0.0]


@given(attention_shapes(), seeds(), dtypes(), st.booleans())
def test_attention_rows_sum_to_one(shape, seed, dtype, causal):
    q, k, _ = random_qkv(shape, seed, dtype)
    p = attention_weights(q, k, causal=causal)
    assert p.shape == (shape.batch, shape.n_heads, shape.q_len, shape.kv_len)
    sums = p.sum(-1)
    visible = causal_mask(shape.q_len, shape.kv_len).any(-1) if causal else np.ones(shape.q_len, bool)
    assert_close(sums[..., visible], np.ones_like(sums[..., visible]), dtype=dtype)
    assert np.all(sums[..., ~visible] == 0)  # rows with no visible key: zeros, not NaN


@given(attention_shapes(max_len=9), seeds())
def test_vectorised_attention_equals_the_definition(shape, seed):
    q, k, v = random_qkv(shape, seed)
    rng = np.random.default_rng(seed + 1)
    mask = rng.random((shape.batch, 1, shape.q_len, shape.kv_len)) < 0.7
    bias = rng.standard_normal((shape.n_heads, shape.q_len, shape.kv_len))
    out = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    assert_close(out, naive_attention(q, k, v, allowed=mask, bias=bias))


@given(attention_shapes(q_le_kv=True), seeds(), st.data())
def test_causal_output_at_t_ignores_later_tokens(shape, seed, data):
    q, k, v = random_qkv(shape, seed)
    t = data.draw(st.integers(0, shape.q_len - 1))
    cut = shape.kv_len - shape.q_len + t  # key position of query t
    out = scaled_dot_product_attention(q, k, v, causal=True)
    k2, v2, q2 = k.copy(), v.copy(), q.copy()
    k2[:, :, cut + 1:] += 100.0
    v2[:, :, cut + 1:] -= 50.0
    q2[:, :, t + 1:] *= -3.0
    out2 = scaled_dot_product_attention(q2, k2, v2, causal=True)
    assert_close(out2[:, :, : t + 1], out[:, :, : t + 1])


@given(attention_shapes(), seeds(), dtypes())
def test_gqa_equals_mha_on_repeated_kv(shape, seed, dtype):
    q, k, v = random_qkv(shape, seed, dtype)
    gqa = scaled_dot_product_attention(q, k, v, causal=True)
    mha = scaled_dot_product_attention(q, repeat_kv(k, shape.group_size), repeat_kv(v, shape.group_size), causal=True)
    assert_close(gqa, mha, dtype=dtype)


@given(attention_shapes(), seeds())
def test_mha_is_gqa_with_as_many_kv_heads_as_query_heads(shape, seed):
    q, k, v = random_qkv(shape, seed)
    k, v = repeat_kv(k, shape.group_size), repeat_kv(v, shape.group_size)  # now Hkv == Hq
    per_head = np.concatenate(
        [scaled_dot_product_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1]) for h in range(shape.n_heads)], axis=1)
    assert_close(scaled_dot_product_attention(q, k, v), per_head)


@given(attention_shapes(), seeds())
def test_mqa_is_gqa_with_one_kv_head(shape, seed):
    q, k, v = random_qkv(shape, seed)
    k1, v1 = k[:, :1], v[:, :1]
    mqa = scaled_dot_product_attention(q, k1, v1)
    for h in range(shape.n_heads):  # every query head reads the one shared KV head
        assert_close(mqa[:, h:h + 1], scaled_dot_product_attention(q[:, h:h + 1], k1, v1))


@given(attention_shapes(), seeds(), st.integers(1, 12))
def test_window_equals_explicit_sliding_window_mask(shape, seed, window):
    q, k, v = random_qkv(shape, seed)
    explicit = sliding_window_mask(shape.q_len, shape.kv_len, window)
    assert_close(scaled_dot_product_attention(q, k, v, window=window),
                 scaled_dot_product_attention(q, k, v, mask=explicit))
    counts = explicit.sum(-1)
    positions = np.arange(shape.kv_len - shape.q_len, shape.kv_len)
    assert np.array_equal(counts, np.clip(np.minimum(positions + 1, window), 0, None))


@given(attention_shapes(), seeds())
def test_padding_mask_equals_truncating_the_keys(shape, seed):
    q, k, v = random_qkv(shape, seed)
    lengths = np.random.default_rng(seed).integers(1, shape.kv_len + 1, size=shape.batch)
    out = scaled_dot_product_attention(q, k, v, mask=padding_mask(lengths, shape.kv_len))
    for b, n in enumerate(lengths):
        assert_close(out[b:b + 1], scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]))


def test_fully_masked_query_gives_zeros_not_nan():
    shape = AttentionShape(1, 2, 1, 3, 4, 8)
    q, k, v = random_qkv(shape, 0)
    mask = np.ones((3, 4), bool)
    mask[1] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert np.all(out[:, :, 1] == 0) and np.all(np.isfinite(out))


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), seeds())
def test_split_and_merge_heads_are_inverses(batch, heads, head_dim, seed):
    x = np.random.default_rng(seed).standard_normal((batch, 7, heads * head_dim))
    assert np.array_equal(merge_heads(split_heads(x, heads)), x)
    h = heads - 1  # head h at position 2 is the h-th slice of width D of token 2
    assert split_heads(x, heads)[:, h, 2].tolist() == x[:, 2, h * head_dim:(h + 1) * head_dim].tolist()


@given(st.sampled_from([(4, 4), (4, 2), (6, 1), (6, 3)]), seeds())
def test_multi_head_attention_equals_per_head_projection(heads, seed):
    n_heads, n_kv = heads
    rng = np.random.default_rng(seed)
    C, D, T = 12, 3, 5
    params = {"wq": rng.standard_normal((n_heads * D, C)), "wk": rng.standard_normal((n_kv * D, C)),
              "wv": rng.standard_normal((n_kv * D, C)), "wo": rng.standard_normal((C, n_heads * D))}  # [out, in]
    x = rng.standard_normal((2, T, C))
    out = multi_head_attention(x, params, n_heads, n_kv, causal=True)
    expected = np.zeros_like(out)
    for h in range(n_heads):
        g = h // (n_heads // n_kv)
        qh = (x @ params["wq"][h * D:(h + 1) * D].T)[:, None]
        kh = (x @ params["wk"][g * D:(g + 1) * D].T)[:, None]
        vh = (x @ params["wv"][g * D:(g + 1) * D].T)[:, None]
        expected += scaled_dot_product_attention(qh, kh, vh, causal=True)[:, 0] @ params["wo"][:, h * D:(h + 1) * D].T
    assert_close(out, expected)


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda q, k, v: scaled_dot_product_attention(q[0], k, v), "q: expected rank 4"),
    (lambda q, k, v: scaled_dot_product_attention(q, k[:, :, :, :3], v), r"k: expected head dim 4 \(q's\), got 3"),
    (lambda q, k, v: scaled_dot_product_attention(q[:, :5], k[:, :2], v[:, :2]), "k: expected a number of KV heads that divides q's 5 heads"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v[:, :, :2]), "v: expected"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, window=0), "window: expected an integer >= 1"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, mask=np.ones((3, 4))), "mask: expected a boolean"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, mask=np.ones((2, 3, 9), bool)), "mask: expected a shape"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, bias=np.ones((7, 3, 9))), "bias: expected a shape"),
    (lambda q, k, v: scaled_dot_product_attention(q.astype(int), k, v), "q: expected a floating-point"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, scale=float("nan")), "scale: expected a finite"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, scale=True), "scale: expected a finite"),
    (lambda q, k, v: scaled_dot_product_attention(q, k, v, alibi_slopes=np.ones(2)), r"alibi_slopes: expected shape \[Hq\]"),
    (lambda q, k, v: scaled_dot_product_attention(q, k[:, :0], v[:, :0]), "k: expected a number of KV heads"),
    (lambda q, k, v: scaled_dot_product_attention(q, k[:1], v[:1]), r"k: expected batch size 2 \(q's\), got 1"),
])
def test_bad_input_raises_a_clear_value_error(make, message):
    q, k, v = random_qkv(AttentionShape(2, 6, 3, 3, 9, 4), 0)
    with pytest.raises(ValueError, match=message):
        make(q, k, v)


# --- oracle: torch ------------------------------------------------------------------


@given(attention_shapes(max_len=20, q_le_kv=True), seeds(), st.sampled_from(["none", "causal", "mask", "window"]))
def test_attention_agrees_with_torch_sdpa(shape, seed, kind):
    from conftest import require
    torch = require("torch", "oracle for scaled_dot_product_attention")
    q, k, v = random_qkv(shape, seed, np.float32)
    mask = None
    if kind == "mask":
        mask = np.random.default_rng(seed).random((shape.batch, 1, shape.q_len, shape.kv_len)) < 0.8
        mask[..., 0] = True  # torch gives NaN for fully masked rows; we give zeros (tested above)
    elif kind == "window":
        mask = sliding_window_mask(shape.q_len, shape.kv_len, 3)
    ours = scaled_dot_product_attention(q, k, v, mask=mask, causal=kind == "causal")
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    tmask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
    if kind == "causal":  # torch's is_causal is aligned to the start; ours to the end
        tmask = torch.from_numpy(causal_mask(shape.q_len, shape.kv_len))
    theirs = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, enable_gqa=True)
    assert_close(ours, theirs.numpy(), dtype=np.float32)


@given(attention_shapes(), seeds(), st.booleans())
def test_half_precision_is_computed_in_float32_and_returned_in_float16(shape, seed, causal):
    q, k, v = random_qkv(shape, seed, np.float16)
    out = scaled_dot_product_attention(q, k, v, causal=causal)
    assert out.dtype == np.float16
    expected = scaled_dot_product_attention(*(a.astype(np.float32) for a in (q, k, v)), causal=causal)
    assert_close(out, expected, dtype=np.float16)


@given(attention_shapes(), seeds(), st.booleans())
def test_alibi_slopes_equal_the_explicit_end_aligned_alibi_bias(shape, seed, causal):
    q, k, v = random_qkv(shape, seed)
    slopes = alibi_slopes(shape.n_heads)
    by_slopes = scaled_dot_product_attention(q, k, v, causal=causal, alibi_slopes=slopes)
    by_bias = scaled_dot_product_attention(q, k, v, causal=causal, bias=alibi_bias(shape.n_heads, shape.q_len,
                                                                                      shape.kv_len))
    assert_close(by_slopes, by_bias)


@given(attention_shapes(), seeds(), st.integers(1, 8), st.booleans())
def test_causal_attention_in_query_blocks_equals_one_causal_call(shape, seed, block, alibi):
    q, k, v = random_qkv(shape, seed)
    slopes = alibi_slopes(shape.n_heads) if alibi else None
    blocked = causal_attention_in_query_blocks(scaled_dot_product_attention, q, k, v, block=block, alibi_slopes=slopes)
    assert_close(blocked, scaled_dot_product_attention(q, k, v, causal=True, alibi_slopes=slopes))


@given(attention_shapes(), seeds(), dtypes(), st.booleans(), st.booleans(), st.integers(1, 8))
def test_fast_attention_gives_the_reference_result(shape, seed, dtype, causal, alibi, block):
    q, k, v = random_qkv(shape, seed, dtype)
    options = dict(alibi_slopes=alibi_slopes(shape.n_heads) if alibi else None)
    fast = scaled_dot_product_attention_fast(q, k, v, causal=causal, **options)
    assert fast.dtype == np.result_type(q, k, v)
    assert_close(fast, scaled_dot_product_attention(q, k, v, causal=causal, **options), dtype=dtype)
    assert_close(causal_attention_in_query_blocks(scaled_dot_product_attention_fast, q, k, v, block=block, **options),
                 scaled_dot_product_attention(q, k, v, causal=True, **options), dtype=dtype)


def test_fast_attention_gives_zeros_to_a_query_that_sees_no_key_as_the_reference_does():
    q, k, v = random_qkv(AttentionShape(batch=1, n_heads=2, n_kv_heads=1, q_len=4, kv_len=2, head_dim=3), 0)
    out = scaled_dot_product_attention_fast(q, k, v, causal=True)  # 4 queries, 2 keys: the first 2 see nothing
    assert (out[:, :, :2] == 0).all()
    assert_close(out, scaled_dot_product_attention(q, k, v, causal=True))


# --- non-finite edges -----------------------------------------------------------------

@given(st.lists(st.floats(-50, 50), min_size=1, max_size=12), st.data())
def test_softmax_puts_all_the_mass_on_infinite_entries_equally(values, data):
    x = np.array(values)
    top = np.array(data.draw(st.lists(st.booleans(), min_size=x.size, max_size=x.size)))
    x[top] = np.inf
    expected = top / top.sum() if top.any() else masked_softmax(x)  # the limit of softmax as those entries grow
    assert_close(masked_softmax(x), expected)
    assert_close(masked_softmax(np.where(top, 1e300, x)), expected)  # and what a huge finite logit gives


def test_softmax_rows_keep_nan_and_ignore_masked_nan():
    p = masked_softmax(np.array([[np.inf, 0.0, 0.0], [np.nan, 0.0, 1.0], [np.nan, 0.0, 0.0]]),
                       mask=np.array([[True] * 3, [True] * 3, [False, True, True]]))
    assert p[0].tolist() == [1.0, 0.0, 0.0] and np.isnan(p[1]).all() and p[2].tolist() == [0.0, 0.5, 0.5]


def _flash(q, k, v, **kwargs):
    from tinytransformer.flash import flash_attention

    return flash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("attend", [scaled_dot_product_attention, scaled_dot_product_attention_fast, _flash],
                         ids=["sdpa", "sdpa-fast", "flash"])
@pytest.mark.parametrize("big, problem", [
    (1e20, "q, k: the scores q k\\^T \\* scale overflow float32"),
    (np.nan, "q: expected finite values, got NaN or inf"),
    (np.inf, "q: expected finite values, got NaN or inf"),
])
def test_scores_that_are_not_finite_raise_a_clear_error(attend, big, problem):
    q = np.full((1, 1, 2, 4), big, np.float32)
    k = np.full((1, 1, 2, 4), 1e20 if np.isnan(big) or np.isinf(big) else big, np.float32)
    with pytest.raises(ValueError, match=problem):
        attend(q, k, np.ones((1, 1, 2, 4), np.float32), causal=True)


def test_masked_keys_may_hold_anything():
    q = np.ones((1, 1, 1, 2))
    k = np.array([[1.0, 0.0], [np.nan, np.inf]]).reshape(1, 1, 2, 2)  # key 1 is masked out
    mask = np.array([True, False]).reshape(1, 1, 1, 2)
    v = np.array([[3.0, 4.0], [5.0, 6.0]]).reshape(1, 1, 2, 2)
    assert scaled_dot_product_attention(q, k, v, mask=mask)[0, 0, 0].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("call, message", [
    (lambda: masked_softmax(np.array([1 + 1j, 2])), "x: expected a real-valued array, got dtype complex128"),
    (lambda: masked_softmax(np.array([True, False])), "x: expected a real-valued array, got dtype bool"),
    (lambda: masked_softmax(np.ones(2), mask=np.ones(2)), "mask: expected a boolean array"),
    (lambda: causal_mask(2**63, 5), "T, S: a \\[T, S\\] mask of 9223372036854775808 x 5 entries"),
    (lambda: sliding_window_mask(5, 2**62, 2), "T, S: a \\[T, S\\] mask"),
    (lambda: scaled_dot_product_attention(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)),
                                          bias=np.ones((2, 2)) * 1j), "bias: expected a real-valued array"),
])
def test_complex_bool_and_oversized_inputs_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_softmax_of_an_empty_array_is_empty():
    assert masked_softmax(np.zeros((3, 0))).shape == (3, 0) and masked_softmax([]).shape == (0,)
