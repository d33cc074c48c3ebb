"""Tokenizers, one idea per module: see tinytransformer.tokenizer for the overview.

This file holds the few pieces that every tokenizer class shares: reading an
untrusted file, cutting special tokens out of the text, and the bounded cache of
encoded pieces. (Files are written through tinytransformer._files.atomic_writer.)

    >>> list(split_special("hi<|im_end|>", special_tokens_regex(["<|im_end|>"])))
    [('hi', False), ('<|im_end|>', True)]
"""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from tinytransformer._files import open_regular_file

__all__ = ["read_untrusted", "read_json", "parse_json", "json_depth", "special_tokens_regex", "split_special",
           "PieceCache"]

# JSON nested deeper than this is refused before Python's recursion limit turns it into a RecursionError.
MAX_JSON_DEPTH = 200


def read_untrusted(file: Path, where: str, max_bytes: int, error=ValueError) -> bytes:
    """The bytes of a tokenizer file, once it is known to be a regular file of at most max_bytes.

    `where` names the file in messages ("SentencePiece model 'x.model'"); `error` is the
    format's exception class. A FIFO or a folder given as the path is refused, not waited on.
    """
    try:
        handle = open_regular_file(file, where)
    except ValueError as e:  # a FIFO, a folder, a device
        raise error(str(e)) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        data = b"" if size > max_bytes else handle.read(size + 1)  # read(n) allocates n bytes first
    if size > max_bytes or len(data) > size:  # too large, or growing while we read
        raise error(f"{where} is larger than {max_bytes} bytes")
    return data


def read_json(file: Path, where: str, max_bytes: int, error=ValueError):
    """A JSON tokenizer file, parsed; bad UTF-8, bad JSON or too deep nesting raises `error` naming the file."""
    try:
        text = read_untrusted(file, where, max_bytes, error).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where} is not valid UTF-8 JSON: {e}") from None
    return parse_json(text, where, error)


_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not count).

    The running count of open brackets, taken with NumPy a few megabytes at a time: linear
    time, bounded memory, no recursion.

    >>> json_depth('[{"a": "]]"}, 1]')
    2
    """
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text)).encode("ascii")
    depth = deepest = 0
    for start in range(0, len(brackets), 1 << 22):
        chunk = np.frombuffer(brackets, dtype=np.uint8, count=min(1 << 22, len(brackets) - start), offset=start)
        running = depth + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64)
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def parse_json(text: str, where: str, error=ValueError):
    """json.loads, but JSON nested more than MAX_JSON_DEPTH deep is a clear error, not a RecursionError."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise error(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where} is not valid UTF-8 JSON: {e}") from None


def special_tokens_regex(tokens) -> re.Pattern | None:
    """A regex that finds any of the special tokens; None when there are none.

    Alternatives are tried in order, so the longest token comes first: where two
    tokens start at the same place ("<s>" and "<s>x"), the longer one wins.
    """
    tokens = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


def split_special(text: str, regex: re.Pattern | None):
    """Yield (segment, is_special) in order: the special tokens and the text between them.

    >>> list(split_special("a<s>b", special_tokens_regex(["<s>"])))
    [('a', False), ('<s>', True), ('b', False)]
    """
    if regex is None:
        if text:
            yield text, False
        return
    last = 0
    for match in regex.finditer(text):
        if match.start() > last:
            yield text[last:match.start()], False
        yield match.group(), True
        last = match.end()
    if last < len(text):
        yield text[last:], False


_getsizeof = sys.getsizeof


class PieceCache:
    """The ids of pieces already encoded, bounded by the memory they take.

    Natural text repeats the same few thousand words, so after pre-tokenization
    most pieces are one dictionary lookup (`cache.get(piece)`). Text from outside
    need not repeat, so the cache is bounded by size, not by count: each entry is
    charged what it holds in memory (the key, the list of ids, its slot in the
    dictionary), pieces longer than max_piece_chars are not kept (they rarely
    repeat), and an entry that would take the total past max_bytes empties the
    cache first. Every tokenizer class that caches uses this one policy.

    >>> cache = PieceCache(max_bytes=1000)
    >>> cache.put("hello", [1, 2])
    >>> cache.get("hello"), cache.get("world")
    ([1, 2], None)
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
