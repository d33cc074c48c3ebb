"""nltk as an oracle: our nltk-style classes equal nltk.lm for every order; our own API equals it where the
conventions meet, and differs exactly by the `</s>` tokens where they do not."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from strategies.basics import seeds
from strategies.ngram import NGRAM_QUERY_WORDS, NGRAM_WORDS, ngram_contexts, ngram_sentences
from tinytransformer.ngram import (
    BOS, EOS, MLE, KneserNeyInterpolated, Laplace, Lidstone, NGramLM, Vocabulary, padded_everygram_pipeline,
)
from tinytransformer.ngram.nltk_compat import everygrams, ngrams, pad_both_ends
from tinytransformer.testing import assert_close

NLTK_QUERY_WORDS = NGRAM_QUERY_WORDS + ("<UNK>",)


def nltk_lm():
    return require("nltk.lm", "the nltk.lm oracle")


def both(name, order, parameter):
    """(ours, nltk's) model of one class, unfitted."""
    theirs = nltk_lm()
    if name == "MLE":
        return MLE(order), theirs.MLE(order)
    if name == "Laplace":
        return Laplace(order), theirs.Laplace(order)
    if name == "Lidstone":
        return Lidstone(parameter, order), theirs.Lidstone(parameter, order)
    return KneserNeyInterpolated(order, discount=parameter), theirs.KneserNeyInterpolated(order, discount=parameter)


def same_or_both_raise(ours, theirs):
    """ours() and theirs() give equal results (floats to 1e-12), or raise the same error type
    (nltk divides 0 by 0 in Kneser-Ney of order 1, and cannot sample from a model that saw no word)."""
    try:
        expected = theirs()
    except (ZeroDivisionError, ValueError) as error:
        with pytest.raises(type(error)):
            ours()
        return
    got = ours()
    if not isinstance(expected, float) or math.isinf(expected) or expected == 0:
        assert got == expected
    else:
        assert_close(got, expected, rtol=1e-12, atol=0)


@given(sentences=ngram_sentences(), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=st.integers(1, 5), name=st.sampled_from(["MLE", "Laplace", "Lidstone", "KneserNeyInterpolated"]),
       parameter=st.sampled_from([0.1, 0.5, 1.0]), seed=seeds())
def test_nltk_style_classes_equal_nltk_in_scores_perplexities_and_samples(sentences, heldout, order, name,
                                                                         parameter, seed):
    from nltk.lm.preprocessing import padded_everygram_pipeline as nltk_pipeline

    ours, theirs = both(name, order, parameter)
    ours.fit(*padded_everygram_pipeline(order, sentences))
    theirs.fit(*nltk_pipeline(order, sentences))
    assert len(ours.vocab) == len(theirs.vocab)
    seen, drawn = ngram_contexts(sentences, order, np.random.default_rng(seed))
    longer = [("a",) * (order + 1), ("zz", "<UNK>")]  # nltk takes any context; so do we
    for context in seen + drawn + longer:
        for word in NLTK_QUERY_WORDS:
            same_or_both_raise(lambda: ours.score(word, context), lambda: theirs.score(word, list(context)))
            same_or_both_raise(lambda: ours.logscore(word, context), lambda: theirs.logscore(word, context))
    for test in ([g for s in heldout for g in everygrams(pad_both_ends(s, order), order)],
                 [g for s in heldout for g in ngrams(pad_both_ends(s, order), order)]):
        if test:
            same_or_both_raise(lambda: ours.perplexity(test), lambda: theirs.perplexity(test))
    text_seed = list(heldout[0][:2])
    same_or_both_raise(lambda: ours.generate(6, text_seed, random_seed=seed),
                       lambda: theirs.generate(6, text_seed, random_seed=seed))


@given(sentences=ngram_sentences(), order=st.integers(1, 5))
def test_our_padded_everygram_pipeline_gives_nltks_ngrams_and_words(sentences, order):
    from nltk.lm.preprocessing import padded_everygram_pipeline as nltk_pipeline

    nltk_lm()
    ours_grams, ours_words = padded_everygram_pipeline(order, sentences)
    theirs_grams, theirs_words = nltk_pipeline(order, sentences)
    assert [sorted(g) for g in ours_grams] == [sorted(g) for g in theirs_grams]
    assert list(ours_words) == list(theirs_words)


def test_the_vocabulary_cuts_off_rare_words_and_counts_unk_as_nltk_does():
    theirs = nltk_lm().Vocabulary(["a", "b", "a", "<UNK>", "c", "c"], unk_cutoff=2)
    ours = Vocabulary(["a", "b", "a", "<UNK>", "c", "c"], unk_cutoff=2)
    assert len(ours) == len(theirs) and sorted(ours) == sorted(theirs)
    assert ours.lookup(["a", "b", "zz"]) == theirs.lookup(["a", "b", "zz"])


@given(sentences=ngram_sentences(), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=st.integers(2, 4), smoothing=st.sampled_from(("mle", "laplace")), seed=seeds())
def test_our_api_equals_nltk_where_the_conventions_meet(sentences, heldout, order, smoothing, seed):
    # For order >= 2 both pad training sentences with n-1 <s> and n-1 </s>: same counts, same |V|.
    lm_module = nltk_lm()
    from nltk.lm.preprocessing import padded_everygram_pipeline as nltk_pipeline

    train, vocab = nltk_pipeline(order, sentences)
    reference = (lm_module.MLE if smoothing == "mle" else lm_module.Laplace)(order)
    reference.fit(train, vocab)
    ours = NGramLM(order, smoothing=smoothing).fit(sentences)
    assert len(ours.vocab) == len(reference.vocab)
    seen, drawn = ngram_contexts(sentences, order, np.random.default_rng(seed))
    for context in seen + drawn:
        for word in NGRAM_QUERY_WORDS:
            expected = reference.score(word, list(context))
            assert_close(ours.score(word, context), expected, rtol=1e-9, atol=0)
            if expected > 0:
                assert_close(ours.logscore(word, context), reference.logscore(word, list(context)),
                             rtol=1e-9, atol=0)
            else:
                assert ours.logscore(word, context) == -math.inf
    # the n-grams our perplexity scores: each word and one </s>, after order-1 <s>
    tokens = [([BOS] * (order - 1) + list(s) + [EOS]) for s in heldout]
    text_ngrams = [tuple(t[i - order + 1:i + 1]) for t in tokens for i in range(order - 1, len(t))]
    expected = reference.perplexity(text_ngrams)
    got = ours.perplexity(heldout)
    if math.isinf(expected):
        assert math.isinf(got)
    else:
        assert_close(got, expected, rtol=1e-9, atol=0)


@settings(max_examples=20)
@given(sentences=ngram_sentences(), sentence=st.lists(st.sampled_from(NGRAM_WORDS), max_size=6),
       order=st.integers(1, 4))
def test_the_conventions_differ_only_in_how_many_end_marks_a_sentence_scores(sentences, sentence, order):
    # nltk's test n-grams of a sentence padded like its training text score n-1 </s> (none for order 1);
    # ours score exactly one. For order >= 2 the probabilities of the tokens both score are equal.
    theirs = MLE(order)
    theirs.fit(*padded_everygram_pipeline(order, sentences))
    grams = ngrams(pad_both_ends(sentence, order), order)
    ours = NGramLM(order, "mle").fit(sentences).logscores([sentence])
    assert len(grams) == len(sentence) + order - 1 and len(ours) == len(sentence) + 1
    assert sum(g[-1] == EOS for g in grams) == order - 1
    if order >= 2:
        assert_close(ours, [theirs.logscore(g[-1], g[:-1]) for g in grams[:len(ours)]], rtol=1e-12, atol=0)


@pytest.mark.parametrize("make, message", [
    (lambda: MLE(0), "order: expected an integer >= 1"),
    (lambda: Lidstone(-1, 2), "gamma: expected a finite number > 0"),
    (lambda: KneserNeyInterpolated(2, discount=1.5), r"discount: expected a number in \[0, 1\]"),
])
def test_bad_nltk_style_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_fitting_without_a_vocabulary_or_n_gram_tuples_is_refused():
    with pytest.raises(ValueError, match="vocabulary_text: expected the words"):
        MLE(2).fit([[("a",)]])
    with pytest.raises(TypeError, match=r"text\[0\]: expected n-grams as non-empty tuples"):
        MLE(2).fit([["a", "b"]], ["a", "b"])
    with pytest.raises(ValueError, match="text_ngrams: expected at least one n-gram"):
        lm = MLE(2)
        lm.fit([[("a",)]], ["a"])
        lm.perplexity([])
