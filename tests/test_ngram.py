"""n-gram chapter: laws of every estimator, nltk and KenLM as oracles, a worked example, bad input."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from strategies import NGRAM_WORDS, ngram_orders, ngram_sentences, ngram_smoothings, seeds
from tinytransformer.ngram import (
    BOS, EOS, UNK, BackoffLM, NGramLM, bits_per_byte, text_to_sentences, unknown_word_bits,
)
from tinytransformer.testing import assert_close

SMOOTHED = ("laplace", "add-k", "kneser-ney", "modified-kneser-ney")
KN = ("kneser-ney", "modified-kneser-ney")
QUERY_WORDS = NGRAM_WORDS + ("zz", BOS, EOS)  # "zz" is never in training: the <unk> path


def fit(order, smoothing, sentences, **kwargs):
    return NGramLM(order, smoothing=smoothing, k=0.5 if smoothing == "add-k" else 1.0, **kwargs).fit(sentences)


def contexts_of(sentences, order, rng, extra=4):
    """(contexts of the scored tokens of the training text, a few random contexts, some unseen)."""
    seen = set()
    for s in sentences:
        padded = [BOS] * (order - 1) + list(s) + [EOS]
        for i in range(order - 1, len(padded)):
            seen.add(tuple(padded[i - order + 1:i]))
    drawn = set()
    for _ in range(extra):
        length = int(rng.integers(0, order))
        drawn.add(tuple(str(w) for w in rng.choice(QUERY_WORDS, length)))
    return sorted(seen), sorted(drawn - seen)


# ---------------------------------------------------------------------- oracles
@given(sentences=ngram_sentences(), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=st.integers(2, 4), smoothing=st.sampled_from(("mle", "laplace")), seed=seeds())
def test_mle_and_laplace_equal_nltk_on_padded_everygrams(sentences, heldout, order, smoothing, seed):
    lm_module = require("nltk.lm", "the nltk.lm oracle")
    from nltk.lm.preprocessing import padded_everygram_pipeline

    train, vocab = padded_everygram_pipeline(order, sentences)
    reference = (lm_module.MLE if smoothing == "mle" else lm_module.Laplace)(order)
    reference.fit(train, vocab)
    ours = fit(order, smoothing, sentences)
    assert len(ours.vocab) == len(reference.vocab)
    seen, drawn = contexts_of(sentences, order, np.random.default_rng(seed))
    for context in seen + drawn:
        for word in QUERY_WORDS:
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


@settings(max_examples=15)
@given(sentences=ngram_sentences(max_sentences=14), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=st.integers(2, 5), smoothing=st.sampled_from(KN))
def test_our_arpa_file_scores_the_same_in_kenlm(sentences, heldout, order, smoothing, tmp_path_factory):
    kenlm = require("kenlm", "the KenLM ARPA oracle (pip install kenlm)")
    lm = fit(order, smoothing, sentences)
    path = tmp_path_factory.mktemp("arpa") / "model.arpa"
    lm.to_arpa(path)
    model = kenlm.Model(str(path))
    log10_2 = math.log10(2.0)
    for sentence in heldout:
        # our convention: order-1 <s> on the left, one </s>; KenLM gets the padded text as is
        padded = " ".join([BOS] * (order - 1) + sentence + [EOS])
        theirs = np.array([s[0] for s in model.full_scores(padded, bos=False, eos=False)])[order - 1:]
        ours = lm.logscores([sentence]) * log10_2
        assert_close(ours, theirs, rtol=0, atol=1e-4)
        assert_close(lm.sentence_logscore(sentence) * log10_2, theirs.sum(), rtol=0, atol=1e-4)
        if order == 2:  # one <s> of padding is KenLM's own bos=True start: its defaults agree
            assert_close(lm.sentence_logscore(sentence) * log10_2, model.score(" ".join(sentence)),
                         rtol=0, atol=1e-4)


# ---------------------------------------------------------------------- laws
@given(sentences=ngram_sentences(), order=ngram_orders(), smoothing=ngram_smoothings(), seed=seeds())
def test_every_distribution_sums_to_one_over_the_vocabulary(sentences, order, smoothing, seed):
    lm = fit(order, smoothing, sentences)
    seen, drawn = contexts_of(sentences, order, np.random.default_rng(seed))
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


@settings(max_examples=20)
@given(sentences=ngram_sentences(), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=ngram_orders(5), smoothing=st.sampled_from(KN))
def test_arpa_export_then_import_scores_every_ngram_the_same(sentences, heldout, order, smoothing,
                                                            tmp_path_factory):
    lm = fit(order, smoothing, sentences)
    path = tmp_path_factory.mktemp("arpa") / "model.arpa"
    lm.to_arpa(path)
    loaded = BackoffLM.from_arpa(path)
    assert loaded.order == order and loaded.vocab == lm.vocab
    assert_close(loaded.logscores(heldout), lm.logscores(heldout), rtol=1e-12, atol=1e-12)
    again = path.with_name("again.arpa")
    loaded.to_arpa(again)
    assert again.read_text() == path.read_text()


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


ARPA_BY_HAND = """\
\\data\\
ngram 1=5
ngram 2=3

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.30103
-0.5\t</s>
-0.6\ta\t-0.2
-0.7\tb

\\2-grams:
-0.1\t<s> a
-0.2\ta b
-0.4\ta </s>

