"""Laws of greedy, temperature, top-k and top-p sampling."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.basics import seeds
from tinytransformer.attention import softmax
from tinytransformer.sampling import (check_options, filter_top_k, filter_top_p, generate, greedy, sample_next,
                                      stop_reason)

vocab_logits = st.builds(lambda n, seed, scale: np.random.default_rng(seed).standard_normal(n) * scale,
                         st.integers(1, 60), seeds(), st.floats(0.1, 20))


@given(vocab_logits, seeds(), st.floats(0.1, 5.0))
def test_top_k_one_is_greedy(logits, seed, temperature):
    assert sample_next(logits, temperature=temperature, top_k=1, rng=seed) == greedy(logits)


@given(vocab_logits, seeds())
def test_temperature_zero_is_greedy(logits, seed):
    assert sample_next(logits, temperature=0.0, top_k=3, top_p=0.5, rng=seed) == int(np.argmax(logits))


@given(vocab_logits, st.integers(1, 70))
def test_top_k_keeps_exactly_the_k_largest(logits, k):
    kept = np.isfinite(filter_top_k(logits, k))
    assert kept.sum() == min(k, logits.size)
    if kept.sum() < logits.size:
        assert logits[kept].min() >= logits[~kept].max()


@given(vocab_logits, st.one_of(st.floats(0.01, 1.0), st.just(1.0)))
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(logits, p):
    kept = np.isfinite(filter_top_p(logits, p))
    if p == 1.0:
        assert kept.all()  # p = 1 keeps every token, whatever the rounding
        return
    probs = softmax(logits)
    mass = np.sort(probs[kept])[::-1]
    rounding = 1e-12  # sums of up to 60 float64 probabilities, in two different orders
    assert mass.sum() >= p - rounding  # the kept set reaches p ...
    assert mass[:-1].sum() < p + rounding  # ... and is the smallest that does: without its least token it falls short
    if not kept.all():
        assert probs[kept].min() >= probs[~kept].max()  # and it is made of the most likely tokens


def test_top_p_one_keeps_a_token_whose_probability_is_lost_in_rounding():
    logits = np.array([0.0, -40.0])  # probabilities 1 - 4e-18 and 4e-18: the running sum reaches 1.0 early
    assert np.isfinite(filter_top_p(logits, 1.0)).all()


@given(vocab_logits, seeds(), st.floats(0.2, 3.0), st.integers(1, 5), st.floats(0.1, 1.0))
def test_samples_come_only_from_the_filtered_set(logits, seed, temperature, k, p):
    token = sample_next(logits, temperature=temperature, top_k=k, top_p=p, rng=seed)
    z = (logits - logits.max()) / temperature  # softmax(z) = softmax(logits / temperature)
    allowed = np.isfinite(filter_top_p(filter_top_k(z, k), p))
    assert allowed[token]


def test_sampling_frequencies_follow_the_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_next(logits, temperature=1.0, rng=rng) for _ in range(6000)], minlength=3)
    assert np.allclose(counts / 6000, [0.5, 0.3, 0.2], atol=0.03)


def test_same_seed_same_samples():
    logits = np.zeros(50)
    assert [sample_next(logits, temperature=1.0, rng=s) for s in range(5)] == \
           [sample_next(logits, temperature=1.0, rng=s) for s in range(5)]


def test_generate_stops_after_the_end_of_sequence_token():
    def step(new_ids):
        return np.eye(5)[(new_ids[-1] + 1) % 5] * 10  # always predicts the next id

    assert list(generate(step, [0], 10, eos_id=3)) == [1, 2, 3]
    assert list(generate(step, [0], 2)) == [1, 2]


@pytest.mark.parametrize("call, message", [
    (lambda: sample_next(np.ones(3), temperature=-1.0), "temperature: expected a finite number >= 0"),
    (lambda: sample_next(np.ones(3), temperature=True), "temperature: expected a finite number >= 0"),
    (lambda: sample_next(np.ones(3), temperature=float("inf")), "temperature: expected a finite number >= 0"),
    (lambda: sample_next(np.ones(3), temperature="1"), "temperature: expected a finite number >= 0"),
    (lambda: sample_next(np.ones(3), temperature=0.0, top_k=-1), "top_k: expected an integer >= 1"),
    (lambda: sample_next(np.ones(3), temperature=1.0, top_k=True), "top_k: expected an integer >= 1"),
    (lambda: sample_next(np.ones(3), temperature=1.0, top_p=True), r"top_p: expected a number in \(0, 1\]"),
    (lambda: sample_next(np.ones(3), temperature=1.0, rng="x"), "rng: expected a numpy Generator, an integer seed"),
    (lambda: sample_next(np.ones(3), temperature=1.0, rng=-1), "rng: expected a numpy Generator"),
    (lambda: sample_next(np.ones(3), temperature=1.0, rng=True), "rng: expected a numpy Generator"),
    (lambda: sample_next(np.array([1 + 2j, 3])), "logits: expected a non-empty 1-D real-valued array"),
    (lambda: sample_next(np.array([0.0, np.nan, 5.0])), "logits: expected numbers, got NaN at id 1"),
    (lambda: greedy([0.0, np.nan, 5.0]), "logits: expected numbers, got NaN at id 1"),
    (lambda: greedy([-np.inf, -np.inf]), "every one of the 2 logits is -inf"),
    (lambda: sample_next([-np.inf] * 3, temperature=1.0), "every one of the 3 logits is -inf"),
    (lambda: generate(lambda ids: np.ones(3), [1.7, "3", -5], 3), r"prompt_ids\[0\]: expected an integer token id"),
    (lambda: generate(lambda ids: np.ones(3), [1, -5], 3), r"prompt_ids\[1\]: expected an integer token id >= 0"),
    (lambda: generate(lambda ids: np.ones(3), [True], 3), r"prompt_ids\[0\]: expected an integer token id"),
    (lambda: generate(lambda ids: np.ones(3), "12", 3), "prompt_ids: expected a sequence of integer token ids"),
    (lambda: generate(lambda ids: np.ones(3), 5, 3), "prompt_ids: expected a sequence of integer token ids"),
    (lambda: generate(lambda ids: np.ones(3), [1], True), "max_new_tokens: expected an integer >= 0"),
    (lambda: generate(lambda ids: np.ones(3), [1], 2, seed="abc"), "seed: expected a numpy Generator"),
    (lambda: generate(lambda ids: np.ones(3), [1], 2, eos_id="2"), "eos_id: expected an integer token id"),
    (lambda: generate(lambda ids: np.ones(3), [1], 2, temperature=-1), "temperature: expected a finite number"),
    (lambda: generate(None, [1], 2), "step: expected a function"),
    (lambda: sample_next(np.ones(3), temperature=1.0, top_k=0), "top_k: expected an integer >= 1"),
    (lambda: sample_next(np.ones(3), temperature=1.0, top_p=1.5), r"top_p: expected a number in \(0, 1\]"),
    (lambda: sample_next(np.ones((2, 3))), r"logits: expected a non-empty 1-D"),
    (lambda: list(generate(lambda ids: np.ones(3), [], 3)), "prompt_ids: expected at least one"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- non-finite logits -----------------------------------------------------------------

@given(seeds(), st.floats(1e-300, 10.0), st.integers(2, 6))
def test_infinite_logits_share_all_the_probability(seed, temperature, n):
    logits = np.zeros(n)
    logits[[0, n - 1]] = np.inf
    token = sample_next(logits, temperature=temperature, rng=seed)
    assert token in (0, n - 1)


def test_both_infinite_logits_are_drawn():
    draws = {sample_next([np.inf, 0.0, np.inf], temperature=1.0, rng=seed) for seed in range(40)}
    assert draws == {0, 2}


@given(st.lists(st.floats(-1e12, 1e12), min_size=1, max_size=30), seeds(), st.floats(1e-300, 1e-250))
def test_a_tiny_temperature_is_greedy(values, seed, temperature):
    """p_i is proportional to exp(-(max - z_i) / tau), which is 0 in float64 once (max - z_i) / tau > 745:
    only tokens within ~745 tau of the top can be drawn (all of them near-ties when the logits differ by
    less than tau, as [-1e-269, 0] does at tau = 1e-250)."""
    logits = np.array(values)
    token = sample_next(logits, temperature=temperature, rng=seed)
    assert logits.max() - logits[token] <= 746 * temperature


def test_generate_checks_its_arguments_before_the_first_step():
    calls = []

    def step(ids):
        calls.append(ids)
        return np.ones(3)

    with pytest.raises(ValueError, match="top_p"):
        generate(step, [1, 2], 3, temperature=1.0, top_p=2.0)
    assert calls == []


def test_check_options_returns_them_checked_and_names_the_bad_one():
    assert check_options(0.5, 3, 0.9) == (0.5, 3, 0.9) and check_options() == (0.0, None, None)
    for options, name in [((-1.0,), "temperature"), ((True,), "temperature"), ((1.0, 0), "top_k"),
                          ((1.0, None, 1.5), "top_p"), ((1.0, None, True), "top_p")]:
        with pytest.raises(ValueError, match=f"{name}: expected"):
            check_options(*options)


@given(st.lists(st.integers(0, 5), max_size=8), st.integers(0, 8), st.sampled_from([None, 2]))
def test_every_loop_stops_at_the_end_of_sequence_id_first_then_at_the_limit(new_ids, limit, eos):
    reason = stop_reason(new_ids, limit, eos)
    if new_ids and new_ids[-1] == eos:
        assert reason == "stop"
    else:
        assert reason == ("length" if len(new_ids) >= limit else None)
