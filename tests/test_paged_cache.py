"""The paged KV cache holds what was appended, its views only claim positions in allocated blocks, and decode
over it is attention."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.kernels import PagedCase, build_paged_cache, paged_cases
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.paged_attention import (PagedKeys, paged_decode_attention, paged_decode_attention_batched,
                                             paged_decode_attention_fast)
from tinytransformer.paged_cache import CacheFullError, PagedKVCache
from tinytransformer.positional import alibi_bias, alibi_slopes
from tinytransformer.testing import assert_close


@given(paged_cases())
def test_gather_returns_exactly_what_was_appended(case):
    cache, ids, ks, vs = build_paged_cache(case)
    for s, k, v in zip(ids, ks, vs):
        k_got, v_got = cache.gather(0, s)
        np.testing.assert_array_equal(k_got, k)
        np.testing.assert_array_equal(v_got, v)


@given(paged_cases())
def test_each_sequence_owns_ceil_length_over_block_size_blocks_and_no_block_twice(case):
    cache, ids, _, _ = build_paged_cache(case)
    owned = [b for s in ids for b in cache.block_table(s)]
    assert len(owned) == len(set(owned)), "a block is owned by two sequences"
    for s in ids:
        assert len(cache.block_table(s)) == -(-cache.length(s) // case.block_size)
    assert len(owned) + cache.n_free_blocks == cache.n_blocks
    assert cache.wasted_slots() < len(ids) * case.block_size  # less than one block per sequence


@given(paged_cases())
def test_batch_pads_block_tables_with_minus_one_and_reports_lengths(case):
    cache, ids, ks, _ = build_paged_cache(case)
    tables, lengths = cache.batch(ids)
    assert tables.dtype == np.int32 and lengths.dtype == np.int32
    assert lengths.tolist() == [k.shape[1] for k in ks]
    for row, s in zip(tables, ids):
        n = len(cache.block_table(s))
        assert row[:n].tolist() == cache.block_table(s)
        assert (row[n:] == -1).all()


def test_freed_blocks_return_to_the_free_list_and_are_reused():
    cache = PagedKVCache(1, 1, 2, n_blocks=3, block_size=2)
    a = cache.add_sequence()
    cache.append(a, np.ones((1, 5, 2)), np.ones((1, 5, 2)))  # 3 blocks: the pool is full
    assert cache.n_free_blocks == 0
    used = set(cache.block_table(a))
    cache.free(a)
    assert cache.n_free_blocks == 3
    b = cache.add_sequence()
    cache.append(b, np.zeros((1, 4, 2)), np.zeros((1, 4, 2)))
    assert set(cache.block_table(b)) <= used
    with pytest.raises(KeyError, match="no live sequence"):
        cache.length(a)


def test_extend_is_all_or_nothing_when_the_pool_is_full():
    cache = PagedKVCache(1, 1, 2, n_blocks=2, block_size=2)
    s = cache.add_sequence()
    cache.append(s, np.ones((1, 3, 2)), np.ones((1, 3, 2)))
    with pytest.raises(CacheFullError, match="needs 1 more blocks .* only 0 of 2 are free"):
        cache.extend(s, 2)
    assert cache.length(s) == 3 and len(cache.block_table(s)) == 2
    cache.extend(s, 1)  # the last slot of the second block still fits
    assert cache.length(s) == 4


def test_append_with_a_wrong_shape_changes_nothing():
    cache = PagedKVCache(1, 2, 4, n_blocks=4, block_size=2)
    s = cache.add_sequence()
    with pytest.raises(ValueError, match=r"k: expected shape \[Hkv, n, D\] = \[2, 3, 4\], got \(2, 3, 5\)"):
        cache.append(s, np.zeros((2, 3, 5)), np.zeros((2, 3, 4)))
    assert cache.length(s) == 0 and cache.n_free_blocks == 4


def test_multi_layer_cache_is_written_per_layer_after_one_extend():
    cache = PagedKVCache(2, 1, 2, n_blocks=4, block_size=2)
    s = cache.add_sequence()
    with pytest.raises(ValueError, match="n_layers=2"):
        cache.append(s, np.zeros((1, 1, 2)), np.zeros((1, 1, 2)))
    positions = cache.extend(s, 3)
    for layer in range(2):
        cache.write(layer, s, positions, np.full((1, 3, 2), layer), np.full((1, 3, 2), -layer))
    assert (cache.gather(1, s)[0] == 1).all() and (cache.gather(0, s)[0] == 0).all()


@given(paged_cases(), st.integers(1, 3))
def test_a_batch_step_stores_each_sequences_keys_where_write_would(case, T):
    rng = np.random.default_rng(case.seed)
    Hkv, D, bs = case.n_kv_heads, case.head_dim, case.block_size
    n_blocks = sum(-(-(L + T) // bs) for L in case.lengths)
    cache = PagedKVCache(1, Hkv, D, n_blocks=n_blocks, block_size=bs)
    seq_ids = [cache.add_sequence() for _ in case.lengths]
    for s, L in zip(seq_ids, case.lengths):
        cache.append(s, rng.standard_normal((Hkv, L, D)), rng.standard_normal((Hkv, L, D)))
    reference = copy.deepcopy(cache)
    k_new, v_new = (rng.standard_normal((len(seq_ids), Hkv, T, D)) for _ in range(2))
    for s in seq_ids:
        cache.allocate(s, T)
    batch = cache.view(seq_ids)
    positions = batch.new_positions(T)
    stored = batch.store(0, k_new, v_new)  # one assignment for the whole batch
    assert isinstance(stored, PagedKeys) and stored.counts is None and np.shares_memory(stored.k_pool, cache.k_pool)
    for b, s in enumerate(seq_ids):
        reference.write(0, s, reference.extend(s, T), k_new[b], v_new[b])  # one sequence at a time
        assert positions[b].tolist() == list(range(case.lengths[b], case.lengths[b] + T))
    assert (cache.k_pool == reference.k_pool).all() and (cache.v_pool == reference.v_pool).all()


@given(paged_cases(), st.data())
def test_a_packed_step_stores_each_sequences_keys_where_write_would(case, data):
    rng = np.random.default_rng(case.seed)
    Hkv, D, bs = case.n_kv_heads, case.head_dim, case.block_size
    counts = data.draw(st.lists(st.integers(1, 4), min_size=len(case.lengths), max_size=len(case.lengths)))
    n_blocks = sum(-(-(L + n) // bs) for L, n in zip(case.lengths, counts))
    cache = PagedKVCache(1, Hkv, D, n_blocks=n_blocks, block_size=bs)
    seq_ids = [cache.add_sequence() for _ in case.lengths]
    for s, L in zip(seq_ids, case.lengths):
        cache.append(s, rng.standard_normal((Hkv, L, D)), rng.standard_normal((Hkv, L, D)))
    reference = copy.deepcopy(cache)
    N = sum(counts)
    k_new, v_new = (rng.standard_normal((1, Hkv, N, D)) for _ in range(2))
    for s, n in zip(seq_ids, counts):
        cache.allocate(s, n)
    batch = cache.packed_view(seq_ids, counts)
    positions = batch.new_positions(N)
    assert batch.store(0, k_new, v_new).counts == tuple(counts)
    start = 0
    for s, L, n in zip(seq_ids, case.lengths, counts):
        reference.write(0, s, reference.extend(s, n), k_new[0, :, start:start + n], v_new[0, :, start:start + n])
        assert positions[0, start:start + n].tolist() == list(range(L, L + n))
        start += n
    assert (cache.k_pool == reference.k_pool).all() and (cache.v_pool == reference.v_pool).all()


def test_a_packed_view_rejects_bad_arguments_and_claims_all_or_nothing():
    cache = PagedKVCache(1, 1, 2, n_blocks=3, block_size=2)
    a, b = cache.add_sequence(), cache.add_sequence()
    with pytest.raises(ValueError, match="n_new: expected one count per sequence"):
        cache.packed_view([a, b], [1])
    with pytest.raises(ValueError, match=r"n_new\[1\]"):
        cache.packed_view([a, b], [1, 0])
    with pytest.raises(ValueError, match="seq_ids: expected distinct"):
        cache.packed_view([a, a], [1, 1])
    with pytest.raises(ValueError, match="seq_ids: expected at least one"):
        cache.packed_view([], [])
    view = cache.packed_view([a, b], [3, 1])
    with pytest.raises(ValueError, match="ids: expected the 4 tokens packed"):
        view.new_positions(3)
    with pytest.raises(ValueError, match="call new_positions first"):
        view.store(0, np.zeros((1, 1, 4, 2)), np.zeros((1, 1, 4, 2)))
    with pytest.raises(ValueError, match="of sequence 0 exceed max_seq_len=2"):
        view.new_positions(4, limit=2)
    with pytest.raises(ValueError, match="sequence 0 has room for 0 more positions"):  # nothing allocated yet
        view.new_positions(4)
    with pytest.raises(CacheFullError, match="needs 3 more blocks"):  # the pool has 3 blocks, b holds 1
        cache.allocate(b, 1)
        cache.allocate(a, 5)
    assert cache.block_table(a) == [] and cache.n_free_blocks == 2  # all or nothing: a took no block
    cache.allocate(a, 3)
    with pytest.raises(ValueError, match="sequence 1 has room for 2 more positions in its blocks, but the step "
                                         "brings 3"):
        cache.packed_view([a, b], [3, 3]).new_positions(6)
    assert cache.length(a) == cache.length(b) == 0 and cache.n_free_blocks == 0  # nothing was claimed
    view.new_positions(4)
    with pytest.raises(ValueError, match=r"k_new: expected shape \[1, Hkv, N, D\]"):
        view.store(0, np.zeros((1, 1, 3, 2)), np.zeros((1, 1, 4, 2)))


def test_a_view_only_claims_and_refuses_a_sequence_whose_blocks_have_no_room():
    """One writer takes blocks (the scheduler, before the step); the model's view only claims positions."""
    cache = PagedKVCache(1, 1, 2, n_blocks=4, block_size=2)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.allocate(a, 3)  # 2 blocks; b has none
    with pytest.raises(ValueError, match="sequence 1 has room for 0 more positions in its blocks"):
        cache.view([a, b]).new_positions(1)
    assert cache.length(a) == 0 and cache.n_free_blocks == 2  # all or nothing, and no block taken
    cache.allocate(b, 1)
    free = cache.n_free_blocks
    assert cache.view([a, b]).new_positions(1).tolist() == [[0], [0]] and cache.n_free_blocks == free
    assert cache.blocks.room(a) == 3 and cache.blocks.room(b) == 1


def _decode_reference(case, ks, vs, q, causal, slopes):
    """Attention over each sequence's contiguous K/V (the oracle), the last T queries end-aligned."""
    outs = []
    for b, (k, v) in enumerate(zip(ks, vs)):
        L = k.shape[1]
        bias = None
        if slopes is not None:
            bias = alibi_bias(len(slopes), case.q_len, L)
        outs.append(scaled_dot_product_attention(q[b:b + 1], k[None], v[None], causal=causal, bias=bias)[0])
    return np.stack(outs)


@given(paged_cases(), st.booleans(), st.booleans())
def test_paged_decode_equals_attention_over_the_contiguous_cache(case, causal, alibi):
    cache, ids, ks, vs = build_paged_cache(case)
    tables, lengths = cache.batch(ids)
    Hq = case.n_kv_heads * case.group
    q = np.random.default_rng(case.seed + 1).standard_normal((len(ids), Hq, case.q_len, case.head_dim))
    slopes = alibi_slopes(Hq) if alibi else None
    out = paged_decode_attention(q, cache.k_pool[0], cache.v_pool[0], tables, lengths, causal=causal,
                                 alibi_slopes=slopes)
    assert_close(out, _decode_reference(case, ks, vs, q, causal, slopes))


@pytest.mark.parametrize("faster", [paged_decode_attention_batched, paged_decode_attention_fast])
@given(paged_cases(), st.booleans(), st.booleans(), st.sampled_from(["float16", "float32", "float64"]))
def test_the_faster_paged_decodes_equal_the_reference(faster, case, causal, alibi, dtype):
    cache, ids, _, _ = build_paged_cache(case)
    tables, lengths = cache.batch(ids)
    Hq = case.n_kv_heads * case.group
    q = np.random.default_rng(case.seed + 2).standard_normal((len(ids), Hq, case.q_len, case.head_dim)).astype(dtype)
    pools = cache.k_pool[0].astype(dtype), cache.v_pool[0].astype(dtype)
    options = dict(causal=causal, alibi_slopes=alibi_slopes(Hq) if alibi else None)
    got = faster(q, *pools, tables, lengths, **options)
    want = paged_decode_attention(q, *pools, tables, lengths, **options)
    assert got.dtype == want.dtype
    assert_close(got, want, dtype=dtype)


