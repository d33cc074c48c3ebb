"""Laws of unigram segmentation (tinytransformer.tokenizers.spm_unigram): the textbook Viterbi and the
float32-exact one that matches sentencepiece give the same pieces, except where float32 rounding decides
between two segmentations that score within rounding of each other.

(That the exact one equals the library id for id is checked in tests/test_tokenizer_hardening.py and
tests/test_tokenizer_sentencepiece.py.)
"""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from strategies.tokenizers import sentencepiece_vocabularies
from tinytransformer.tokenizers.spm_model_file import NORMAL, UNIGRAM, USER_DEFINED, Vocabulary
from tinytransformer.tokenizers.spm_unigram import lattice_scores, segment, viterbi

TEXT = st.text("abc▁x", max_size=30)  # "x" is in no vocabulary: an unknown character


def integer_scores(pieces):
    """The same vocabulary with whole-number scores (user-defined pieces made NORMAL: their bonus,
    len * max_score - 0.1, is not a whole number). Every sum of at most 30 such scores is exact in
    float32, so rounding cannot decide anything."""
    return [(p, float(round(s)), NORMAL if t == USER_DEFINED else t) for p, s, t in pieces]


def path_score(pieces, scores, unknown_score):
    """The float64 score of a segmentation, summed left to right as viterbi sums it."""
    total = 0.0
    for piece in pieces:
        total += scores.get(piece, unknown_score)
    return total


@given(pieces=sentencepiece_vocabularies().map(integer_scores), text=TEXT)
def test_plain_viterbi_equals_the_exact_one_when_sums_are_exact(pieces, text):
    # ties included: both keep the candidate whose last piece starts first
    vocab = Vocabulary(pieces, UNIGRAM, byte_fallback=False, where="drawn")
    scores, unknown_score = lattice_scores(vocab)
    assert viterbi(text, scores, unknown_score) == [piece for piece, _ in segment(text, vocab)]


@given(pieces=sentencepiece_vocabularies(), text=TEXT)
def test_plain_and_exact_viterbi_differ_only_by_float32_near_ties(pieces, text):
    vocab = Vocabulary(pieces, UNIGRAM, byte_fallback=False, where="drawn")
    scores, unknown_score = lattice_scores(vocab)
    plain = viterbi(text, scores, unknown_score)
    exact = [piece for piece, _ in segment(text, vocab)]
    assert "".join(exact) == "".join(plain) == text
    best, found = path_score(plain, scores, unknown_score), path_score(exact, scores, unknown_score)
    assert found <= best  # the plain one is optimal in float64
    # every float32 sum is off by at most half an ulp of a partial sum, |partial sum| <= len(text) * largest
    largest = max([abs(unknown_score), *map(abs, scores.values())])
    tolerance = (len(text) + 1) ** 2 * largest * 2.0 ** -23
    assert best - found <= tolerance, (plain, exact)


@given(text=TEXT)
def test_viterbi_spells_an_uncovered_character_as_one_unknown_piece(text):
    pieces = viterbi(text, {"a": -1.0, "b": -1.0, "ab": -1.5}, -20.0)
    assert "".join(pieces) == text
    assert all(piece in ("a", "b", "ab") or len(piece) == 1 for piece in pieces)
    assert "a" not in [p for p, q in zip(pieces, pieces[1:]) if q == "b"]  # "ab" (-1.5) beats "a" + "b" (-2)
