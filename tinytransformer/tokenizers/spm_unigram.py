"""Unigram segmentation (Kudo 2018): the most probable way to cut a text into pieces, by Viterbi.

The unigram model gives each piece x a score s(x) = log p(x) and a segmentation
x_1 .. x_k of the text the score of a product of independent draws:

    x_1 .. x_k = argmax_{x_1 ... x_k = text}  sum_i s(x_i)     (a character no piece covers: min_x s(x) - 10)

The textbook dynamic program is Viterbi over a lattice whose nodes are the positions
0..n of the text and whose edges are the pieces: best[end], the best score of any
segmentation of text[:end], is max over pieces text[start:end] of best[start] + s(piece);
a back-pointer remembers the start, and following them from n gives the pieces.
`viterbi` is that, in a few lines; `segment` is the one the tokenizer uses, equal to
sentencepiece id for id:

- it walks the pieces that start at each position with the trie (time linear in the
  matches, where viterbi slices every length up to the longest piece);
- scores are float32 and the library adds them in float32, so every sum is rounded to
  float32 (round_float32) and near-ties break the same way;
- a USER_DEFINED piece scores len(piece in UTF-8 bytes) * max_score - 0.1, so that it always
  wins; an UNUSED piece is not an edge.

Where no two segmentations tie, the two give the same pieces; they may differ only where
two segmentations score within float32 rounding of each other (tests/test_tokenizer_unigram.py
checks both statements). On an exact tie both keep the candidate whose last piece starts
first, that is the longest last piece.

    >>> viterbi("▁hello", {"▁he": -2.0, "llo": -2.0, "▁hello": -5.0, "▁": -3.0, "h": -3.0}, -20.0)
    ['▁he', 'llo']

Does not handle: sampling segmentations or the n best (subword regularisation), training.
"""
from __future__ import annotations

from tinytransformer.tokenizers.spm_model_file import UNUSED, USER_DEFINED, Vocabulary, round_float32

__all__ = ["viterbi", "lattice_scores", "segment", "UNK_PENALTY"]

UNK_PENALTY = 10.0


# ---- 1. the reference: textbook Viterbi ---------------------------------------------------
def viterbi(text: str, scores: dict[str, float], unknown_score: float) -> list[str]:
    """The pieces of the best segmentation of text, where a piece scores scores[piece] and a
    single character that is not a piece scores unknown_score."""
    n = len(text)
    longest = max(map(len, scores), default=1)
    best = [0.0] * (n + 1)     # best[end]: the best score of a segmentation of text[:end]
    back = [-1] * (n + 1)      # back[end]: where the last piece of that segmentation starts
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):
            score = scores.get(text[start:end])
            if score is None and end - start == 1:
                score = unknown_score  # a character that no piece covers
            if score is not None and (back[end] == -1 or best[start] + score > best[end]):
                best[end], back[end] = best[start] + score, start
    pieces, end = [], n
    while end > 0:  # follow the back-pointers from the end
        pieces.append(text[back[end]:end])
        end = back[end]
    return pieces[::-1]


def lattice_scores(vocab: Vocabulary) -> tuple[dict[str, float], float]:
    """(scores, unknown_score) for viterbi: the edges and costs that `segment` uses, in float64."""
    scores = {}
    for piece, i in vocab.normal.items():
        if vocab.types[i] == USER_DEFINED:
            scores[piece] = len(piece.encode("utf-8")) * vocab.max_score - 0.1
        elif vocab.types[i] != UNUSED:
            scores[piece] = vocab.scores[i]
    return scores, vocab.min_score - UNK_PENALTY


# ---- 2. the library's: trie-walked, float32 sums --------------------------------------------
def segment(s: str, vocab: Vocabulary) -> list[tuple[str, int]]:
    """(piece, id) of the best segmentation of s, as sentencepiece finds it.

    best[end] = max over pieces s[start:end] of best[start] + score(piece), every sum rounded
    to float32. (Sums past the float32 range become -inf or +inf; where several paths tie
    there, the library can break the tie differently.)
    """
    n = len(s)
    best_score = [0.0] * (n + 1)
    best_start = [-1] * (n + 1)
    best_id = [-1] * (n + 1)
    unk_score = round_float32(vocab.min_score - UNK_PENALTY)
    types, scores, root, max_score = vocab.types, vocab.scores, vocab.trie.root, vocab.max_score
    for start in range(n):
        base = best_score[start]
        has_single = False
        node, end = root, start
        while end < n:  # every piece that starts here (PieceTrie.matches, inlined)
            edge = node.get(s[end])
            if edge is None or not s.startswith(edge[0], end):
                break
            label, node, i = edge
            end += len(label)
            if i is None or types[i] == UNUSED:
                continue
            if types[i] == USER_DEFINED:  # a bonus so that user-defined pieces always win
                n_bytes = len(s[start:end].encode("utf-8"))
                candidate = round_float32(n_bytes * max_score) - 0.1 + base
            else:
                candidate = round_float32(scores[i] + base)
            if best_start[end] == -1 or candidate > best_score[end]:
                best_score[end], best_start[end], best_id[end] = round_float32(candidate), start, i
            if end == start + 1:
                has_single = True
        if not has_single:  # no piece covers this character: an unknown of score min - 10
            candidate = round_float32(unk_score + base)
            if best_start[start + 1] == -1 or candidate > best_score[start + 1]:
                best_score[start + 1], best_start[start + 1], best_id[start + 1] = candidate, start, vocab.unk_id
    out, end = [], n
    while end > 0:
        start = best_start[end]
        out.append((s[start:end], best_id[end]))
        end = start
    return out[::-1]
