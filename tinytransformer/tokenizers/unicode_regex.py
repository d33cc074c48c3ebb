"""Pre-tokenization regexes with Unicode classes, on Python's own `re`.

Byte-level BPE tokenizers first cut text into "pre-tokens" with a regex, and
merges never cross a pre-token boundary. The patterns that GPT-2, GPT-4 and
Llama 3 use are written for Oniguruma / the `regex` module and need Unicode
property classes (`\\p{L}` letter, `\\p{N}` number) that Python's `re` lacks.
This module rewrites such a pattern into a plain `re` pattern by spelling each
class out as code-point ranges taken from `unicodedata`:

    \\p{L}  ->  [A-Za-z\\xaa\\xb5 ...]      (categories Lu Ll Lt Lm Lo)
    \\s     ->  [\\t-\\r \\x85 Zs Zl Zp]      (Oniguruma's; Python's \\s adds U+001C..U+001F)

    >>> split("Hello world's 2024 ☃!!", GPT2_PATTERN)
    ['Hello', ' world', "'s", ' 2024', ' ☃!!']

Patterns come from files and Python's `re` backtracks, so `compile_pattern`
refuses what could take exponential time (`check_backtracking` says which).

Does not handle: `\\P{..}`, `\\S` or `\\W` inside a bracket class, nested
classes, script or binary properties (`\\p{Han}`), and Unicode versions other
than the one this Python's `unicodedata` carries.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata

import numpy as np

__all__ = ["GPT2_PATTERN", "GPT4_PATTERN", "LLAMA3_PATTERN", "compile_pattern", "split", "category_ranges",
           "UnicodePattern"]

# GPT-2 (Radford et al. 2019): contractions, letters, numbers, other symbols, spaces.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 / cl100k_base: case-insensitive contractions, numbers in groups of at most 3.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Llama 3 (the same idea as GPT-4, written with explicit case classes).
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_WHITESPACE_CONTROLS = "\t\n\x0b\x0c\r\x85"

MAX_PATTERN_CHARS = 10_000
MAX_QUANTIFIERS_IN_A_ROW = 2


_CATEGORY_NAMES = ("Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
                   "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs",
                   "Co", "Cn")


@functools.lru_cache(maxsize=None)
def _category_codes() -> np.ndarray:
    """uint8 index into _CATEGORY_NAMES for every code point (built once, about 0.2 s)."""
    index = {name: i for i, name in enumerate(_CATEGORY_NAMES)}
    categories = map(unicodedata.category, map(chr, range(sys.maxunicode + 1)))
    return np.fromiter((index[c] for c in categories), dtype=np.uint8, count=sys.maxunicode + 1)


def _escape(code_point: int) -> str:
    return f"\\U{code_point:08x}" if code_point > 0xFFFF else f"\\u{code_point:04x}"


@functools.lru_cache(maxsize=None)
def category_ranges(name: str, bmp_only: bool = False) -> str:
    """The inside of a bracket class for general category `name` ("L", "Nd"; "s" whitespace, "w" word).

    bmp_only keeps only code points below U+10000 (may then be empty).
    """
    if name == "s":
        wanted = ["Zs", "Zl", "Zp"]
    elif name == "w":
        wanted = [c for c in _CATEGORY_NAMES if c[0] in "LM"] + ["Nd", "Pc"]
    elif name in _CATEGORY_NAMES or (len(name) == 1 and name in "LMNPSZC"):
        wanted = [c for c in _CATEGORY_NAMES if c.startswith(name)]
    else:
        raise ValueError(f"unsupported Unicode class \\p{{{name}}}; expected a general category such as L, Lu, N, Nd, P")
    mask = np.isin(_category_codes(), [_CATEGORY_NAMES.index(c) for c in wanted])
    if name == "s":
        mask[[ord(c) for c in _WHITESPACE_CONTROLS]] = True
    if bmp_only:
        mask = mask[:0x10000]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.view(np.int8), [0]])))
    starts, stops = edges[0::2], edges[1::2] - 1  # inclusive runs [start, stop]
    if len(starts) == 0 and not bmp_only:
        raise ValueError(f"Unicode class \\p{{{name}}} matches no character")
    return "".join(_escape(a) + ("" if a == b else "-" + _escape(b)) for a, b in zip(starts.tolist(), stops.tolist()))


class _EmptyClass(Exception):
    """A class has no code point below U+10000: no BMP-only variant of the pattern."""


def _translate(pattern: str, bmp_only: bool = False) -> str:
    """Rewrite Oniguruma-style classes (\\p{X}, \\P{X}, \\s, \\S, \\w, \\W) into Python `re`."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            letter = pattern[i + 1]
            if letter in "pP":
                end = pattern.find("}", i)
                if pattern[i + 2:i + 3] != "{" or end == -1:
                    raise ValueError(f"pattern {pattern!r}: expected \\{letter}{{Name}} at offset {i}")
                name, negate, i = pattern[i + 3:end], letter == "P", end + 1
            elif letter in "sSwW":
                name, negate, i = letter.lower(), letter.isupper(), i + 2
            else:
                out.append(pattern[i:i + 2])
                i += 2
                continue
            ranges = category_ranges(name, bmp_only)
            if not ranges:
                raise _EmptyClass(name)
            if in_class and negate:
                raise ValueError(f"pattern {pattern!r}: a negated class (\\{letter}) inside [...] is not supported")
            out.append(ranges if in_class else ("[^" if negate else "[") + ranges + "]")
            continue
        if in_class:
            if char == "]":
                in_class = False
            elif char == "[":
                raise ValueError(f"pattern {pattern!r}: nested bracket classes are not supported")
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            if pattern[i:i + 1] == "^":  # a ']' right after '[' or '[^' is a literal
                out.append("^")
                i += 1
            if pattern[i:i + 1] == "]":
                out.append("\\]")
                i += 1
            continue
        out.append(char)
        i += 1
    if in_class:
        raise ValueError(f"pattern {pattern!r}: unterminated bracket class")
    return "".join(out)