@pytest.mark.parametrize("bad", ["q", "k"])
def test_the_fast_paged_decode_raises_the_references_error_on_a_non_finite_score(bad):
    cache = PagedKVCache(1, 1, 4, n_blocks=4, block_size=2)
    s = cache.add_sequence()
    k = np.ones((1, 3, 4))
    if bad == "k":
        k[0, 1, 2] = np.inf
    cache.append(s, k, np.ones((1, 3, 4)))
    tables, lengths = cache.batch([s])
    q = np.ones((1, 2, 1, 4))
    if bad == "q":
        q[0, 1, 0, 3] = np.nan
    args = (q, cache.k_pool[0], cache.v_pool[0], tables, lengths)
    with pytest.raises(ValueError, match=f"{bad}: expected finite values") as reference:
        paged_decode_attention(*args)
    with pytest.raises(ValueError) as fast:
        paged_decode_attention_fast(*args)
    assert str(fast.value) == str(reference.value)


@given(paged_cases(), st.tuples(st.integers(0, 2**31), st.integers(0, 2**31)))
def test_block_table_layout_does_not_change_the_decode_result(case, seeds):
    """The same tokens stored in two different physical layouts decode to the same output."""
    layouts = [PagedCase(**{**case.__dict__, "interleave": i, "decoy": d}) for i, d in ((False, False), (True, True))]
    q = np.random.default_rng(seeds[0]).standard_normal(
        (len(case.lengths), case.n_kv_heads * case.group, case.q_len, case.head_dim))
    outs = []
    for layout in layouts:
        cache, ids, _, _ = build_paged_cache(layout)
        tables, lengths = cache.batch(ids)
        outs.append(paged_decode_attention(q, cache.k_pool[0], cache.v_pool[0], tables, lengths))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_decode_rejects_bad_arguments_with_the_argument_named():
    cache = PagedKVCache(1, 2, 4, n_blocks=4, block_size=2)
    s = cache.add_sequence()
    cache.append(s, np.ones((2, 3, 4)), np.ones((2, 3, 4)))
    tables, lengths = cache.batch([s])
    kp, vp = cache.k_pool[0], cache.v_pool[0]
    q = np.ones((1, 6, 1, 4))
    with pytest.raises(ValueError, match="k_pool: expected a number of KV heads that divides q's 5 heads"):
        paged_decode_attention(np.ones((1, 5, 1, 4)), kp, vp, tables, lengths)
    with pytest.raises(ValueError, match=r"k_pool: expected head dim 3 \(q's\), got 4"):
        paged_decode_attention(np.ones((1, 6, 1, 3)), kp, vp, tables, lengths)
    with pytest.raises(ValueError, match=r"context_lens: expected values in \[1, max_blocks \* block_size = 4\]"):
        paged_decode_attention(q, kp, vp, tables, np.array([5], np.int32))
    with pytest.raises(ValueError, match=r"block_tables: row 0 uses blocks \[0, 7\]"):
        paged_decode_attention(q, kp, vp, np.array([[0, 7]], np.int32), lengths)
    with pytest.raises(ValueError, match="block_tables: expected an integer array"):
        paged_decode_attention(q, kp, vp, tables.astype(np.float32), lengths)
    with pytest.raises(ValueError, match=r"alibi_slopes: expected shape \[Hq\] = \[6\]"):
        paged_decode_attention(q, kp, vp, tables, lengths, alibi_slopes=np.ones(2))


