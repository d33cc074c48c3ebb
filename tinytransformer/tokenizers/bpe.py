"""Byte-pair encoding (BPE), trained from scratch on bytes.

Start from the 256 byte values, so that any UTF-8 text is representable and no
token is ever unknown. Training repeatedly finds the most frequent adjacent pair
of tokens and gives it the next id; the ordered list of merges *is* the
tokenizer. Encoding replays the merges: among the adjacent pairs of a sequence,
join the one learned first, until no learned pair is left. Sennrich, Haddow &
Birch (2016), "Neural Machine Translation of Rare Words with Subword Units";
byte-level BPE with a regex pre-tokenizer is GPT-2 (Radford et al. 2019).

    merge t:  (a, b) = argmax_{(x, y)} count(x, y)   (ties: the smallest pair),   new id 256 + t

    >>> merges = train("aaabdaaabac", 3)
    >>> merges                                  # "aa" -> 256, "ab" -> 257, "aa"+"ab" -> 258
    [(97, 97), (97, 98), (256, 257)]
    >>> encode("aaabdaaabac", merges)
    [258, 100, 258, 97, 99]

In order: the reference (`get_stats`, `merge`, `train`, `encode`: minbpe's loop);
the fast versions, tested equal to it (`train_incremental`, `apply_merges`); then
`BPETokenizer` (pre-tokenization, special tokens, a cache, files).

Does not handle: training on more text than fits in memory, frequency
thresholds, dropout, or vocabularies over a few hundred thousand tokens.
"""
from __future__ import annotations

import heapq
import json
import math
import os
from collections import Counter
from pathlib import Path

from tinytransformer._files import atomic_writer
from tinytransformer._validate import is_integer
from tinytransformer.tokenizers.piece_cache import PieceCache
from tinytransformer.tokenizers.special_tokens import special_tokens_regex, split_special
from tinytransformer.tokenizers.untrusted_files import read_json
from tinytransformer.tokenizers.unicode_regex import compile_pattern

__all__ = ["get_stats", "merge", "pretokenize", "train", "encode", "train_incremental", "apply_merges",
           "BPETokenizer"]

FORMAT_NAME = "tinytransformer-bpe"
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_VOCAB_SIZE = 1 << 20


# ---- 1. the reference: count, merge, repeat -------------------------------------------------
def get_stats(ids: list[int], counts: dict | None = None) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in ids (added into `counts` when it is given).

    >>> get_stats([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """ids with every occurrence of pair, left to right, replaced by new_id ("aaa" -> "(aa) a").

    >>> merge([1, 2, 3, 1, 2], (1, 2), 4)
    [4, 3, 4]
    """
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def pretokenize(text: str, pattern: str | None) -> list[str]:
    """The pieces that merges stay inside: the regex's matches, or the whole text without a pattern."""
    return compile_pattern(pattern).findall(text) if pattern is not None else [text]


def train(text: str, n_merges: int, pattern: str | None = None) -> list[tuple[int, int]]:
    """The reference trainer: up to n_merges merges, fewer when the text runs out of pairs.

    Every round counts all pairs again, so it costs O(len(text)) per merge.
    """
    chunks = [list(piece.encode("utf-8")) for piece in pretokenize(text, pattern)]
    merges: list[tuple[int, int]] = []
    for t in range(n_merges):
        counts: dict = {}
        for ids in chunks:
            get_stats(ids, counts)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))  # the most frequent; ties: the smallest pair
        chunks = [merge(ids, pair, 256 + t) for ids in chunks]
        merges.append(pair)
    return merges


