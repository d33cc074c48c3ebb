"""ARPA files: written and read back exactly, scored as KenLM scores them, and untrusted input refused
clearly (malformed files, huge counts, back-off weights that give P > 1, FIFOs), written atomically."""
from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from fuzzing import run_bounded
from strategies.ngram import NGRAM_WORDS, ngram_orders, ngram_sentences
from tinytransformer.ngram import BOS, EOS, BackoffLM, NGramLM, read_arpa, write_arpa
from tinytransformer.testing import assert_close

KN = ("kneser-ney", "modified-kneser-ney")
LOG10_2 = math.log10(2.0)


# ---------------------------------------------------------------------- oracles and round trips
@settings(max_examples=15)
@given(sentences=ngram_sentences(max_sentences=14), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=st.integers(2, 5), smoothing=st.sampled_from(KN))
def test_our_arpa_file_scores_the_same_in_kenlm(sentences, heldout, order, smoothing, tmp_path_factory):
    kenlm = require("kenlm", "the KenLM ARPA oracle (pip install kenlm)")
    lm = NGramLM(order, smoothing).fit(sentences)
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


@settings(max_examples=20)
@given(sentences=ngram_sentences(), heldout=ngram_sentences(words=NGRAM_WORDS + ("zz",)),
       order=ngram_orders(5), smoothing=st.sampled_from(KN))
def test_arpa_export_then_import_scores_every_ngram_the_same(sentences, heldout, order, smoothing,
                                                            tmp_path_factory):
    lm = NGramLM(order, smoothing).fit(sentences)
    path = tmp_path_factory.mktemp("arpa") / "model.arpa"
    lm.to_arpa(path)
    loaded = read_arpa(path)
    assert loaded.order == order and loaded.vocab == lm.vocab
    assert_close(loaded.logscores(heldout), lm.logscores(heldout), rtol=1e-12, atol=1e-12)
    again = path.with_name("again.arpa")
    write_arpa(loaded, again)
    assert again.read_text() == path.read_text()


# ---------------------------------------------------------------------- worked examples
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
    lm = read_arpa(path)
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
    lm, model = read_arpa(path), kenlm.Model(str(path))
    for sentence in (["a", "b"], ["b", "a", "zz"], [], ["a", "a", "b", "b"]):
        # a bigram model's padding is a single <s>, which is also KenLM's bos=True state
        theirs = [s[0] for s in model.full_scores(" ".join(sentence))]
        assert_close(lm.logscores([sentence]) * math.log10(2.0), theirs, rtol=0, atol=1e-4)


# A Katz-style file (as SRILM writes them): bow(a) = 1.5 > 1 and still every distribution sums to 1.
# Unigrams: P(<unk>) = 0.1, P(<s>) ~ 0, P(</s>) = P(a) = P(b) = 0.3. After "a": P(b | a) = P(</s> | a) = 0.2;
# the rest, 0.6, goes to the words never seen after "a", whose unigram mass is 0.4: bow(a) = 0.6 / 0.4.
ARPA_KATZ = f"""\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1\t<unk>
-99\t<s>\t0
{math.log10(0.3)!r}\t</s>
{math.log10(0.3)!r}\ta\t{math.log10(1.5)!r}
{math.log10(0.3)!r}\tb

\\2-grams:
{math.log10(0.2)!r}\ta b
{math.log10(0.2)!r}\ta </s>

\\end\\
"""


def test_a_positive_back_off_weight_that_keeps_every_distribution_summing_to_one_is_read(tmp_path):
    path = tmp_path / "katz.arpa"
    path.write_text(ARPA_KATZ)
    lm = read_arpa(path)
    assert_close(lm.score("a", ["a"]), 1.5 * 0.3, rtol=1e-12, atol=0)  # bow(a) P(a) = 0.45
    assert_close(lm.distribution(["a"]).sum(), 1.0, rtol=1e-12, atol=0)
    assert lm.distribution(["a"]).max() <= 1


def test_a_katz_arpa_file_scores_the_same_in_kenlm(tmp_path):
    kenlm = require("kenlm", "the KenLM ARPA oracle (pip install kenlm)")
    path = tmp_path / "katz.arpa"
    path.write_text(ARPA_KATZ)
    lm, model = read_arpa(path), kenlm.Model(str(path))
    for sentence in (["a", "a"], ["a", "b", "zz"], ["b", "a", "a", "a"]):
        theirs = [s[0] for s in model.full_scores(" ".join(sentence))]
        assert_close(lm.logscores([sentence]) * LOG10_2, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("text, context", [
    (ARPA_KATZ.replace(f"\t{math.log10(1.5)!r}", f"\t{math.log10(4.0)!r}"), "a"),  # P(a | a) = 4 * 0.3
    (ARPA_KATZ.replace(f"{math.log10(0.3)!r}\tb\n", f"{math.log10(0.3)!r}\tb\t0.1\n"), "b"),  # P(w | b) = 1.26 P(w)
], ids=["bow(a)=4", "bow(b)=10^0.1"])
def test_a_positive_back_off_weight_that_gives_a_probability_above_one_is_refused(tmp_path, text, context):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"bad.arpa.*the back-off weight of {context!r}.*"
                                         f"P\\(\\. \\| {context}\\) sums to more than 1"):
        read_arpa(path)


