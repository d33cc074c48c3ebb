"""The SentencePiece normalizer: rewrite the text (NFKC rules), then mark its spaces with "▁".

Before SentencePiece segments a text it normalizes it, in one left-to-right pass:

1. at each position the longest matching rule of the model's "precompiled charsmap"
   replaces the characters it matches (NFKC by default: "ｈｉ" -> "hi", "①" -> "1");
   user-defined pieces pass through unchanged, and a byte that is not valid UTF-8
   becomes U+FFFD;
2. with remove_extra_whitespaces, leading and trailing spaces go and runs of spaces
   become one;
3. with escape_whitespaces, every space becomes "▁" (U+2581), and with
   add_dummy_prefix one "▁" goes in front, so that a word reads the same at the start
   of a text as after a space: "Hello world" -> "▁Hello▁world".

The charsmap is a Darts double-array trie over UTF-8 bytes whose leaves point into a
blob of NUL-terminated replacement strings. The same class, given the model's
denormalizer spec, is the denormalizer that decoding ends with.

    >>> Normalizer(b"").normalize("  Hello   world ")      # no charsmap rules: only the whitespace ones
    '▁Hello▁world'
    >>> Normalizer(b"", add_dummy_prefix=False, remove_extra_whitespaces=False).normalize(" a  b")
    '▁a▁▁b'
    >>> decode_bytes_like_sentencepiece("ok▁".encode()[:-1])   # a cut-off "▁": one U+FFFD per byte
    'ok��'

Does not handle: building a charsmap (that is the trainer's job, from NFKC tables).
"""
from __future__ import annotations

import re
import struct

from tinytransformer.tokenizers.piece_trie import PieceTrie
from tinytransformer.tokenizers.spm_model_file import SentencePieceError

__all__ = ["Normalizer", "SPACE", "utf8_char_length", "decode_bytes_like_sentencepiece"]

SPACE = "\u2581"


def utf8_char_length(data: bytes, pos: int) -> int:
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
        n = utf8_char_length(data, pos)
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
            n = utf8_char_length(data, pos)
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
