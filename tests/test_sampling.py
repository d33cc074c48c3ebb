"""Laws of greedy, temperature, top-k and top-p sampling."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import seeds
from tinytransformer.attention import softmax
from tinytransformer.sampling import filter_top_k, filter_top_p, generate, greedy, sample_next

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


@given(vocab_logits, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(logits, p):
    kept = np.isfinite(filter_top_p(logits, p))
    probs = softmax(logits)
    mass = np.sort(probs[kept])[::-1]
    assert mass.sum() >= p - 1e-12 or kept.all()  # the kept set reaches p ...
    assert mass[:-1].sum() < p  # ... and is the smallest that does: without its least token it falls short
    if not kept.all():
        assert probs[kept].min() >= probs[~kept].max()  # and it is made of the most likely tokens


@given(vocab_logits, seeds(), st.floats(0.2, 3.0), st.integers(1, 5), st.floats(0.1, 1.0))
def test_samples_come_only_from_the_filtered_set(logits, seed, temperature, k, p):
    token = sample_next(logits, temperature=temperature, top_k=k, top_p=p, rng=seed)
    allowed = np.isfinite(filter_top_p(filter_top_k(logits / temperature, k), p))
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
    (lambda: sample_next(np.ones(3), temperature=-1.0), "temperature: expected a number >= 0"),
    (lambda: sample_next(np.ones(3), temperature=1.0, top_k=0), "top_k: expected an integer >= 1"),
    (lambda: sample_next(np.ones(3), temperature=1.0, top_p=1.5), r"top_p: expected a number in \(0, 1\]"),
    (lambda: sample_next(np.ones((2, 3))), r"logits: expected a non-empty 1-D"),
    (lambda: list(generate(lambda ids: np.ones(3), [], 3)), "prompt_ids: expected at least one"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