def test_arpa_export_of_a_non_back_off_estimator_is_refused(tmp_path):
    with pytest.raises(ValueError, match="to_arpa: smoothing='laplace' is not a back-off model"):
        NGramLM(2, "laplace").fit([["a", "b"]]).to_arpa(tmp_path / "x.arpa")
    with pytest.raises(ValueError, match="contains whitespace"):
        NGramLM(2, "kneser-ney").fit([["a b"]]).to_arpa(tmp_path / "x.arpa")


# ---------------------------------------------------------------------- malformed files
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
    ("count of 5,000 digits", ARPA_BY_HAND.replace("ngram 1=5", "ngram 1=" + "9" * 5000),
     "line 2: an order or count of more than 18 digits"),
    ("order of 30 digits", ARPA_BY_HAND.replace("ngram 2=3", "ngram " + "2" * 30 + "=3"),
     "line 3: an order or count of more than 18 digits"),
    ("section of 5,000 digits", ARPA_BY_HAND.replace("\\2-grams:", "\\" + "2" * 5000 + "-grams:"),
     r"line 12: expected section \\2-grams:"),
]


@pytest.mark.parametrize("text, message", [(t, m) for _, t, m in BAD_ARPA], ids=[i for i, _, _ in BAD_ARPA])
def test_a_malformed_arpa_file_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_arpa(path)
    assert "bad.arpa" in str(error.value)


def test_an_arpa_file_with_an_endless_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_bytes(b"\\data\\\n" + b"9" * (3 << 20))
    with pytest.raises(ValueError, match="line 2: longer than 1048576 bytes"):
        read_arpa(path)


def test_a_non_utf8_arpa_file_names_the_line(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_bytes(ARPA_BY_HAND.encode().replace(b"-0.7\tb", b"-0.7\t\xff"))
    with pytest.raises(ValueError, match="line 10: not valid UTF-8"):
        read_arpa(path)


# ---------------------------------------------------------------------- files that are not files
def test_a_fifo_given_as_an_arpa_path_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.arpa"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    outcome = run_bounded(lambda: read_arpa(fifo), clean=(ValueError,), seconds=5)
    assert outcome.kind == "clean error", outcome
    assert "model.arpa" in outcome.detail and "expected a regular file, got a FIFO" in outcome.detail


def test_a_folder_or_a_missing_file_given_as_an_arpa_path_is_named(tmp_path):
    with pytest.raises(ValueError, match="expected a regular file, got a directory"):
        read_arpa(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.arpa' cannot be opened"):
        read_arpa(tmp_path / "missing.arpa")
    with pytest.raises(TypeError, match="expected a path"):
        read_arpa(3)


# ---------------------------------------------------------------------- writing safely
def small_model():
    return NGramLM(3, "kneser-ney").fit([["a", "b"], ["b", "c", "a"]])


def test_to_arpa_renames_a_new_file_into_place_so_a_reader_of_the_old_one_keeps_its_bytes(tmp_path):
    path = tmp_path / "model.arpa"
    path.write_text(ARPA_BY_HAND)
    with open(path, "rb") as reader:  # a reader (or a memory map) of the old file
        small_model().to_arpa(path)
        assert reader.read() == ARPA_BY_HAND.encode()  # the old file was replaced, not truncated
    assert read_arpa(path).order == 3
    assert os.listdir(tmp_path) == ["model.arpa"]


def test_a_failed_arpa_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.arpa"
    path.write_text(ARPA_BY_HAND)
    lm = small_model()
    original = BackoffLM.ngrams

    def fail_on_trigrams(self, order):
        if order == 3:
            raise OSError("No space left on device")
        return original(self, order)

    monkeypatch.setattr(BackoffLM, "ngrams", fail_on_trigrams)  # fails after the 1- and 2-grams are written
    with pytest.raises(OSError, match="No space left"):
        lm.to_arpa(path)
    assert path.read_text() == ARPA_BY_HAND
    assert os.listdir(tmp_path) == ["model.arpa"]


def test_to_arpa_checks_everything_before_touching_the_file(tmp_path):
    path = tmp_path / "model.arpa"
    path.write_text(ARPA_BY_HAND)
    with pytest.raises(ValueError, match="contains whitespace"):
        NGramLM(2, "kneser-ney").fit([["a b"]]).to_arpa(path)
    with pytest.raises(FileNotFoundError, match="the folder .* does not exist"):
        small_model().to_arpa(tmp_path / "missing" / "model.arpa")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        small_model().to_arpa(tmp_path)
    assert path.read_text() == ARPA_BY_HAND and os.listdir(tmp_path) == ["model.arpa"]


def test_a_written_arpa_file_keeps_the_old_permissions_or_gets_the_usual_ones(tmp_path):
    old = tmp_path / "old.arpa"
    old.write_text(ARPA_BY_HAND)
    old.chmod(0o640)
    small_model().to_arpa(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
    new = tmp_path / "new.arpa"
    small_model().to_arpa(new)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask

