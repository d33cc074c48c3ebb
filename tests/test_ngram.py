"""n-gram chapter: the fast paths equal their Counter references, laws of every estimator, worked examples,
bad input. (nltk as an oracle: test_ngram_nltk.py; ARPA files and KenLM: test_ngram_arpa.py.)"""
from __future__ import annotations

import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from strategies.basics import seeds
from strategies.ngram import (NGRAM_QUERY_WORDS, NGRAM_WORDS, ngram_contexts, ngram_orders, ngram_sentences,
                              ngram_smoothings)
from tinytransformer.ngram import (
    BOS, EOS, UNK, AddKLM, KneserNeyReference, NGramCounts, NGramLM, add_k_probability, bits_per_byte,
    count_ngrams, text_to_sentences, unknown_word_bits, vocabulary,
)
from tinytransformer.testing import assert_close

SMOOTHED = ("laplace", "add-k", "kneser-ney", "modified-kneser-ney")
KN = ("kneser-ney", "modified-kneser-ney")


def fit(order, smoothing, sentences, **kwargs):
    return NGramLM(order, smoothing=smoothing, k=0.5 if smoothing == "add-k" else 1.0, **kwargs).fit(sentences)


# ---------------------------------------------------------------------- fast paths equal their references
@given(sentences=ngram_sentences(), order=ngram_orders(5), min_count=st.integers(1, 3))
def test_sorted_array_counts_equal_the_counter_of_tuples(sentences, order, min_count):
    fast = NGramCounts.from_sentences(sentences, order, min_count)
    assert fast.vocab == vocabulary(sentences, min_count)
    assert fast.as_counter() == count_ngrams(sentences, order, min_count)


@given(sentences=ngram_sentences(), order=ngram_orders(), k=st.sampled_from([0.0, 0.01, 1.0]),
       min_count=st.integers(1, 2), seed=seeds())
def test_add_k_from_sorted_arrays_equals_the_counter_reference(sentences, order, k, min_count, seed):
    counts, vocab = count_ngrams(sentences, order, min_count), vocabulary(sentences, min_count)
    lm = AddKLM(NGramCounts.from_sentences(sentences, order, min_count), k)
    seen, drawn = ngram_contexts(sentences, order, np.random.default_rng(seed))
    for context in seen + drawn:  # every word of the vocabulary after each context
        expected = [add_k_probability(counts, vocab, word, context, k) for word in lm.vocab]
        assert_close(lm.distribution(context), expected, rtol=1e-12, atol=0)


@given(sentences=ngram_sentences(), order=ngram_orders(5), modified=st.booleans(), min_count=st.integers(1, 2),
       seed=seeds())
def test_kneser_ney_from_sorted_arrays_equals_the_recursive_counter_reference(sentences, order, modified,
                                                                            min_count, seed):
    reference = KneserNeyReference(sentences, order, modified=modified, min_count=min_count)
    lm = NGramLM(order, "modified-kneser-ney" if modified else "kneser-ney", min_count=min_count).fit(sentences)
    assert lm.discounts == reference.discounts
    seen, drawn = ngram_contexts(sentences, order, np.random.default_rng(seed))
    for context in seen + drawn:  # every word of the vocabulary after each context
        expected = [reference.score(word, context) for word in lm.vocab]
        assert_close(lm.distribution(context), expected, rtol=1e-12, atol=0)
    assert_close(lm.score("zz", ("a",) * (order - 1)), reference.score("zz", ("a",) * (order - 1)),
                 rtol=1e-12, atol=0)  # a word outside the vocabulary: <unk>