def encode(text: str, merges: list[tuple[int, int]], pattern: str | None = None) -> list[int]:
    """The reference encoder: in each piece, join the pair learned first until no learned pair is left."""
    rank = {pair: t for t, pair in enumerate(merges)}
    out: list[int] = []
    for piece in pretokenize(text, pattern):
        ids = list(piece.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(get_stats(ids), key=lambda p: rank.get(p, math.inf))
            if pair not in rank:
                break
            ids = merge(ids, pair, 256 + rank[pair])
        out.extend(ids)
    return out


# ---- 2. the incremental trainer -------------------------------------------------------------
class _PairIndex:
    """All pieces laid end to end as one linked list, with the count and positions of every pair.

    Merging (a, b) at a position changes only its neighbours' pairs: with x before and
    y after, count(x, a), count(a, b) and count(b, y) drop by the piece's weight and
    count(x, ab), count(ab, y) rise by it. So a merge costs time proportional to how
    often its pair occurs, not to the size of the text. A heap of (-count, pair), with
    entries that went stale skipped when they surface, gives the next pair.
    """

    def __init__(self, words: list[bytes], weights: list[int]):
        token, weight, nxt, prv = [], [], [], []
        for word, count in zip(words, weights):
            start = len(token)
            token.extend(word)
            weight.extend([count] * len(word))
            nxt.extend(range(start + 1, start + len(word) + 1))
            prv.extend(range(start - 1, start + len(word) - 1))
            nxt[-1] = -1
            prv[start] = -1
        self.token, self.weight, self.nxt, self.prv = token, weight, nxt, prv
        self.count: Counter = Counter()
        self.where: dict[tuple[int, int], set[int]] = {}
        for i, j in enumerate(nxt):
            if j != -1:
                pair = (token[i], token[j])
                self.count[pair] += weight[i]
                self.where.setdefault(pair, set()).add(i)
        self.heap = [(-c, pair) for pair, c in self.count.items()]
        heapq.heapify(self.heap)

    def _remove(self, pair, i, changed):
        self.count[pair] -= self.weight[i]
        self.where[pair].discard(i)
        changed.add(pair)

    def _add(self, pair, i, changed):
        self.count[pair] += self.weight[i]
        self.where.setdefault(pair, set()).add(i)
        changed.add(pair)

    def best_pair(self):
        """The most frequent pair (ties: smallest pair), or None when no pair is left."""
        while self.heap:
            negative_count, pair = self.heap[0]
            if self.count.get(pair, 0) == -negative_count and negative_count < 0:
                return pair
            heapq.heappop(self.heap)  # stale entry: the count changed after it was pushed
        return None

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        a, b = pair
        token, nxt, prv = self.token, self.nxt, self.prv
        changed: set = set()
        for i in sorted(self.where.get(pair, ())):  # left to right, so "aaa" -> "(aa) a"
            j = nxt[i]
            if token[i] != a or j == -1 or token[j] != b:
                continue  # consumed by the previous merge of an overlapping run
            p, k = prv[i], nxt[j]  # ... x a b y ...  with x at p, a at i, b at j, y at k
            if p != -1:
                self._remove((token[p], a), p, changed)  # count(x, a) -= w
            if k != -1:
                self._remove((b, token[k]), j, changed)  # count(b, y) -= w
            self._remove(pair, i, changed)  # count(a, b) -= w
            token[i], token[j] = new_id, -1  # ... x ab y ...: position j is gone
            nxt[i] = k
            if k != -1:
                prv[k] = i
                self._add((new_id, token[k]), i, changed)  # count(ab, y) += w
            if p != -1:
                self._add((token[p], new_id), p, changed)  # count(x, ab) += w
        for changed_pair in changed:
            c = self.count[changed_pair]
            if c > 0:
                heapq.heappush(self.heap, (-c, changed_pair))
            else:
                del self.count[changed_pair]
                self.where.pop(changed_pair, None)


def train_incremental(pieces: Counter, n_merges: int) -> list[tuple[int, int]]:
    """The merges that `train` learns, from {piece as UTF-8 bytes: how often it occurs}.

    Equal to train(text, n_merges, pattern) when pieces counts pretokenize(text, pattern);
    a piece that occurs w times is stored once, with weight w.
    """
    index = _PairIndex(list(pieces), list(pieces.values()))
    merges: list[tuple[int, int]] = []
    for t in range(n_merges):
        pair = index.best_pair()
        if pair is None:
            break
        index.merge(pair, 256 + t)
        merges.append(pair)
    return merges


# ---- 3. the fast encoder ---------------------------------------------------------------------
def apply_merges(ids: list[int], ranks: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """What `encode` does to one piece's ids: repeatedly join the adjacent pair of lowest rank.

    ranks maps a pair (a, b) to (rank, new_id). Equal ranks join left to right. A heap of
    (rank, position), with entries that went stale skipped, makes this O(n log n) where
    the reference loop is O(n^2).
    """
    n = len(ids)
    if n < 2:
        return list(ids)
    token = list(ids)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        rank = ranks.get((token[i], token[i + 1]))
        if rank is not None:
            heap.append((rank[0], i, token[i], token[i + 1]))
    heapq.heapify(heap)
    while heap:
        rank, i, a, b = heapq.heappop(heap)
        j = nxt[i]
        if token[i] != a or j == -1 or token[j] != b:
            continue  # stale: i was merged away or its neighbour changed since the push
        token[i] = ranks[(a, b)][1]
        token[j] = -1
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prv[k] = i
            right = ranks.get((token[i], token[k]))
            if right is not None:
                heapq.heappush(heap, (right[0], i, token[i], token[k]))
        p = prv[i]
        if p != -1:
            left = ranks.get((token[p], token[i]))
            if left is not None:
                heapq.heappush(heap, (left[0], p, token[p], token[i]))
    out, i = [], 0
    while i != -1:
        out.append(token[i])
        i = nxt[i]
    return out


# ---- 4. the tokenizer ------------------------------------------------------------------------
def _check_special_tokens(special_tokens) -> list[str]:
    if special_tokens is None:
        return []
    if isinstance(special_tokens, str) or not all(isinstance(s, str) and s for s in special_tokens):
        raise TypeError(f"special_tokens must be a list of non-empty str, got {special_tokens!r}")
    special = list(special_tokens)
    if len(set(special)) != len(special):
        raise ValueError(f"special_tokens has duplicates: {special!r}")
    return special


class BPETokenizer:
    """A byte-level BPE tokenizer: 256 byte tokens, then merges, then special tokens.

    Special tokens are cut out of the text before training and before encoding, and
    get the last ids. With a `pattern` (e.g. GPT2_PATTERN) the rest is cut into pieces
    that merges never cross. Decoding joins the tokens' bytes and decodes them as UTF-8
    with errors="replace": one U+FFFD per maximal invalid subsequence, as the Hugging
    Face byte-level decoder does.
    """

    def __init__(self, merges, *, pattern: str | None = None, special_tokens: dict[str, int] | None = None):
        merges = [tuple(m) for m in merges]
        for t, (a, b) in enumerate(merges):
            new_id = 256 + t
            if not (is_integer(a) and is_integer(b) and 0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {t} is ({a!r}, {b!r}) but its parts must be ids below {new_id}")
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]  # NumPy ints become ints
        self.ranks = {pair: (t, 256 + t) for t, pair in enumerate(self.merges)}
        if len(self.ranks) != len(merges):
            raise ValueError("merges contain the same pair twice")
        self.pattern = pattern
        self._regex = compile_pattern(pattern) if pattern is not None else None
        self.special_tokens = dict(special_tokens or {})
        n_base = 256 + len(merges)
        if sorted(self.special_tokens.values()) != list(range(n_base, n_base + len(self.special_tokens))):
            raise ValueError(f"special token ids must be {n_base}..{n_base + len(self.special_tokens) - 1}, "
                             f"got {sorted(self.special_tokens.values())}")
        self._special_regex = special_tokens_regex(self.special_tokens)
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        # The bytes each id stands for: bytes for 0..255, then concatenations.
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]
        for a, b in merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._cache = PieceCache()

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special_tokens)

    # ---- training ----------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, *, pattern: str | None = None,
              special_tokens: list[str] | None = None) -> "BPETokenizer":
        """Learn vocab_size - 256 - len(special_tokens) merges from text (train_incremental).

        Raises ValueError when the text runs out of pairs before that many merges.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        special = _check_special_tokens(special_tokens)
        if not is_integer(vocab_size):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        n_merges = vocab_size - 256 - len(special)
        if n_merges < 0 or vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be between {256 + len(special)} (256 bytes + "
                             f"{len(special)} special tokens) and {MAX_VOCAB_SIZE}, got {vocab_size}")
        pieces: Counter = Counter()
        for segment, is_special in split_special(text, special_tokens_regex(special)):
            if not is_special:
                pieces.update(piece.encode("utf-8") for piece in pretokenize(segment, pattern) if piece)
        merges = train_incremental(pieces, n_merges)
        if len(merges) < n_merges:
            t = len(merges)
            raise ValueError(f"the text supports only {t} merges (vocab_size {256 + t + len(special)}), "
                             f"not the {n_merges} that vocab_size={vocab_size} needs; "
                             "give more text or a smaller vocab_size")
        n_base = 256 + len(merges)
        return cls(merges, pattern=pattern, special_tokens={s: n_base + i for i, s in enumerate(special)})

    # ---- encoding and decoding ---------------------------------------------------------
    def _encode_piece(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            ids = apply_merges(list(piece.encode("utf-8")), self.ranks)
            self._cache.put(piece, ids)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of text: special tokens by exact match, the rest by replaying merges."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for segment, special in split_special(text, self._special_regex):
            if special:
                ids.append(self.special_tokens[segment])
            elif self._regex is None:
                ids.extend(apply_merges(list(segment.encode("utf-8")), self.ranks))
            else:
                for piece in self._regex.findall(segment):
                    ids.extend(self._encode_piece(piece))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """The bytes that ids stand for (special tokens as their UTF-8 text)."""
        out = []
        n_base = 256 + len(self.merges)
        for position, i in enumerate(ids):
            if not is_integer(i):
                raise TypeError(f"ids[{position}] must be an int, got {type(i).__name__}")
            i = int(i)
            if 0 <= i < n_base:
                out.append(self.vocab[i])
            elif i in self._special_by_id:
                out.append(self._special_by_id[i].encode("utf-8"))
            else:
                raise ValueError(f"ids[{position}] = {i} is out of range; vocab_size is {self.vocab_size}")
        return b"".join(out)

    def decode(self, ids) -> str:
        """Text of ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- files ---------------------------------------------------------------------------
    # JSON, no pickle: {"format": "tinytransformer-bpe", "version": 1, "pattern": str or null,
    #                   "merges": [[a, b], ...] (merge t creates id 256 + t),
    #                   "special_tokens": {"<|endoftext|>": id, ...}}
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON; the file is replaced whole or, on any error, left as it was."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        where = f"tokenizer file {os.fspath(path)!r}"
        data = {"format": FORMAT_NAME, "version": 1, "pattern": self.pattern,
                "merges": [list(m) for m in self.merges], "special_tokens": self.special_tokens}
        try:
            encoded = (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"{where}: cannot be written as UTF-8 ({error.reason} in "
                             f"{error.object[max(error.start - 20, 0):error.end + 20]!r})") from None
        with atomic_writer(path, where) as handle:
            handle.write(encoded)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        file = Path(path)
        data = read_json(file, f"tokenizer file {str(file)!r}", MAX_FILE_BYTES)
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME or data.get("version") != 1:
            raise ValueError(f"tokenizer file {str(file)!r} is not a {FORMAT_NAME} version 1 file")
        merges, pattern, special = data.get("merges"), data.get("pattern"), data.get("special_tokens", {})
        if not isinstance(merges, list) or not all(isinstance(m, list) and len(m) == 2 for m in merges):
            raise ValueError(f"tokenizer file {str(file)!r}: 'merges' must be a list of [a, b] pairs")
        if len(merges) > MAX_VOCAB_SIZE:
            raise ValueError(f"tokenizer file {str(file)!r}: {len(merges)} merges is more than {MAX_VOCAB_SIZE}")
        if pattern is not None and not isinstance(pattern, str):
            raise ValueError(f"tokenizer file {str(file)!r}: 'pattern' must be a string or null")
        if not isinstance(special, dict) or not all(isinstance(k, str) and k and is_integer(v)
                                                    for k, v in special.items()):
            raise ValueError(f"tokenizer file {str(file)!r}: 'special_tokens' must map strings to ids")
        try:
            return cls(merges, pattern=pattern, special_tokens=special)
        except (TypeError, ValueError) as error:
            raise ValueError(f"tokenizer file {str(file)!r}: {error}") from None

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, pattern={'None' if self.pattern is None else 'set'}, "
                f"special_tokens={list(self.special_tokens)})")