\\end\\
"""


def test_a_hand_written_arpa_file_scores_by_the_back_off_rule(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text(ARPA_BY_HAND)
    lm = BackoffLM.from_arpa(path)
    assert lm.order == 2 and isinstance(lm, BackoffLM)
    log10_2 = math.log10(2.0)
    assert_close(lm.logscore("a", ["<s>"]) * log10_2, -0.1, rtol=1e-12, atol=0)  # seen bigram
    assert_close(lm.logscore("b", ["<s>"]) * log10_2, -0.30103 - 0.7, rtol=1e-12, atol=0)  # bow(<s>) P(b)
    assert_close(lm.logscore("a", ["b"]) * log10_2, -0.6, rtol=1e-12, atol=0)  # b has no bow: 0
    assert_close(lm.logscore("zz", ["a"]) * log10_2, -0.2 - 1.0, rtol=1e-12, atol=0)  # unknown -> <unk>
    assert_close(lm.logscores([["a", "b"]]) * log10_2, [-0.1, -0.2, -0.5], rtol=1e-12, atol=0)


def test_a_hand_written_arpa_file_scores_the_same_in_kenlm(tmp_path):
    kenlm = require("kenlm", "the KenLM ARPA oracle (pip install kenlm)")
    path = tmp_path / "hand.arpa"
    path.write_text(ARPA_BY_HAND)
    lm, model = BackoffLM.from_arpa(path), kenlm.Model(str(path))
    for sentence in (["a", "b"], ["b", "a", "zz"], [], ["a", "a", "b", "b"]):
        # a bigram model's padding is a single <s>, which is also KenLM's bos=True state
        theirs = [s[0] for s in model.full_scores(" ".join(sentence))]
        assert_close(lm.logscores([sentence]) * math.log10(2.0), theirs, rtol=0, atol=1e-4)


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


def test_arpa_export_of_a_non_back_off_estimator_is_refused(tmp_path):
    with pytest.raises(ValueError, match="to_arpa: smoothing='laplace' is not a back-off model"):
        NGramLM(2, "laplace").fit(JM_CORPUS).to_arpa(tmp_path / "x.arpa")
    with pytest.raises(ValueError, match="contains whitespace"):
        NGramLM(2, "kneser-ney").fit([["a b"]]).to_arpa(tmp_path / "x.arpa")


BAD_ARPA = [
    ("no data", "hello\n", "no \\\\data\\\\ line"),
    ("wrong count", ARPA_BY_HAND.replace("ngram 2=3", "ngram 2=4"), "line 17: the header declares 4 2-grams"),
    ("too many", ARPA_BY_HAND.replace("ngram 1=5", "ngram 1=4"), "line 10: more 1-grams than the 4"),
    ("bad number", ARPA_BY_HAND.replace("-0.6\ta", "-0.x\ta"), "line 9: log10 probability '-0.x' is not a number"),
    ("bad backoff", ARPA_BY_HAND.replace("\t-0.2\n", "\tnan\n"), "line 9: log10 back-off weight 'nan'"),
    ("positive", ARPA_BY_HAND.replace("-0.7\tb", "0.7\tb"), "line 10: log10 probability 0.7 is > 0"),
    ("fields", ARPA_BY_HAND.replace("-0.2\ta b", "-0.2\ta b c"), "line 14: a 2-gram line needs 3 fields"),
    ("missing section", ARPA_BY_HAND.split("\\2-grams:")[0] + "\\end\\\n", "line 12: the header declares 2 orders"),
    ("section order", ARPA_BY_HAND.replace("\\2-grams:", "\\3-grams:"), r"line 12: expected section \\2-grams:"),
    ("no end", ARPA_BY_HAND.replace("\\end\\\n", ""), "line 17: the file ends without"),
    ("missing context", ARPA_BY_HAND.replace("ngram 2=3", "ngram 2=3\nngram 3=1").replace(
        "\\end\\", "\\3-grams:\n-0.3\tb a b\n\n\\end\\"), "the 3-gram 'b a b' has no entry for its context 'b a'"),
    ("unknown word", ARPA_BY_HAND.replace("-0.2\ta b", "-0.2\ta q"), "the 2-gram 'a q' uses a word that is not a 1-gram"),
    ("no </s>", ARPA_BY_HAND.replace("-0.5\t</s>", "-0.5\tc").replace("a </s>", "a c"), "1-grams have no </s>"),
    ("duplicate", ARPA_BY_HAND.replace("-0.4\ta </s>", "-0.4\ta b"), "the 2-gram 'a b' is listed twice"),
]


@pytest.mark.parametrize("text, message", [(t, m) for _, t, m in BAD_ARPA], ids=[i for i, _, _ in BAD_ARPA])
def test_a_malformed_arpa_file_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        BackoffLM.from_arpa(path)
    assert "bad.arpa" in str(error.value)


def test_an_arpa_file_with_an_endless_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_bytes(b"\\data\\\n" + b"9" * (3 << 20))
    with pytest.raises(ValueError, match="line 2: longer than 1048576 bytes"):
        BackoffLM.from_arpa(path)


def test_a_non_utf8_arpa_file_names_the_line(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_bytes(ARPA_BY_HAND.encode().replace(b"-0.7\tb", b"-0.7\t\xff"))
    with pytest.raises(ValueError, match="line 10: not valid UTF-8"):
        BackoffLM.from_arpa(path)
