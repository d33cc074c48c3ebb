"""SentencePiece: read a .model file and encode and decode exactly as the library does.

SentencePiece (Kudo & Richardson 2018) treats text as a plain sequence of
Unicode characters, spaces included. A normalizer first rewrites the text (NFKC
by default), marks every space with "▁" (U+2581) and puts a "dummy prefix" "▁"
in front, so "Hello world" becomes "▁Hello▁world". Then one of two models cuts
it into pieces from the vocabulary. BPE starts from single characters and
repeatedly joins the adjacent pair whose joined piece has the highest score
(ties: leftmost). Unigram (Kudo 2018) gives each piece x a log-probability
score s(x) and takes the best segmentation, found by Viterbi:

    x_1..x_k = argmax_{x_1 ... x_k = text}  sum_i s(x_i)     (a character no piece covers: min_x s(x) - 10)

A character that is not in the vocabulary is <unk>; with byte fallback it is
spelled as its UTF-8 bytes instead, pieces <0x00>..<0xFF>. Decoding joins the
pieces, turns "▁" back into spaces and drops the leading dummy space.

    >>> Normalizer(b"").normalize("  Hello   world ")      # no charsmap rules: only the whitespace ones
    '▁Hello▁world'
    >>> sp = SentencePieceTokenizer("m.model")             # doctest: +SKIP
    >>> sp.encode_as_pieces("Hello")                       # doctest: +SKIP
    ['▁He', 'llo']

Does not handle: the WORD and CHAR model types, sampling / n-best encodings,
the `pretokenization_delimiter` training option, offsets.
"""
from __future__ import annotations

import heapq
import math
import os
import re
import struct
from pathlib import Path

from tinytransformer.tokenizers import protobuf as pb
from tinytransformer.tokenizers import read_untrusted

