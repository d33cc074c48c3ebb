"""Laws of speculative decoding (chapter 12): greedy speculation gives the target's greedy ids, and
with sampling the emitted tokens have exactly the target's distribution (enumerated, not sampled)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.basics import seeds
from strategies.serving import serving_models, serving_prompts
from tinytransformer import sampling
from tinytransformer.generation import generate
from tinytransformer.model import TinyTransformer, TransformerConfig, init_params
from tinytransformer.serving.speculative import (ModelDraft, PromptLookupDraft, Randomness, SpeculationStats,
                                                 accept_or_resample, exact_distribution, layer_draft,
                                                 speculative_generate, speculative_stream)
from tinytransformer.testing import assert_close


class TableDraft:
    """A draft with random distributions: q(. | context) drawn from a Dirichlet seeded by the
    context, some entries zero (so the residual max(0, p - q) is exercised where q misses)."""

    def __init__(self, vocab_size: int, seed: int):
        self.vocab_size, self.seed = vocab_size, seed

    def distribution(self, context) -> np.ndarray:
        rng = np.random.default_rng([self.seed, *context])
        q = rng.dirichlet(np.full(self.vocab_size, 0.7))
        q[rng.random(self.vocab_size) < 0.3] = 0.0
        if q.sum() == 0:
            q[rng.integers(self.vocab_size)] = 1.0
        return q / q.sum()

    def propose(self, tokens, k, randomness, **sampling_options):
        context, ids, qs = list(tokens), [], []
        for _ in range(k):
            q = self.distribution(context)
            if sampling_options.get("temperature") == 0:  # a greedy draft is one-hot too
                q = np.eye(self.vocab_size)[int(np.argmax(q))]
            ids.append(randomness.choice(q))
            qs.append(q)
            context.append(ids[-1])
        return ids, np.array(qs)


def _drafts(model, seed):
    return {"prompt lookup": PromptLookupDraft(model.config.vocab_size, max_ngram=2),
            "random table": TableDraft(model.config.vocab_size, seed),
            "first layer": ModelDraft(layer_draft(model, 1)),
            "another model": ModelDraft(TinyTransformer(model.config, init_params(model.config, seed + 1,
                                                                                  dtype=np.float64)))}


@settings(max_examples=max(20, settings.default.max_examples // 2))
@given(model=serving_models(), k=st.integers(1, 5), n_new=st.integers(0, 10), seed=seeds(),
       kind=st.sampled_from(["prompt lookup", "random table", "first layer", "another model"]), data=st.data())
def test_greedy_speculation_gives_exactly_the_targets_greedy_ids(model, k, n_new, seed, kind, data):
    prompt = data.draw(serving_prompts(model.config.vocab_size, max_prompts=1))[0]
    n_new = min(n_new, model.config.max_seq_len - len(prompt))
    stats = SpeculationStats()
    got = speculative_generate(model, _drafts(model, seed)[kind], prompt, n_new, k=k, seed=seed, stats=stats)
    assert got == generate(model, prompt, n_new)
    assert stats.emitted == len(got) and stats.accepted <= stats.drafted
    assert stats.rounds <= max(len(got), 0) and (not got or stats.rounds >= -(-len(got) // (k + 1)))


class _PlantedDraft:
    """Proposes the target's own greedy continuation, with one wrong token planted at index `wrong`."""

    def __init__(self, continuation, wrong, vocab_size):
        self.continuation, self.wrong, self.vocab_size = continuation, wrong, vocab_size

    def propose(self, tokens, k, randomness, **sampling_options):
        ids = list(self.continuation[:k])
        if self.wrong < k:
            ids[self.wrong] = (ids[self.wrong] + 1) % self.vocab_size
        return ids, np.eye(self.vocab_size)[ids]


@pytest.mark.parametrize("wrong", [0, 1, 3, 5])
def test_a_greedy_round_keeps_the_drafts_before_the_first_that_is_not_the_argmax(wrong):
    model = TinyTransformer(TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, max_seq_len=32), seed=3)
    prompt = [1, 5, 2, 6]
    target = generate(model, prompt, 8, stop_at_eos=False)
    stats = SpeculationStats()
    first_round = next(speculative_stream(model, _PlantedDraft(target, wrong, 7), prompt, 8, k=5, stats=stats))
    # drafts 0 .. wrong - 1 kept, then the target's own token in place of the wrong one
    # (with nothing wrong, all 5 kept and a bonus token)
    assert first_round == target[:min(wrong, 5) + 1]
    assert stats.accepted == min(wrong, 5) and stats.drafted == 5


@pytest.mark.parametrize("kind,k,temperature,top_p", [("random table", 1, 1.0, None), ("random table", 2, 0.7, None),
                                                     ("random table", 2, 1.3, 0.8), ("another model", 1, 0.8, None)])
def test_the_first_two_emitted_tokens_have_exactly_the_targets_distribution(kind, k, temperature, top_p):
    # Every branch of the procedure is run (each a few forwards of a tiny model), so the
    # vocabulary is 3 and k at most 2: about a thousand runs.
    config = TransformerConfig(vocab_size=3, d_model=8, n_layers=2, n_heads=2, max_seq_len=16, tie_embeddings=False)
    params = init_params(config, seed=k, dtype=np.float64)
    params["output.weight"] *= 40  # distributions far from uniform
    target = TinyTransformer(config, params)
    draft = _drafts(target, seed=7 + k)[kind]
    prompt = [1, 2, 0]
    options = dict(temperature=temperature, top_p=top_p)

    def first_two(randomness):
        out = []
        for emitted in speculative_stream(target, draft, prompt, k + 2, k=k, randomness=randomness,
                                          stop_at_eos=False, **options):
            out += emitted
            if len(out) >= 2:
                return tuple(out[:2])

    speculative = exact_distribution(first_two)
    p1 = sampling.probabilities(target.forward(np.array(prompt))[-1], **options)
    expected = {}
    for a in np.flatnonzero(p1):
        p2 = sampling.probabilities(target.forward(np.array(prompt + [int(a)]))[-1], **options)
        expected.update({(int(a), int(b)): p1[a] * p2[b] for b in np.flatnonzero(p2)})
    assert set(speculative) == set(expected)
    keys = sorted(expected)
    assert_close(np.array([speculative[key] for key in keys]), np.array([expected[key] for key in keys]))
    assert_close(sum(speculative.values()), 1.0)


@given(p=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=5), seed=seeds())
def test_one_position_of_the_rule_emits_y_with_probability_p_of_y(p, seed):
    p = np.array(p) / np.sum(p)
    q = np.random.default_rng(seed).dirichlet(np.ones(p.size))

    def one_token(randomness):
        x = randomness.choice(q)
        n, y = accept_or_resample([x], np.stack([p, p]), q[None], randomness)
        return x if n == 1 else y

    got = exact_distribution(one_token)
    assert_close(np.array([got.get(i, 0.0) for i in range(p.size)]), p)


def test_prompt_lookup_copies_what_followed_the_latest_earlier_match_with_k_tokens_after_it():
    draft = PromptLookupDraft(vocab_size=10, max_ngram=3)
    tokens = [1, 2, 3, 9, 1, 2, 4, 7, 1, 2]
    assert draft.lookup(tokens, 3) == [4, 7, 1]  # (7, 1, 2) never occurred; (1, 2) last at 4
    assert draft.lookup(tokens, 5) == [3, 9, 1, 2, 4]  # only 4 tokens follow the one at 4: the one at 0
    assert draft.lookup([1, 2, 1, 2], 5) == [1, 2]  # none is followed by 5: the one followed by most
    assert draft.lookup([5, 6, 7], 3) == []  # nothing repeats
    assert draft.lookup([5, 6, 7, 5], 2) == []  # one token seen before is not enough by default,
    assert PromptLookupDraft(10, min_ngram=1).lookup([5, 6, 7, 5], 2) == [6, 7]  # but is when allowed
    assert PromptLookupDraft(10, max_ngram=1).lookup([5, 6, 7, 5], 2) == [6, 7]
    ids, q = draft.propose(tokens, 2)
    assert ids == [4, 7] and q.shape == (2, 10) and (q.argmax(axis=1) == ids).all() and (q.sum(axis=1) == 1).all()


def test_a_draft_of_all_layers_is_the_model_and_shares_its_weights():
    config = TransformerConfig(vocab_size=9, d_model=8, n_layers=3, n_heads=2)
    model = TinyTransformer(config, seed=2)
    full, first = layer_draft(model, 3), layer_draft(model, 1)
    ids = np.array([[1, 2, 3, 4]])
    assert_close(full.forward(ids), model.forward(ids))
    assert first.config.n_layers == 1 and first.params["token_embd.weight"] is model.params["token_embd.weight"]


def test_a_copy_task_is_decoded_in_fewer_target_forwards():
    model = TinyTransformer(TransformerConfig(vocab_size=12, d_model=8, n_layers=1, n_heads=2, max_seq_len=64), seed=0)
    prompt = [1, 2, 3, 4, 5, 6] * 3
    stats = SpeculationStats()
    out = speculative_generate(model, PromptLookupDraft(12), prompt, 20, k=4, stats=stats)
    assert out == generate(model, prompt, 20)
    assert stats.rounds < 20 and 0 <= stats.acceptance_rate <= 1


def test_bad_arguments_are_refused_with_a_clear_message():
    model = TinyTransformer(TransformerConfig(vocab_size=5, d_model=4, n_layers=2, n_heads=1, max_seq_len=8))
    draft = PromptLookupDraft(5)
    for call, message in [
        (lambda: speculative_generate(model, draft, [1], 3, k=0), "k: expected an integer >= 1"),
        (lambda: speculative_generate(model, draft, [1, 7], 3), r"prompt_ids: expected .* in \[0, 5\)"),
        (lambda: speculative_generate(model, draft, [1] * 5, 4), "exceed the context length"),
        (lambda: speculative_generate(model, draft, [1], 2, temperature=-1.0), "temperature"),
        (lambda: layer_draft(model, 3), r"n_layers: expected an integer in \[1, 2\]"),
        (lambda: PromptLookupDraft(5, max_ngram=1, min_ngram=2), "min_ngram: expected at most"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_randomness_is_reproducible_from_its_seed():
    a, b = Randomness(3), Randomness(3)
    assert [a.choice([0.2, 0.8]) for _ in range(5)] == [b.choice([0.2, 0.8]) for _ in range(5)]
