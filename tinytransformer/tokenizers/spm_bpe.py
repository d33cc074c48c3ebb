"""SentencePiece BPE: join the adjacent pair whose joined piece scores highest, until none is left.

SentencePiece's BPE model has no merge list: a merge is allowed when the joined string is
itself a piece of the vocabulary, and the pieces' scores give the order (the trainer
scores the piece of merge t as -t, so the highest score is the earliest merge):

    repeat:  (a, b) = argmax over adjacent symbols with a + b in the vocabulary of score(a + b)
             (ties: leftmost);  replace a, b by a + b

Symbols start as single characters, except that a user-defined piece is one symbol from
the start and never joins with its neighbours. A heap of candidate pairs keyed by
(-score, position) makes each step a pop instead of a scan; an entry whose symbols have
changed since it was pushed is stale and skipped. An UNUSED piece may be formed but is
not output: it is spelled as the two pieces it was made from, recursively (a stack,
MAX_RESEGMENT_DEPTH levels deep, as the library).

    >>> from tinytransformer.tokenizers.spm_model_file import NORMAL, UNKNOWN, Vocabulary, BPE
    >>> vocab = Vocabulary([("<unk>", 0.0, UNKNOWN), ("a", 0.0, NORMAL), ("b", 0.0, NORMAL),
    ...                     ("ab", -1.0, NORMAL), ("ba", -2.0, NORMAL), ("aba", -3.0, NORMAL)], BPE, False, "example")
    >>> segment("abab", vocab)              # ab|ab (score -1) before b|a (-2); ab + ab is not a piece
    [('ab', 3), ('ab', 3)]

Does not handle: BPE dropout (sampling), training.
"""
from __future__ import annotations

import heapq

from tinytransformer.tokenizers.spm_model_file import UNUSED, Vocabulary

__all__ = ["segment", "MAX_RESEGMENT_DEPTH"]

# An UNUSED piece reached after this many splits is kept whole, as sentencepiece 0.2.3 does (measured).
MAX_RESEGMENT_DEPTH = 101


def segment(s: str, vocab: Vocabulary) -> list[tuple[str, int]]:
    """Join the adjacent pair whose joined piece scores highest (ties: leftmost) until none is left."""
    symbols, pos = [], 0  # initial symbols: characters, or whole user-defined pieces (frozen)
    frozen = []
    while pos < len(s):
        length = vocab.user_trie.longest(s, pos)
        symbols.append(s[pos:pos + length] if length else s[pos])
        frozen.append(length > 0)
        pos += len(symbols[-1])
    n = len(symbols)
    nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
    if n:
        nxt[-1] = -1
    normal, scores, types = vocab.normal, vocab.scores, vocab.types
    heap, unused_parts = [], {}

    def push(left, right):
        if left == -1 or right == -1 or frozen[left] or frozen[right]:
            return
        joined = symbols[left] + symbols[right]
        i = normal.get(joined)
        if i is None:
            return
        heapq.heappush(heap, (-scores[i], left, right, len(joined)))
        if types[i] == UNUSED:
            unused_parts[joined] = (symbols[left], symbols[right])

    for k in range(1, n):
        push(k - 1, k)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != size:
            continue  # stale: one side was merged into something else
        if nxt[left] != right:
            continue
        symbols[left] += symbols[right]
        symbols[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] != -1:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])

    out = []
    k = 0 if n else -1
    while k != -1:
        stack = [(symbols[k], 0)]  # an UNUSED piece is spelled as the two pieces it was made from
        while stack:  # (a stack, not recursion: a chain of UNUSED pieces can be long)
            piece, depth = stack.pop()
            i = vocab.piece_to_id(piece)
            if types[i] == UNUSED and piece in unused_parts and depth < MAX_RESEGMENT_DEPTH:
                left, right = unused_parts[piece]
                stack += [(right, depth + 1), (left, depth + 1)]
            else:
                out.append((piece, i))
        k = nxt[k]
    return out