__all__ = ["SentencePieceTokenizer", "SentencePieceError", "Normalizer", "PieceTrie"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
SPACE = "\u2581"
UNK_PENALTY = 10.0
# An UNUSED piece reached after this many splits is kept whole, as sentencepiece 0.2.3 does (measured).
MAX_RESEGMENT_DEPTH = 101
FLT_MIN = 1.1754943508222875e-38  # the library starts max_score at FLT_MIN, not at -inf
MAX_FILE_BYTES = 256 * 1024 * 1024


class SentencePieceError(ValueError):
    """A .model file that cannot be read or is not a valid SentencePiece model."""


_FLOAT32 = struct.Struct("<f")


def _f32(x: float, _pack=_FLOAT32.pack, _unpack=_FLOAT32.unpack) -> float:
    """Round a Python float to the nearest float32 (what `float` arithmetic in C++ keeps).

    Past the float32 range the result is +-inf, as in C++ (struct raises OverflowError instead).
    """
    try:
        return _unpack(_pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


class PieceTrie:
    """The pieces that a text starts with at a given position: a common-prefix search, as the
    library does with its Darts trie.

    A compressed trie: every edge carries a whole string (its label), so a chain of
    characters that no other piece branches from is one edge, and memory is linear in the
    total length of the pieces. Walking from a position follows one edge per node and
    compares its label with str.startswith, so a long piece costs one comparison in C, not
    one slice per length. Works on str pieces and text, or on bytes pieces and data.

    >>> trie = PieceTrie({"a": 0, "ab": 1, "abcd": 2, "b": 3})
    >>> list(trie.matches("xabcde", 1))      # (end, value) of every piece at position 1, shortest first
    [(2, 0), (3, 1), (5, 2)]
    >>> trie.longest("xabcde", 1)
    4
    """

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


def _utf8_char_length(data: bytes, pos: int) -> int:
    """Length of the valid UTF-8 character at data[pos], or 0 if it is not one (sentencepiece rules)."""
    lead = data[pos]
    if lead < 0x80:
        return 1
    n = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 0
    if n == 0 or pos + n > len(data):
        return 0
    try:
        data[pos:pos + n].decode("utf-8")  # rejects overlongs, surrogates, > U+10FFFF
    except UnicodeDecodeError:
        return 0
    return n


def decode_bytes_like_sentencepiece(data: bytes) -> str:
    """UTF-8 decode where each byte that does not start a valid character becomes one U+FFFD."""
    out, pos = [], 0
    while pos < len(data):
        n = _utf8_char_length(data, pos)
        if n == 0:
            out.append("\ufffd")
            pos += 1
        else:
            out.append(data[pos:pos + n].decode("utf-8"))
            pos += n
    return "".join(out)


class Normalizer:
    """The normalizer of a NormalizerSpec: charsmap rules, whitespace handling, "▁" escaping.

    The rules live in the model file as a "precompiled charsmap": a Darts double-array
    trie over UTF-8 bytes whose leaves point into a blob of replacement strings; at each
    position the longest matching rule wins. User-defined pieces pass through unchanged.
    """

    def __init__(self, charsmap: bytes, *, add_dummy_prefix=True, remove_extra_whitespaces=True,
                 escape_whitespaces=True, treat_whitespace_as_suffix=False, user_defined=(), where="model"):
        self.add_dummy_prefix = add_dummy_prefix
        self.remove_extra_whitespaces = remove_extra_whitespaces
        self.escape_whitespaces = escape_whitespaces
        self.treat_whitespace_as_suffix = treat_whitespace_as_suffix
        self.where = where
        self.user_defined = PieceTrie({s.encode("utf-8"): True for s in user_defined})
        self.units: list[int] = []
        self.replacements = b""
        if charsmap:
            if len(charsmap) <= 4:
                raise SentencePieceError(f"{where}: precompiled_charsmap of {len(charsmap)} bytes is too short")
            trie_size = int.from_bytes(charsmap[:4], "little")
            if trie_size >= len(charsmap) - 4 + 1 or trie_size % 4:
                raise SentencePieceError(f"{where}: precompiled_charsmap claims a {trie_size}-byte trie "
                                         f"but has {len(charsmap) - 4} bytes")
            self.units = list(struct.unpack(f"<{trie_size // 4}I", charsmap[4:4 + trie_size]))
            self.replacements = charsmap[4 + trie_size:]
        # A speed-up, not a rule: ASCII bytes that start no rule together with another ASCII byte
        # are copied in runs (the run's last byte still goes through normalize_prefix, since a
        # combining mark after it could start a rule). Space is never in a run: it is special.
        safe = [b for b in range(0x21, 0x80) if self._ascii_safe(b)]
        self._safe_run = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in safe) + b"]+") if safe else None

    def _ascii_safe(self, b: int) -> bool:
        """True when no rule or user-defined symbol starts with b followed by an ASCII byte (or nothing)."""
        if b in self.user_defined.root:  # a user-defined symbol starts with b
            return False
        units = self.units
        if not units:
            return True
        root = (units[0] >> 10) << ((units[0] & (1 << 9)) >> 6)
        node = root ^ b
        if node >= len(units) or units[node] & ((1 << 31) | 0xFF) != b:
            return True  # no rule starts with b
        unit = units[node]
        if (unit >> 8) & 1:
            return False  # a rule for b alone
        child_base = (unit >> 10) << ((unit & (1 << 9)) >> 6)
        return not any(child_base ^ c < len(units) and units[child_base ^ c] & ((1 << 31) | 0xFF) == c
                       for c in range(1, 0x80))

    def _longest_rule(self, data: bytes, pos: int) -> tuple[int, int]:
        """(length, value) of the longest charsmap key that prefixes data[pos:] (Darts common-prefix search)."""
        units, best_length, best_value = self.units, 0, 0
        if not units:
            return 0, 0
        unit = units[0]
        node = (unit >> 10) << ((unit & (1 << 9)) >> 6)  # offset of the root
        for i in range(pos, len(data)):
            node ^= data[i]
            if node >= len(units):
                break
            unit = units[node]
            if unit & ((1 << 31) | 0xFF) != data[i]:  # label check
                break
            node ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
            if (unit >> 8) & 1 and node < len(units):  # has a leaf: a rule ends here
                best_length, best_value = i + 1 - pos, units[node] & ((1 << 31) - 1)
        return best_length, best_value

    def normalize_prefix(self, data: bytes, pos: int) -> tuple[bytes, int]:
        """(replacement, bytes consumed) for the text at data[pos:]."""
        length = self.user_defined.longest(data, pos)
        if length:
            return data[pos:pos + length], length  # user-defined symbols pass through unchanged
        length, value = self._longest_rule(data, pos)
        if length == 0:
            n = _utf8_char_length(data, pos)
            return (data[pos:pos + n], n) if n else ("\ufffd".encode("utf-8"), 1)
        end = self.replacements.find(b"\0", value)
        if value >= len(self.replacements):
            raise SentencePieceError(f"normalization rule points at byte {value} outside the charsmap")
        return self.replacements[value:end if end != -1 else len(self.replacements)], length

    def normalize(self, text: str) -> str:
        data = text.encode("utf-8", errors="surrogatepass")
        space = SPACE.encode("utf-8") if self.escape_whitespaces else b" "
        out = bytearray()
        pos = 0
        if self.remove_extra_whitespaces:  # drop leading spaces
            while pos < len(data):
                piece, consumed = self.normalize_prefix(data, pos)
                if piece != b" ":
                    break
                pos += consumed
        if pos >= len(data):
            return ""
        if self.add_dummy_prefix and not self.treat_whitespace_as_suffix:
            out += space
        is_prev_space = self.remove_extra_whitespaces
        safe_run = self._safe_run
        while pos < len(data):
            run = safe_run.match(data, pos) if safe_run is not None else None
            if run is not None and run.end() - pos > 1:
                end = run.end() if run.end() == len(data) else run.end() - 1
                out += data[pos:end]  # no space, no rule inside: copied as it is
                is_prev_space = False
                pos = end
                continue
            piece, consumed = self.normalize_prefix(data, pos)
            if is_prev_space:
                piece = piece.lstrip(b" ")
            if piece:
                out += piece.replace(b" ", space) if self.escape_whitespaces else piece
                is_prev_space = piece.endswith(b" ")
            pos += consumed
            if not self.remove_extra_whitespaces:
                is_prev_space = False
        if self.remove_extra_whitespaces:  # drop trailing spaces
            while out.endswith(space):
                del out[len(out) - len(space):]
        if self.add_dummy_prefix and self.treat_whitespace_as_suffix:
            out += space
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise SentencePieceError(f"{self.where}: the normalization rules produced invalid UTF-8 "
                                     "(corrupt precompiled_charsmap?)") from None