# ---------------------------------------------------------------------- laws
@given(sentences=ngram_sentences(), order=ngram_orders(), smoothing=ngram_smoothings(), seed=seeds())
def test_every_distribution_sums_to_one_over_the_vocabulary(sentences, order, smoothing, seed):
    lm = fit(order, smoothing, sentences)
    seen, drawn = ngram_contexts(sentences, order, np.random.default_rng(seed))
    for context in seen + drawn:
        p = lm.distribution(context)
        assert (p >= 0).all()
        if smoothing == "mle" and context in drawn and p.sum() == 0:
            continue  # MLE after a context never seen in training: all zeros, as in nltk
        assert_close(p.sum(), 1.0, rtol=1e-12, atol=0)
        word = NGRAM_WORDS[0]  # a word outside the vocabulary is scored as <unk>, id 0
        assert_close(p[lm.vocab.index(word) if word in lm.vocab else 0], lm.score(word, context),
                     rtol=1e-12, atol=0)


@given(sentences=ngram_sentences(max_sentences=14), order=ngram_orders(5), smoothing=st.sampled_from(KN))
def test_kneser_ney_discounts_lie_between_zero_and_count(sentences, order, smoothing):
    lm = fit(order, smoothing, sentences)
    assert sorted(lm.discounts) == list(range(1, order + 1))
    for discounts in lm.discounts.values():
        assert len(discounts) == (3 if smoothing == "modified-kneser-ney" else 1)
        for count, d in enumerate(discounts, 1):  # D_j applies to n-grams seen j (or more) times
            assert 0 < d <= count


def test_modified_kneser_ney_discounts_follow_chen_and_goodman():
    # One-word sentences: "w" seen r times gives the bigrams <s> w and w </s>, r times each.
    # Four words once, two twice, one three times, one four times: n1..n4 = 8, 4, 2, 2.
    sentences = [[w] for w, r in zip("abcdefgh", (1, 1, 1, 1, 2, 2, 3, 4)) for _ in range(r)]
    n1, n2, n3, n4 = 8, 4, 2, 2
    Y = n1 / (n1 + 2 * n2)  # 0.5
    expected = (1 - 2 * Y * n2 / n1, 2 - 3 * Y * n3 / n2, 3 - 4 * Y * n4 / n3)  # 0.5, 1.25, 1.0
    assert_close(fit(2, "modified-kneser-ney", sentences).discounts[2], expected, rtol=1e-12, atol=0)
    assert_close(fit(2, "kneser-ney", sentences).discounts[2], [n1 / (n1 + 2 * n2)], rtol=1e-12, atol=0)


@given(sentences=ngram_sentences(), order=ngram_orders())
def test_mle_perplexity_of_training_text_is_exp_of_average_nll_by_hand(sentences, order):
    lm = fit(order, "mle", sentences)
    # by hand: count padded n-grams with Python tuples, P = c(h w) / c(h .)
    grams, contexts, nll, tokens = {}, {}, 0.0, 0
    padded = [[BOS] * (order - 1) + s + [EOS] * max(order - 1, 1) for s in sentences]
    for p in padded:
        for i in range(order - 1, len(p)):
            g = tuple(p[i - order + 1:i + 1])
            grams[g] = grams.get(g, 0) + 1
            contexts[g[:-1]] = contexts.get(g[:-1], 0) + 1
    for s in sentences:
        p = [BOS] * (order - 1) + s + [EOS]
        for i in range(order - 1, len(p)):
            g = tuple(p[i - order + 1:i + 1])
            nll -= math.log(grams[g] / contexts[g[:-1]])
            tokens += 1
    assert_close(lm.perplexity(sentences), math.exp(nll / tokens), rtol=1e-10, atol=0)


@given(sentences=ngram_sentences(), order=ngram_orders(5), smoothing=st.sampled_from(SMOOTHED),
       unknown=st.lists(st.sampled_from(("zz", "qq", UNK)), min_size=1, max_size=4))
def test_unknown_words_never_get_probability_zero_or_nan_when_smoothed(sentences, order, smoothing, unknown):
    lm = fit(order, smoothing, sentences, min_count=2)
    for i in range(len(unknown)):
        context = tuple(unknown[max(0, i - order + 1):i])
        p = lm.score(unknown[i], context)
        assert p > 0 and math.isfinite(p)
    scores = lm.logscores([unknown, NGRAM_WORDS[:3] + tuple(unknown)])
    assert np.isfinite(scores).all()
    assert math.isfinite(lm.perplexity([unknown]))