try:
    from re import _parser as _sre_parse  # Python 3.11+
except ImportError:  # pragma: no cover  (Python 3.10)
    import sre_parse as _sre_parse

_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def check_backtracking(pattern: str, translated: str) -> None:
    """Refuse a pattern on which backtracking can take exponential time, with a ValueError saying why.

    Patterns come from files (a tokenizer.json `Split`), and Python's `re` backtracks:
    `(a+)+$` on 26 a's and a "!" tries 2**26 ways to cut the a's. Refused is what can
    take time exponential (or a high power) in the length of the text: a quantified
    group that contains another quantifier or an alternation (`(a+)+`, `(a|ab)*`,
    `(a?b)+`), backreferences, more than MAX_QUANTIFIERS_IN_A_ROW quantifiers that
    can repeat in one sequence (`a*a*a*b`), and patterns longer than
    MAX_PATTERN_CHARS. Every pre-tokenizer pattern we know (GPT-2, GPT-4, GPT-4o,
    Llama 3, Qwen2, DeepSeek, Mistral) passes. Walks the parse tree of the
    translated pattern (the one Python's `re` runs).
    """
    shown = repr(pattern) if len(pattern) <= 80 else repr(pattern[:77]) + "..."

    def refuse(why):
        raise ValueError(f"pattern {shown}: {why}; backtracking can take time exponential in (or a high "
                         "power of) the length of the text on such patterns, and they are not supported")

    def walk(sequence, repeated: bool) -> int:
        """Check a sequence of nodes; return how many repeating quantifiers it has in a row."""
        in_a_row = 0
        for op, value in sequence:
            name = str(op)
            if name in _REPEATS:
                low, high, body = value
                if repeated:
                    refuse("a quantifier inside a quantified group")
                walk(body, repeated or high > 1)
                in_a_row += high > 1
            elif name == "BRANCH":
                if repeated:
                    refuse("an alternation (|) inside a quantified group")
                in_a_row += max(walk(alternative, repeated) for alternative in value[1])
            elif name == "SUBPATTERN":
                in_a_row += walk(value[-1], repeated)
            elif name == "ATOMIC_GROUP":
                in_a_row += walk(value, repeated)
            elif name in ("ASSERT", "ASSERT_NOT"):
                walk(value[1], repeated)
            elif name in ("GROUPREF", "GROUPREF_EXISTS"):
                refuse("a backreference")
            if in_a_row > MAX_QUANTIFIERS_IN_A_ROW:
                refuse(f"more than {MAX_QUANTIFIERS_IN_A_ROW} quantifiers in a row")
        return in_a_row

    walk(_sre_parse.parse(translated), False)


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


class UnicodePattern:
    """A compiled pre-tokenization pattern: `finditer` and `findall` as for `re.Pattern`.

    A speed-up, not a change of meaning: Python's `re` tests the code points above
    U+FFFF of a class one range at a time (\\p{L} has about 480 such ranges), after
    its bitmap of the lower 65,536 misses. Text with no such character cannot tell
    the difference, so it is matched with a copy of the pattern whose classes
    stop at U+FFFF; other text gets the full pattern.
    """

    def __init__(self, pattern: str):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise ValueError(f"pattern of {len(pattern)} characters; at most {MAX_PATTERN_CHARS} are supported")
        self.pattern = pattern
        translated = _translate(pattern)
        check_backtracking(pattern, translated)
        self.full = re.compile(translated)
        try:
            self.bmp = re.compile(_translate(pattern, bmp_only=True))
        except (_EmptyClass, re.error):
            self.bmp = None

    def _pick(self, text: str) -> re.Pattern:
        if self.bmp is not None and (text.isascii() or not _ASTRAL.search(text)):
            return self.bmp
        return self.full

    def finditer(self, text: str):
        return self._pick(text).finditer(text)

    def findall(self, text: str) -> list:
        return self._pick(text).findall(text)


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> UnicodePattern:
    """Compile an Oniguruma-style pre-tokenization pattern for Python's `re`."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    shown = repr(pattern) if len(pattern) <= 80 else repr(pattern[:77]) + "..."
    try:
        return UnicodePattern(pattern)
    except re.error as error:
        raise ValueError(f"pattern {shown} does not compile: {error}") from None
    except RecursionError:  # Python's regex parser and compiler recurse once per nested group
        raise ValueError(f"pattern {shown}: groups are nested too deeply") from None


def split(text: str, pattern: str) -> list[str]:
    """The pieces of text that `pattern` matches, in order (unmatched text is kept as pieces too)."""
    regex = compile_pattern(pattern)
    pieces, last = [], 0
    for match in regex.finditer(text):
        if match.start() > last:
            pieces.append(text[last:match.start()])
        if match.end() > match.start():
            pieces.append(match.group())
        last = match.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces
