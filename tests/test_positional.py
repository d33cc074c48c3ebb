"""Laws of sinusoidal, learned, rotary (RoPE) and ALiBi positions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.basics import dtypes, seeds
from tinytransformer.positional import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    embed_positions,
    learned_position_table,
    rope_half_permutation,
    sinusoidal_encoding,
)
from tinytransformer.testing import assert_close

even_dims = st.integers(1, 16).map(lambda n: 2 * n)


@given(st.integers(1, 50), st.integers(1, 33))
def test_sinusoidal_table_matches_the_formula(n_positions, dim):
    table = sinusoidal_encoding(n_positions, dim)
    p, i = n_positions - 1, (dim - 1) // 2
    angle = p / 10000 ** (2 * i / dim)
    expected = np.sin(angle) if (dim - 1) % 2 == 0 else np.cos(angle)
    assert table.shape == (n_positions, dim)
    assert_close(table[p, dim - 1], expected)
    assert np.all(np.abs(table) <= 1)


@given(st.integers(1, 20), even_dims, seeds(), dtypes(), st.booleans(), st.floats(10.0, 1e6))
def test_rope_preserves_norms(T, D, seed, dtype, interleaved, base):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, T, D)).astype(dtype)
    positions = rng.integers(0, 10_000, size=T)
    y = apply_rope(x, positions, base=base, interleaved=interleaved)
    assert y.dtype == x.dtype
    assert_close(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), dtype=dtype)


@given(even_dims, seeds(), st.booleans(), st.integers(0, 500), st.integers(0, 500), st.integers(-200, 200))
def test_rope_dot_product_depends_only_on_position_difference(D, seed, interleaved, p, s, shift):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, D)), rng.standard_normal((1, D))
    shift = max(shift, -min(p, s))  # keep positions non-negative

    def score(pq, pk):
        return (apply_rope(q, np.array([pq]), interleaved=interleaved)
                @ apply_rope(k, np.array([pk]), interleaved=interleaved).T).item()

    assert_close(score(p + shift, s + shift), score(p, s), rtol=1e-9, atol=1e-9)


@given(st.integers(1, 12), even_dims, seeds(), st.floats(100.0, 1e5))
def test_the_two_rope_pairings_differ_by_a_fixed_permutation(T, D, seed, base):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, T, D))
    positions = np.arange(T) + int(rng.integers(0, 100))  # an offset, as in cached decode
    perm = rope_half_permutation(D)
    interleaved = apply_rope(x, positions, base=base, interleaved=True)
    half = apply_rope(x[..., perm], positions, base=base, interleaved=False)
    assert_close(half, interleaved[..., perm])


@given(st.integers(2, 12), even_dims, seeds(), st.booleans())
def test_rope_with_offset_positions_equals_slicing_the_full_sequence(T, D, seed, interleaved):
    x = np.random.default_rng(seed).standard_normal((1, 2, T, D))
    full = apply_rope(x, np.arange(T), interleaved=interleaved)
    tail = apply_rope(x[:, :, T // 2:], np.arange(T // 2, T), interleaved=interleaved)
    assert_close(tail, full[:, :, T // 2:])


def test_rope_rotates_the_first_pair_by_position_times_theta0():
    x = np.zeros((1, 4))
    x[0, 0] = 1.0  # pair (x0, x2) in rotate-half, (x0, x1) interleaved; theta_0 = 1
    half = apply_rope(x, np.array([3]))
    inter = apply_rope(x, np.array([3]), interleaved=True)
    assert_close(half[0, [0, 2]], [np.cos(3), np.sin(3)])
    assert_close(inter[0, [0, 1]], [np.cos(3), np.sin(3)])


@given(st.integers(1, 64))
def test_alibi_slopes_follow_the_paper(n_heads):
    slopes = alibi_slopes(n_heads)
    assert slopes.shape == (n_heads,) and np.all(slopes > 0) and np.all(slopes < 1)
    assert len(set(slopes.tolist())) == n_heads
    m = 2 ** int(np.floor(np.log2(n_heads)))
    ratio = 2.0 ** (-8.0 / m)
    assert_close(slopes[:m], ratio ** np.arange(1, m + 1))  # geometric, start = ratio = 2^(-8/m)
    if m < n_heads:  # the rest interleave the 2m sequence: 2^(-4/m), 2^(-12/m), ...
        assert_close(slopes[m:], (2.0 ** (-4.0 / m)) * (2.0 ** (-8.0 / m)) ** np.arange(n_heads - m))


def test_alibi_slopes_for_eight_heads_are_the_papers_halves():
    assert_close(alibi_slopes(8), [1 / 2 ** i for i in range(1, 9)])


@given(st.integers(1, 9), st.integers(1, 10), st.integers(0, 10))
def test_alibi_bias_is_end_aligned_and_linear_in_distance(n_heads, T, extra):
    S = T + extra
    bias = alibi_bias(n_heads, T, S)
    slopes = alibi_slopes(n_heads)
    assert bias.shape == (n_heads, T, S)
    assert np.all(bias[:, np.arange(T), np.arange(S - T, S)] == 0)  # zero at each query's own position
    if S > 1:
        assert_close(bias[:, -1, -2], -slopes)  # one step back costs one slope


def test_learned_positions_look_up_rows_and_reject_positions_past_the_table():
    table = learned_position_table(8, 4, seed=1)
    assert np.array_equal(embed_positions(table, np.array([2, 5])), table[[2, 5]])
    with pytest.raises(ValueError, match="cannot extrapolate"):
        embed_positions(table, np.array([8]))


@pytest.mark.parametrize("call, message", [
    (lambda: apply_rope(np.ones((3, 4)), np.arange(2)), r"positions: expected shape \[T\] = \[3\]"),
    (lambda: apply_rope(np.ones((3, 5)), np.arange(3)), "head dim must be even"),
    (lambda: apply_rope(np.ones((3, 4)), np.arange(3.0)), "positions: expected an integer array"),
    (lambda: apply_rope(np.ones((3, 4)), np.arange(3), base=-1.0), "base: expected a finite number > 0"),
    (lambda: alibi_slopes(0), "n_heads: expected an integer >= 1"),
    (lambda: alibi_bias(2, 0, 3), "T: expected an integer >= 1"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(seeds(), st.integers(1, 3), st.integers(1, 5), st.booleans())
def test_per_sequence_positions_rotate_each_sequence_as_its_own_1d_positions(seed, B, T, interleaved):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, 2, T, 8))
    positions = rng.integers(0, 1000, size=(B, T))  # a ragged batch: every sequence at its own offset
    out = apply_rope(x, positions, interleaved=interleaved)
    for b in range(B):
        assert_close(out[b], apply_rope(x[b], positions[b], interleaved=interleaved))