@given(sentences=ngram_sentences(), order=ngram_orders(), smoothing=ngram_smoothings(), seed=seeds(),
       n_words=st.integers(0, 12))
def test_generate_is_reproducible_from_a_seed_and_draws_from_the_vocabulary(sentences, order, smoothing,
                                                                            seed, n_words):
    lm = fit(order, smoothing, sentences)
    out = lm.generate(n_words, seed=seed)
    assert out == lm.generate(n_words, seed=seed)
    assert len(out) == n_words and set(out) <= set(lm.vocab)
    if smoothing == "mle":  # MLE only ever continues with an n-gram it saw
        history = [BOS] * (order - 1)
        for word in out:
            assert lm.score(word, history[len(history) - order + 1:] if order > 1 else ()) > 0
            history = history + [word] if word != EOS else [BOS] * (order - 1)


@given(sentences=ngram_sentences(), order=ngram_orders(), smoothing=ngram_smoothings())
def test_logscores_are_the_log2_of_score_for_each_token(sentences, order, smoothing):
    lm = fit(order, smoothing, sentences)
    sentence = sentences[0]
    padded = [BOS] * (order - 1) + sentence + [EOS]
    by_word = [lm.logscore(padded[i], padded[i - order + 1:i]) for i in range(order - 1, len(padded))]
    assert_close(lm.logscores([sentence]), by_word, rtol=1e-12, atol=0)
    assert_close(lm.sentence_logscore(sentence), sum(by_word), rtol=1e-12, atol=1e-12)


@given(text=st.text(alphabet=st.sampled_from("ab .,\n\té€"), max_size=40))
def test_text_to_sentences_spells_the_text_back_exactly(text):
    words = text_to_sentences(text, "word")
    assert "\n".join("".join(s) for s in words) == text
    data = text_to_sentences(text, "byte")
    assert b"\n".join(bytes.fromhex("".join(s)) for s in data) == text.encode("utf-8")


@pytest.mark.parametrize("level", ["word", "byte"])
def test_bits_per_byte_is_total_bits_over_utf8_bytes(level):
    train = "the cat sat on the mat.\nthe dog sat.\n"
    heldout = "the cat ran, the owl sat.\n"
    lm = NGramLM(3, "kneser-ney").fit(text_to_sentences(train, level))
    sentences = text_to_sentences(heldout, level)
    bits = -lm.logscores(sentences).sum()
    bits += sum(unknown_word_bits(w, level) for s in sentences for w in s if w not in lm.vocab)
    assert_close(bits_per_byte(lm, heldout, level), bits / len(heldout.encode()), rtol=1e-12, atol=0)
    assert bits_per_byte(lm, train, level) < bits_per_byte(lm, heldout, level)


