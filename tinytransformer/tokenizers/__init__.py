"""Tokenizers, one idea per module: see tinytransformer.tokenizer for the overview.

This file holds the few pieces that every tokenizer class shares: reading an
untrusted file, writing one safely, cutting special tokens out of the text, and
the bounded cache of encoded pieces.
"""

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["read_untrusted", "read_json", "parse_json", "json_depth", "write_atomic", "special_tokens_regex", "split_special", "PieceCache"]

# JSON nested deeper than this is refused before Python's recursion limit turns it into a RecursionError.
MAX_JSON_DEPTH = 200


def read_untrusted(file: Path, where: str, max_bytes: int, error=ValueError) -> bytes:
    """The bytes of a tokenizer file, once it is known to exist and to hold at most max_bytes.

    `where` names the file in messages ("SentencePiece model 'x.model'"); `error` is the
    format's exception class.
    """
    if not file.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if file.stat().st_size > max_bytes:
        raise error(f"{where} is larger than {max_bytes} bytes")
    return file.read_bytes()


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


def write_atomic(path: str | os.PathLike, data: bytes, where: str) -> None:
    """Write data to path through a temporary file in the same folder, renamed into place.

    A reader never sees a half-written file, and when anything fails the file that was
    there before is left as it was.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: folder {str(folder)!r} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"{where}: {str(target)!r} is a folder")
    if target.exists():
        mode = target.stat().st_mode & 0o777  # keep the permissions of the file it replaces
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # what open() would have given a new file
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


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