def test_paging_fits_more_sequences_than_contiguous_reservation():
    """The lecture's claim, measured: same pool, lengths far below max_seq_len."""
    max_seq_len, block_size, pool_positions = 256, 16, 1024
    cache = PagedKVCache(1, 1, 1, n_blocks=pool_positions // block_size, block_size=block_size)
    rng = np.random.default_rng(0)
    admitted = 0
    try:
        while True:
            s = cache.add_sequence()
            cache.extend(s, int(rng.integers(10, 60)))
            admitted += 1
    except CacheFullError:
        pass
    contiguous = pool_positions // max_seq_len
    assert admitted > 3 * contiguous


def test_an_empty_batch_decodes_to_an_empty_output():
    cache = PagedKVCache(1, 2, 4, n_blocks=2, block_size=2)
    out = paged_decode_attention(np.ones((0, 4, 1, 4)), cache.k_pool[0], cache.v_pool[0],
                                 np.zeros((0, 1), np.int32), np.zeros(0, np.int32))
    assert out.shape == (0, 4, 1, 4)


def test_truncate_rewinds_a_sequence_and_returns_emptied_blocks():
    cache = PagedKVCache(1, 1, 2, n_blocks=4, block_size=2)
    s = cache.add_sequence()
    cache.append(s, np.ones((1, 7, 2)), np.ones((1, 7, 2)))  # 4 blocks
    cache.truncate(s, 3)  # keeps 2 blocks
    assert cache.length(s) == 3 and len(cache.block_table(s)) == 2 and cache.n_free_blocks == 2
    with pytest.raises(ValueError, match=r"length: expected an integer in \[0, 3\]"):
        cache.truncate(s, 4)


@given(paged_cases(), st.booleans())
def test_paged_decode_with_flash_attention_equals_it_with_sdpa(case, causal):
    from tinytransformer.flash import flash_attention

    cache, ids, _, _ = build_paged_cache(case)
    tables, lengths = cache.batch(ids)
    q = np.random.default_rng(case.seed).standard_normal((len(ids), case.n_kv_heads * case.group, case.q_len,
                                                           case.head_dim))
    args = (q, cache.k_pool[0], cache.v_pool[0], tables, lengths)
    assert_close(paged_decode_attention(*args, causal=causal, attention=flash_attention),
                 paged_decode_attention(*args, causal=causal))
