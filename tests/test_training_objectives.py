"""Cross-entropy and its targets; BERT's masking and its proportions."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.basics import seeds
from strategies.training import activation_shapes
from tinytransformer.testing import assert_close
from tinytransformer.training.objectives import IGNORE, cross_entropy, mask_tokens, next_token_targets


@given(activation_shapes(), seeds())
def test_cross_entropy_gradient_rows_sum_to_zero_and_ignored_rows_are_zero(shape, seed):
    rng = np.random.default_rng(seed)
    B, T, V = shape
    logits = rng.standard_normal(shape) * 5
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < 0.4] = IGNORE
    loss, grad = cross_entropy(logits, targets)
    counted = targets != IGNORE
    assert loss >= 0 and (loss > 0 or V == 1 or not counted.any())
    assert_close(grad.sum(-1), np.zeros((B, T)), atol=1e-12)
    assert np.all(grad[~counted] == 0)
    assert np.all(grad[counted] >= -1.0 / max(counted.sum(), 1))  # only the target entry is negative


def test_cross_entropy_of_uniform_logits_is_log_v_and_survives_huge_logits():
    loss, _ = cross_entropy(np.zeros((2, 3, 7)), np.ones((2, 3), dtype=np.int64))
    assert_close(loss, math.log(7))
    huge = np.array([[1e4, -1e4, 0.0]], dtype=np.float32)
    loss, grad = cross_entropy(huge, np.array([1]))  # p[target] underflows to 0; the log does not
    assert_close(loss, 2e4, rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_cross_entropy_over_nothing_is_zero():
    loss, grad = cross_entropy(np.ones((2, 4)), np.full(2, IGNORE))
    assert loss == 0.0 and not grad.any()


@given(st.integers(1, 3), st.integers(1, 10), seeds())
def test_next_token_targets_are_the_ids_shifted_left(B, T, seed):
    ids = np.random.default_rng(seed).integers(0, 50, size=(B, T))
    targets = next_token_targets(ids)
    assert np.array_equal(targets[:, :-1], ids[:, 1:]) and np.all(targets[:, -1] == IGNORE)


@given(seeds(), st.integers(5, 40), st.lists(st.integers(0, 4), max_size=3))
def test_masking_never_touches_a_special_token(seed, vocab_size, extra_special):
    rng = np.random.default_rng(seed)
    mask_id = 0
    special = sorted({mask_id, *extra_special})
    ids = rng.integers(0, vocab_size, size=(4, 50))
    inputs, targets = mask_tokens(ids, vocab_size=vocab_size, mask_id=mask_id, special_ids=special, rng=rng,
                                  select=0.5)
    is_special = np.isin(ids, special)
    assert np.all(targets[is_special] == IGNORE)  # never chosen
    assert np.array_equal(inputs[is_special], ids[is_special])  # never replaced
    chosen = targets != IGNORE
    assert np.array_equal(targets[chosen], ids[chosen])  # the target is the original token
    assert np.array_equal(inputs[~chosen], ids[~chosen])  # unchosen positions are untouched
    replaced = chosen & (inputs != mask_id)
    assert not np.isin(inputs[replaced], special).any()  # random replacements are ordinary tokens


def test_masking_proportions_converge_to_15_and_80_10_10():
    """A bounded statistical test: 400,000 positions with a fixed seed, each proportion within
    5 standard deviations of its expectation (a false alarm has probability below 1e-6 per
    proportion for a fresh seed; with the fixed seed the test is deterministic)."""
    rng = np.random.default_rng(1234)
    vocab_size, mask_id, special = 50, 1, [0, 1, 2]
    ids = rng.integers(3, vocab_size, size=(1000, 400))  # no special token in the text
    ids[:, 0] = 0  # plus one [CLS]-like special token per row
    inputs, targets = mask_tokens(ids, vocab_size=vocab_size, mask_id=mask_id, special_ids=special, rng=rng)
    ordinary = ids != 0
    chosen = targets != IGNORE
    n_ordinary, n_chosen = int(ordinary.sum()), int(chosen.sum())
    n_tokens = vocab_size - len(special)
    same = chosen & (inputs == ids)
    expectations = {  # observed count, number of trials, expected probability
        "chosen": (n_chosen, n_ordinary, 0.15),
        "[MASK]": (int((chosen & (inputs == mask_id)).sum()), n_chosen, 0.8),
        "random": (int((chosen & (inputs != mask_id) & (inputs != ids)).sum()), n_chosen, 0.1 * (1 - 1 / n_tokens)),
        "unchanged": (int(same.sum()), n_chosen, 0.1 + 0.1 / n_tokens),  # kept, or drawn equal to itself
    }
    for name, (count, trials, p) in expectations.items():
        sd = math.sqrt(trials * p * (1 - p))
        assert abs(count - trials * p) < 5 * sd, f"{name}: {count} of {trials}, expected {trials * p:.0f} +- {sd:.0f}"
    assert not chosen[~ordinary].any()


def test_masking_is_reproducible_from_the_generator_seed():
    ids = np.arange(100).reshape(2, 50) % 30
    a = mask_tokens(ids, vocab_size=30, mask_id=29, special_ids=[29], rng=np.random.default_rng(7))
    b = mask_tokens(ids, vocab_size=30, mask_id=29, special_ids=[29], rng=np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("call, message", [
    (lambda: cross_entropy(np.ones((2, 3)), np.array([0, 3])), r"targets: expected values in \[0, 3\)"),
    (lambda: cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])), "targets: expected an integer array"),
    (lambda: cross_entropy(np.ones((2, 3), int), np.array([0, 1])), "logits: expected a floating-point array"),
    (lambda: mask_tokens(np.array([5]), vocab_size=5, mask_id=0, rng=np.random.default_rng()),
     r"ids: expected values in \[0, vocab_size=5\)"),
    (lambda: mask_tokens(np.array([1]), vocab_size=5, mask_id=7, rng=np.random.default_rng()), "mask_id: expected"),
    (lambda: mask_tokens(np.array([1]), vocab_size=5, mask_id=0, rng=np.random.default_rng(), select=1.5),
     r"select: expected a probability in \[0, 1\]"),
    (lambda: mask_tokens(np.array([1]), vocab_size=2, mask_id=0, special_ids=[0, 1], rng=np.random.default_rng()),
     "special_ids: every token is special"),
    (lambda: mask_tokens(np.array([1]), vocab_size=5, mask_id=0, special_ids=[0, -1], rng=np.random.default_rng()),
     r"special_ids: expected token ids in \[0, 5\), got \[0, -1\]"),  # -1 would mark token 4 special
    (lambda: mask_tokens(np.array([1]), vocab_size=0, mask_id=0, rng=np.random.default_rng()),
     "vocab_size: expected an integer >= 1"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
