"""The cache of encoded pieces: one dictionary lookup per repeated word, bounded by memory.

After pre-tokenization, natural text is the same few thousand pieces over and over
("the", " of", ...), so a tokenizer that remembers the ids of each piece it has encoded
turns most of its work into `cache.get(piece)`. Text from outside need not repeat, so
the bound is on the memory the entries take, not on their count:

    cost(entry) = sys.getsizeof(piece) + sys.getsizeof(ids) + ENTRY_OVERHEAD

An entry that would take the total past max_bytes empties the cache first; pieces
longer than max_piece_chars are never kept (they rarely repeat). Every tokenizer class
that caches uses this one policy.

    >>> cache = PieceCache(max_bytes=1000)
    >>> cache.put("hello", [1, 2])
    >>> cache.get("hello"), cache.get("world")
    ([1, 2], None)

Does not handle: least-recently-used eviction (emptying is simpler and, for text that
repeats, refills at once), sharing one cache between threads that write to it.
"""
from __future__ import annotations

import sys

__all__ = ["PieceCache"]

_getsizeof = sys.getsizeof


class PieceCache:
    """The ids of pieces already encoded, bounded by the memory they take (see the module docstring).

    >>> cache = PieceCache(max_bytes=1000, max_piece_chars=3)
    >>> cache.put("long", [7])                # longer than max_piece_chars: not kept
    >>> len(cache)
    0
    """

    ENTRY_OVERHEAD = 104  # a dictionary slot with its share of the hash table, in bytes (CPython 3.11, 64-bit)

    def __init__(self, max_bytes: int = 32 * 2**20, max_piece_chars: int = 256):
        self.max_bytes = max_bytes
        self.max_piece_chars = max_piece_chars
        self.nbytes = 0
        self._entries: dict[str, list[int]] = {}
        self.get = self._entries.get  # a hit costs one dictionary lookup, no method call of ours

    def put(self, piece: str, ids: list[int]) -> None:
        if len(piece) > self.max_piece_chars:
            return
        cost = _getsizeof(piece) + _getsizeof(ids) + self.ENTRY_OVERHEAD
        if self.nbytes + cost > self.max_bytes:
            self._entries.clear()
            self.nbytes = 0
        if cost <= self.max_bytes:
            self._entries[piece] = ids
            self.nbytes += cost

    def __len__(self) -> int:
        return len(self._entries)
