"""The pieces a text starts with at a position: a compressed trie (common-prefix search).

Both SentencePiece models ask one question over and over: which vocabulary pieces
does the text start with at position i? The library answers it with a Darts
double-array trie; this is a plainer compressed trie (a radix tree). Every edge
carries a whole string, its label, so a chain of characters that no other piece
branches from is one edge, and memory is linear in the total length of the pieces.
Walking from a position follows one edge per node and compares its label with
str.startswith, so a long piece costs one comparison in C, not one slice per length.
It works on str pieces and text, or on bytes pieces and data (the normalizer's
user-defined symbols).

    >>> trie = PieceTrie({"a": 0, "ab": 1, "abcd": 2, "b": 3})
    >>> list(trie.matches("xabcde", 1))      # (end, value) of every piece at position 1, shortest first
    [(2, 0), (3, 1), (5, 2)]
    >>> trie.longest("xabcde", 1)
    4

Does not handle: deleting pieces, or adding them once the trie is built.
"""
from __future__ import annotations

__all__ = ["PieceTrie"]


class PieceTrie:
    """The pieces (dict keys; their values are returned) as a compressed trie."""

    def __init__(self, pieces: dict):
        if not all(pieces):
            raise ValueError("PieceTrie: every piece must be non-empty")
        self.root: dict = {}  # first character -> (label, child node, value or None where no piece ends)
        stack = [(self.root, sorted(pieces.items()), 0)]  # (node, pieces below it, characters consumed)
        while stack:
            node, items, depth = stack.pop()
            lo = 0
            while lo < len(items):  # one group per next character; sorted, so each group is a run
                key = items[lo][0][depth]
                hi = lo + 1
                while hi < len(items) and items[hi][0][depth] == key:
                    hi += 1
                first, last = items[lo][0], items[hi - 1][0]
                cut = len(first) if hi - lo == 1 else depth + _common_prefix_length(first, last, depth)
                value = items[lo][1] if len(first) == cut else None  # a piece that ends here sorts first
                child: dict = {}
                node[key] = (first[depth:cut], child, value)
                rest = items[lo + (value is not None):hi]
                if rest:
                    stack.append((child, rest, cut))
                lo = hi

    def matches(self, text, pos: int):
        """(end, value) for every piece that text[pos:] starts with, shortest first."""
        node, n = self.root, len(text)
        while pos < n:
            edge = node.get(text[pos])
            if edge is None or not text.startswith(edge[0], pos):
                return
            label, node, value = edge
            pos += len(label)
            if value is not None:
                yield pos, value

    def longest(self, text, pos: int) -> int:
        """The length of the longest piece that text[pos:] starts with (0 when there is none)."""
        end = pos
        for end, _ in self.matches(text, pos):
            pass
        return end - pos


def _common_prefix_length(a, b, start: int) -> int:
    """How many items a and b share from position start on."""
    n = 0
    for x, y in zip(a[start:], b[start:]):
        if x != y:
            break
        n += 1
    return n