def _parse_model(data: bytes, where: str) -> dict:
    top = pb.parse_message(data, where)
    unknown = set(top) - {1, 2, 3, 4, 5}
    if not top.get(1):
        raise SentencePieceError(f"{where}: no pieces found; this is not a SentencePiece .model file")
    if unknown:
        raise SentencePieceError(f"{where}: unexpected top-level fields {sorted(unknown)}; "
                                 "this is not a SentencePiece .model file")
    pieces = []
    for k, raw in enumerate(top[1]):
        if not isinstance(raw, bytes):
            raise SentencePieceError(f"{where}: piece {k} is not a message")
        fields = pb.parse_message(raw, f"{where}: piece {k}")
        pieces.append((pb.as_str(fields, 1, ""), pb.as_float(fields, 2, 0.0), pb.as_int32(fields, 3, NORMAL)))
    trainer = pb.parse_message(pb.as_bytes(top, 2, b""), f"{where}: trainer_spec")
    normalizer = pb.parse_message(pb.as_bytes(top, 3, b""), f"{where}: normalizer_spec")
    denormalizer = pb.parse_message(pb.as_bytes(top, 5, b""), f"{where}: denormalizer_spec")
    return {"pieces": pieces, "trainer": trainer, "normalizer": normalizer, "denormalizer": denormalizer}