# ---------------------------------------------------------------------- worked examples
def test_the_chapter_page_examples_give_what_they_show():
    result = doctest.testfile(str(ROOT / "docs" / "07_ngrams.md"), module_relative=False,
                              optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


JM_CORPUS = [["I", "am", "Sam"], ["Sam", "I", "am"], ["I", "do", "not", "like", "green", "eggs", "and", "ham"]]


def test_bigram_mle_matches_jurafsky_and_martin_section_3_1():
    # Jurafsky and Martin, Speech and Language Processing (3rd ed.), section 3.1: the bigram
    # probabilities of this three-sentence corpus.
    lm = NGramLM(2, "mle").fit(JM_CORPUS)
    expected = {("I", "<s>"): 2 / 3, ("Sam", "<s>"): 1 / 3, ("am", "I"): 2 / 3, ("</s>", "Sam"): 1 / 2,
                ("Sam", "am"): 1 / 2, ("do", "I"): 1 / 3}
    for (word, previous), p in expected.items():
        assert_close(lm.score(word, [previous]), p, rtol=1e-15, atol=0)


def test_interpolated_kneser_ney_by_hand_on_the_same_corpus():
    lm = NGramLM(2, "kneser-ney").fit(JM_CORPUS)
    F = Fraction
    # Bigrams (raw counts, top order): <s> I and I am occur twice, 13 others once:
    # n1 = 13, n2 = 2, so D2 = 13 / (13 + 2*2) = 13/17.
    D2 = F(13, 17)
    # Unigrams use continuation counts N1+(. w): I after {<s>, Sam} = 2, Sam after {am, <s>} = 2,
    # </s> after {Sam, am, ham} = 3, and am, do, not, like, green, eggs, and, ham = 1 each.
    # n1 = 8, n2 = 2: D1 = 8 / 12; their sum is 15; 11 words have a count, |V| = 13.
    D1, total, V = F(8, 12), 15, 13
    gamma0 = D1 * 11 / total
    p_sam = (2 - D1) / total + gamma0 / V
    p_unk = gamma0 / V
    assert p_sam == F(74, 585)
    # P(Sam | am): c(am Sam) = 1 of c(am .) = 2, and am has 2 distinct followers.
    p_sam_after_am = (1 - D2) / 2 + D2 * 2 / 2 * p_sam
    p_unk_after_am = D2 * 2 / 2 * p_unk
    # P(I | <s>): c(<s> I) = 2 of c(<s> .) = 3, 2 distinct followers; N1+(. I) = 2.
    p_i = (2 - D1) / total + gamma0 / V
    p_i_after_bos = (2 - D2) / 3 + D2 * 2 / 3 * p_i
    assert lm.discounts == {1: (float(D1),), 2: (float(D2),)}
    assert_close(lm.score("Sam", []), float(p_sam), rtol=1e-12, atol=0)
    assert_close(lm.score("Sam", ["am"]), float(p_sam_after_am), rtol=1e-12, atol=0)
    assert_close(lm.score("zebra", ["am"]), float(p_unk_after_am), rtol=1e-12, atol=0)
    assert_close(lm.score("I", ["<s>"]), float(p_i_after_bos), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("order", [0, -1, 2.0, True, "3"])
def test_order_below_one_or_not_an_integer_is_refused(order):
    with pytest.raises(ValueError, match="order: expected an integer >= 1"):
        NGramLM(order)


@pytest.mark.parametrize("kwargs, message", [
    ({"smoothing": "katz"}, "smoothing: expected one of"),
    ({"smoothing": "laplace", "k": 0.5}, "k: smoothing='laplace' is add-k with k=1"),
    ({"smoothing": "add-k", "k": 0}, "k: expected a finite number > 0"),
    ({"min_count": 0}, "min_count: expected an integer >= 1"),
])
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NGramLM(2, **kwargs)


def test_empty_training_data_is_refused():
    with pytest.raises(ValueError, match="sentences: expected at least one sentence"):
        NGramLM(2).fit([])


@pytest.mark.parametrize("sentences, error, message", [
    ("a b c", TypeError, "expected an iterable of sentences"),
    (["a b"], TypeError, r"sentences\[0\]: expected a list of str tokens"),
    ([["a"], ["b", 3]], TypeError, r"sentences\[1\]: expected str tokens"),
    ([["a", "<s>"]], ValueError, r"sentences\[0\] contains '<s>', which is reserved"),
])
def test_malformed_training_sentences_are_named(sentences, error, message):
    with pytest.raises(error, match=message):
        NGramLM(2).fit(sentences)


def test_a_context_longer_than_order_minus_one_is_refused():
    lm = NGramLM(3, "kneser-ney").fit(JM_CORPUS)
    with pytest.raises(ValueError, match="context has 3 words but an order-3 model takes at most 2"):
        lm.score("am", ["a", "b", "I"])
    with pytest.raises(TypeError, match="context: expected a sequence of words, got the str"):
        lm.score("am", "I")
    with pytest.raises(ValueError, match="logscore: the model is not fitted"):
        NGramLM(2).logscore("a")