class SentencePieceTokenizer:
    """Encode and decode with a SentencePiece .model file (BPE or unigram), like the library."""

    def __init__(self, model_file: str | os.PathLike):
        file = Path(model_file)
        where = f"SentencePiece model {str(file)!r}"
        raw = read_untrusted(file, where, MAX_FILE_BYTES, SentencePieceError)
        try:
            model = _parse_model(raw, where)
        except pb.ProtobufError as error:
            raise SentencePieceError(f"{where} is corrupt: {error}") from None
        self.path = file
        trainer, norm = model["trainer"], model["normalizer"]
        try:
            self.model_type = pb.as_int32(trainer, 3, UNIGRAM)
            self.byte_fallback = pb.as_bool(trainer, 35, False)
            self.unk_surface = pb.as_str(trainer, 44, " \u2047 ")
            treat_as_suffix = pb.as_bool(trainer, 24, False)
            charsmap = pb.as_bytes(norm, 2, b"")
            flags = dict(add_dummy_prefix=pb.as_bool(norm, 3, True),
                         remove_extra_whitespaces=pb.as_bool(norm, 4, True),
                         escape_whitespaces=pb.as_bool(norm, 5, True))
            self.normalizer_name = pb.as_str(norm, 1, "")
            denorm_map = pb.as_bytes(model["denormalizer"], 2, b"")
        except pb.ProtobufError as error:
            raise SentencePieceError(f"{where} is corrupt: {error}") from None
        if self.model_type not in (UNIGRAM, BPE):
            names = {3: "WORD", 4: "CHAR"}
            raise SentencePieceError(f"{where} has model type {names.get(self.model_type, self.model_type)}; "
                                     "only UNIGRAM (1) and BPE (2) are supported")
        self._init_pieces(model["pieces"], where)
        self.add_dummy_prefix = flags["add_dummy_prefix"]
        self.remove_extra_whitespaces = flags["remove_extra_whitespaces"]
        self.normalizer = Normalizer(charsmap, treat_whitespace_as_suffix=treat_as_suffix,
                                     user_defined=self._user_defined, where=where, **flags)
        self.denormalizer = None
        if denorm_map:
            d_flags = dict(add_dummy_prefix=pb.as_bool(model["denormalizer"], 3, True),
                           remove_extra_whitespaces=pb.as_bool(model["denormalizer"], 4, True),
                           escape_whitespaces=pb.as_bool(model["denormalizer"], 5, True))
            self.denormalizer = Normalizer(denorm_map, where=where, **d_flags)

    def _init_pieces(self, pieces, where):
        self.pieces = [p for p, _, _ in pieces]
        self.scores = [_f32(s) for _, s, _ in pieces]
        self.types = [t for _, _, t in pieces]
        self._normal: dict[str, int] = {}  # NORMAL, USER_DEFINED and UNUSED pieces: what the models match
        self._reserved: dict[str, int] = {}  # CONTROL, UNKNOWN and BYTE pieces
        self._user_defined: list[str] = []
        self.unk_id = -1
        bytes_found = set()
        for i, (piece, _, kind) in enumerate(pieces):
            if not piece:
                raise SentencePieceError(f"{where}: piece {i} is empty")
            if kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
                raise SentencePieceError(f"{where}: piece {i} ({piece!r}) has unknown type {kind}")
            table = self._normal if kind in (NORMAL, USER_DEFINED, UNUSED) else self._reserved
            if piece in table:
                raise SentencePieceError(f"{where}: piece {piece!r} is defined twice")
            table[piece] = i
            if kind == USER_DEFINED:
                self._user_defined.append(piece)
            elif kind == UNKNOWN:
                if self.unk_id >= 0:
                    raise SentencePieceError(f"{where}: more than one unknown piece")
                self.unk_id = i
            elif kind == BYTE:
                if not self.byte_fallback:
                    raise SentencePieceError(f"{where}: byte piece {piece!r} found but byte_fallback is off")
                value = _piece_to_byte(piece)
                if value < 0:
                    raise SentencePieceError(f"{where}: byte piece {piece!r} must be <0x00>..<0xFF>")
                bytes_found.add(value)
        if self.unk_id < 0:
            raise SentencePieceError(f"{where}: no unknown piece (<unk>) is defined")
        if self.model_type == UNIGRAM and not self._normal:
            raise SentencePieceError(f"{where}: a unigram model needs a NORMAL, USER_DEFINED or UNUSED piece "
                                     "and this one has none")
        if self.byte_fallback and len(bytes_found) != 256:
            raise SentencePieceError(f"{where}: byte_fallback is on but only {len(bytes_found)} of the 256 "
                                     "byte pieces are defined")
        self._byte_ids = [self._reserved.get(f"<0x{b:02X}>", self.unk_id) for b in range(256)]
        normal_scores = [s for s, t in zip(self.scores, self.types) if t == NORMAL]
        self.min_score = min(normal_scores, default=3.4028234663852886e38)
        self.max_score = max(normal_scores + [FLT_MIN])
        self._trie = PieceTrie(self._normal)  # the pieces a lattice edge or a BPE symbol can be
        self._user_trie = PieceTrie({p: self._normal[p] for p in self._user_defined})

    # ---- vocabulary -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def piece_to_id(self, piece: str) -> int:
        return self._reserved.get(piece, self._normal.get(piece, self.unk_id))

    def id_to_piece(self, i: int) -> str:
        return self.pieces[self._check_id(i, 0)]

    def _check_id(self, i, position) -> int:
        if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
            raise TypeError(f"ids[{position}] must be an int, got {type(i).__name__}")
        i = int(i)
        if not 0 <= i < len(self.pieces):
            raise ValueError(f"ids[{position}] = {i} is out of range; {self.path.name} has "
                             f"{len(self.pieces)} pieces (ids 0..{len(self.pieces) - 1})")
        return i

    # ---- encoding ------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The normalized text that the model segments ("Hello" -> "▁Hello")."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.normalizer.normalize(text)

    def _segment_unigram(self, s: str) -> list[tuple[str, int]]:
        """Viterbi: best[end] = max over pieces s[start:end] of best[start] + score(piece).

        Scores are float32 in the file and the library adds them in float32, so every sum
        here is rounded to float32 too (_f32) and near-ties break the same way. (Sums past
        the float32 range become -inf or +inf; where several paths tie there, the library
        can break the tie differently.)
        """
        n = len(s)
        best_score = [0.0] * (n + 1)
        best_start = [-1] * (n + 1)
        best_id = [-1] * (n + 1)
        unk_score = _f32(self.min_score - UNK_PENALTY)
        types, scores, root = self.types, self.scores, self._trie.root
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
                    candidate = _f32(n_bytes * self.max_score) - 0.1 + base
                else:
                    candidate = _f32(scores[i] + base)
                if best_start[end] == -1 or candidate > best_score[end]:
                    best_score[end], best_start[end], best_id[end] = _f32(candidate), start, i
                if end == start + 1:
                    has_single = True
            if not has_single:  # no piece covers this character: an unknown of score min - 10
                candidate = _f32(unk_score + base)
                if best_start[start + 1] == -1 or candidate > best_score[start + 1]:
                    best_score[start + 1], best_start[start + 1], best_id[start + 1] = candidate, start, self.unk_id
        out, end = [], n
        while end > 0:
            start = best_start[end]
            out.append((s[start:end], best_id[end]))
            end = start
        return out[::-1]

    def _segment_bpe(self, s: str) -> list[tuple[str, int]]:
        """Join the adjacent pair whose joined piece scores highest (ties: leftmost) until none is left."""
        symbols, pos = [], 0  # initial symbols: characters, or whole user-defined pieces (frozen)
        frozen = []
        while pos < len(s):
            length = self._user_trie.longest(s, pos)
            symbols.append(s[pos:pos + length] if length else s[pos])
            frozen.append(length > 0)
            pos += len(symbols[-1])
        n = len(symbols)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        if n:
            nxt[-1] = -1
        normal, scores, types = self._normal, self.scores, self.types
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
                i = self.piece_to_id(piece)
                if types[i] == UNUSED and piece in unused_parts and depth < MAX_RESEGMENT_DEPTH:
                    left, right = unused_parts[piece]
                    stack += [(right, depth + 1), (left, depth + 1)]
                else:
                    out.append((piece, i))
            k = nxt[k]
        return out

    def encode_pieces_and_ids(self, text: str) -> list[tuple[str, int]]:
        normalized = self.normalize(text)
        segments = (self._segment_unigram if self.model_type == UNIGRAM else self._segment_bpe)(normalized)
        out: list[tuple[str, int]] = []
        previous_unknown = False
        for piece, i in segments:
            unknown = i == self.unk_id
            if unknown and self.byte_fallback:
                out.extend((f"<0x{b:02X}>", self._byte_ids[b]) for b in piece.encode("utf-8"))
            elif unknown and previous_unknown:
                out[-1] = (out[-1][0] + piece, i)  # a run of unknowns is one <unk>
            else:
                out.append((piece, i))
            previous_unknown = unknown
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of text, equal to SentencePieceProcessor.encode(text) (no BOS/EOS)."""
        return [i for _, i in self.encode_pieces_and_ids(text)]

    def encode_as_pieces(self, text: str) -> list[str]:
        return [p for p, _ in self.encode_pieces_and_ids(text)]

    # ---- decoding ------------------------------------------------------------------------
    def decode(self, ids) -> str:
        """Text of ids, equal to SentencePieceProcessor.decode(ids)."""
        pieces = [self.pieces[self._check_id(i, k)] for k, i in enumerate(ids)]
        text: list[str] = []
        pending_bytes = bytearray()
        is_bos_ws, bos_ws_seen, text_empty = True, False, True
        strip_bos = self.add_dummy_prefix or self.remove_extra_whitespaces
        for piece in pieces:
            i = self.piece_to_id(piece)
            if self.types[i] == BYTE:
                pending_bytes.append(_piece_to_byte(piece))
                continue
            if pending_bytes:
                text.append(decode_bytes_like_sentencepiece(bytes(pending_bytes)))
                text_empty = text_empty and not text[-1]
                pending_bytes.clear()
            if bos_ws_seen or not text_empty:
                is_bos_ws = False
            kind = self.types[i]
            bos_ws_seen = False
            if kind == CONTROL:
                surface = ""
            elif kind == UNKNOWN:
                surface = self.unk_surface if piece == self.pieces[i] else piece
            else:
                if is_bos_ws and strip_bos and piece.startswith(SPACE):
                    piece = piece[len(SPACE):]
                    bos_ws_seen = not self.remove_extra_whitespaces
                surface = piece.replace(SPACE, " ")
            text.append(surface)
            text_empty = text_empty and not surface
        if pending_bytes:
            text.append(decode_bytes_like_sentencepiece(bytes(pending_bytes)))
        result = "".join(text)
        if self.denormalizer is not None:
            result = self.denormalizer.normalize(result)
        return result

    def __repr__(self) -> str:
        kind = {UNIGRAM: "unigram", BPE: "bpe"}[self.model_type]
        return f"SentencePieceTokenizer({self.path.name!r}, type={kind}, vocab_size={self.vocab_size})"


def _piece_to_byte(piece: str) -> int:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return -1
    return -1
