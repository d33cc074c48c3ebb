"""Byte-level BPE of a real model (GPT-2 style), loaded from GGUF or tokenizer.json.

A pretrained model's tokenizer (from GGUF metadata, `from_gguf`, or a Hugging Face
tokenizer.json, `from_tokenizer_json`) is the BPE of tinytransformer.tokenizers.bpe
plus conventions its authors chose, each matched exactly. Added tokens
("<|im_start|>") are cut out of the text first and map straight to their ids. A
pre-tokenizer, a list of regex splits, cuts the rest into pieces that merges never
cross. Each piece's UTF-8 bytes are written as printable characters (GPT-2's
byte-to-unicode table: a space is "Ġ"), because the vocabulary and the merges are
stored as such strings. Then merges by rank, exactly as bpe.apply_merges does.

    ids(text) = added tokens, and for every piece p:  apply_merges(chars(utf8(p)), ranks)

    >>> table = bytes_to_unicode()
    >>> vocab = {table[b]: b for b in range(256)} | {"hi": 256, "Ġhi": 257}
    >>> tok = ByteLevelBPETokenizer(vocab, [("h", "i"), ("Ġ", "hi")])
    >>> tok.encode_as_tokens("hi hi!")
    ['hi', 'Ġhi', '!']
    >>> tok.decode(tok.encode("hi hi!"))
    'hi hi!'

Does not handle: normalizers (tokenizer.json must have "normalizer": null),
added tokens with lstrip/rstrip/single_word, BPE dropout, byte_fallback,
subword prefixes/suffixes, post-processors (no BOS/EOS is ever added), offsets.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from tinytransformer._validate import is_integer
from tinytransformer.tokenizers.bpe import apply_merges
from tinytransformer.tokenizers.piece_cache import PieceCache
from tinytransformer.tokenizers.special_tokens import special_tokens_regex, split_special
from tinytransformer.tokenizers.unicode_regex import GPT2_PATTERN, compile_pattern
from tinytransformer.tokenizers.untrusted_files import read_json

__all__ = ["ByteLevelBPETokenizer", "bytes_to_unicode", "PRE_TOKENIZERS", "TokenizerFileError"]

MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_SEQUENCE_DEPTH = 32  # pre_tokenizer Sequences inside Sequences, at most this deep

# llama.cpp's regexes (src/llama-vocab.cpp) per `tokenizer.ggml.pre` value; each is applied in turn.
_GPT2_LLAMA_CPP = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_LLAMA_CPP = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                     r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str, list[str]] = {
    "gpt2": [_GPT2_LLAMA_CPP],
    "gpt-2": [_GPT2_LLAMA_CPP],
    "smollm": [r"\p{N}", _GPT2_LLAMA_CPP],
    "starcoder": [r"\p{N}", _GPT2_LLAMA_CPP],
    "llama3": [_LLAMA3_LLAMA_CPP],
    "llama-bpe": [_LLAMA3_LLAMA_CPP],
}


class TokenizerFileError(ValueError):
    """A tokenizer.json or GGUF tokenizer that is corrupt or uses something we do not support."""


def _brief(value) -> str:
    """A value from an untrusted file, short enough for an error message (no deep repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    size = f" of {len(value)}" if isinstance(value, (list, dict)) else ""
    return f"a {type(value).__name__}{size}"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    >>> table = bytes_to_unicode()
    >>> table[ord("A")], table[ord(" ")], table[ord("\\n")]
    ('A', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_LATIN1_TO_CHAR = str.maketrans({chr(b): c for b, c in _BYTE_TO_CHAR.items()})

# A pre-tokenizer step is (compiled regex, behaviour, invert); behaviours as in HF `tokenizers`.
_BEHAVIOURS = ("isolated", "removed", "merged_with_previous", "merged_with_next", "contiguous")


def _split_step(pieces: list[str], regex, behaviour: str, invert: bool) -> list[str]:
    """Split each piece by regex; `behaviour` says what happens to the matched parts."""
    out = []
    for piece in pieces:
        spans, last = [], 0  # (text, is_match)
        for match in regex.finditer(piece):
            if match.end() == match.start():
                continue
            if match.start() > last:
                spans.append((piece[last:match.start()], invert))
            spans.append((match.group(), not invert))
            last = match.end()
        if last < len(piece):
            spans.append((piece[last:], invert))
        if behaviour == "isolated":
            out.extend(text for text, _ in spans)
        elif behaviour == "removed":
            out.extend(text for text, is_match in spans if not is_match)
        elif behaviour == "contiguous":  # neighbouring spans of the same kind join
            merged: list[list] = []
            for text, is_match in spans:
                if merged and is_match == merged[-1][1]:
                    merged[-1][0] += text
                else:
                    merged.append([text, is_match])
            out.extend(text for text, _ in merged)
        elif behaviour == "merged_with_previous":  # a match joins the piece before it, unless that is a match
            merged_text, previous_match = [], False
            for text, is_match in spans:
                if is_match and not previous_match and merged_text:
                    merged_text[-1] += text
                else:
                    merged_text.append(text)
                previous_match = is_match
            out.extend(merged_text)
        else:  # merged_with_next: a match joins the piece after it, unless that is a match
            merged_text, next_match = [], False
            for text, is_match in reversed(spans):
                if is_match and not next_match and merged_text:
                    merged_text[-1] = text + merged_text[-1]
                else:
                    merged_text.append(text)
                next_match = is_match
            out.extend(reversed(merged_text))
    return out


class ByteLevelBPETokenizer:
    """A GPT-2-style byte-level BPE tokenizer with a pretrained vocabulary and merges."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *,
                 pre_tokenizer: list[tuple] | None = None, added_tokens: dict[str, int] | None = None,
                 ignore_merges: bool = False, unk_id: int | None = None, source: str = "tokenizer"):
        """vocab: token string -> id; merges: pairs of token strings, in priority order;
        pre_tokenizer: steps applied in order, each ("split", pattern, behaviour, invert) or
        ("byte_level", add_prefix_space, use_regex), the step that writes bytes as characters
        (appended at the end when missing). Default: [("byte_level", False, True)], GPT-2."""
        self.source = source
        self.vocab = dict(vocab)
        self.added_tokens = dict(added_tokens or {})
        for table in (self.vocab, self.added_tokens):
            for token, i in table.items():
                if not isinstance(token, str) or not is_integer(i) or i < 0:
                    raise TokenizerFileError(f"{source}: token {_brief(token)} has id {_brief(i)}; "
                                             "expected a string token and an int id >= 0")
        size = max([*self.vocab.values(), *self.added_tokens.values()], default=-1) + 1
        if size > 2 * (len(self.vocab) + len(self.added_tokens)) + 1024:  # bounded allocation
            raise TokenizerFileError(f"{source}: the largest token id is {size - 1} but there are only "
                                     f"{len(self.vocab) + len(self.added_tokens)} tokens")
        self.id_to_token: list[str | None] = [None] * size
        for table in (self.vocab, self.added_tokens):
            for token, i in table.items():
                if self.id_to_token[i] not in (None, token):  # an added token may repeat its vocab entry
                    raise TokenizerFileError(f"{source}: id {i} is given to two tokens, "
                                             f"{_brief(self.id_to_token[i])} and {_brief(token)}")
                self.id_to_token[i] = token
        # A byte without a token becomes unk_id, or is dropped when there is none (as HF does).
        # SmolLM2 lacks 21: six ASCII controls (0x04 0x06 0x13 0x14 0x16 0x1d) and bytes rare in UTF-8.
        self.unk_id = unk_id
        self.missing_bytes = bytes(b for b, c in _BYTE_TO_CHAR.items() if c not in self.vocab)
        self._char_ids = {c: self.vocab.get(c, unk_id) for c in _CHAR_TO_BYTE}
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(merges):
            ids = self.vocab.get(left), self.vocab.get(right), self.vocab.get(left + right)
            if None in ids:
                raise TokenizerFileError(f"{source}: merge {rank} ({_brief(left)} {_brief(right)}) uses a "
                                         "token that is not in the vocabulary")
            self.ranks.setdefault((ids[0], ids[1]), (rank, ids[2]))
        steps = list(pre_tokenizer) if pre_tokenizer is not None else [("byte_level", False, True)]
        if not any(step[0] == "byte_level" for step in steps):
            steps.append(("byte_level", False, False))
        if sum(step[0] == "byte_level" for step in steps) != 1:
            raise TokenizerFileError(f"{source}: more than one ByteLevel pre-tokenizer step")
        self.pre_tokenizer_steps = steps
        self._steps = []
        for step in steps:
            if step[0] == "split":
                if step[2] not in _BEHAVIOURS:
                    raise TokenizerFileError(f"{source}: split behaviour {_brief(step[2])} is not one of "
                                             f"{_BEHAVIOURS}")
                try:
                    regex = compile_pattern(step[1])
                except (TypeError, ValueError) as error:
                    raise TokenizerFileError(f"{source}: pre-tokenizer pattern: {error}") from None
                self._steps.append(("split", regex, step[2], bool(step[3])))
            elif step[0] == "byte_level":
                self._steps.append(("byte_level", bool(step[1]), bool(step[2])))
            else:
                raise TokenizerFileError(f"{source}: unknown pre-tokenizer step {_brief(step)}")
        self.ignore_merges = ignore_merges
        self._added_regex = special_tokens_regex(self.added_tokens)  # leftmost, then longest
        self._cache = PieceCache()  # the ids of each distinct piece: natural text repeats its words

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "ByteLevelBPETokenizer":
        """Read `tokenizer.ggml.*` from a GGUF file (tokenizer.ggml.model must be "gpt2").

        A file without tokenizer.ggml.pre gets the GPT-2 regex, as transformers' GGUF
        conversion does (llama.cpp would warn and use its own "default" regex list).
        """
        from tinytransformer.gguf import GGUFFile

        source = f"GGUF file {os.fspath(path)!r}"
        with GGUFFile(path) as gguf:
            meta = gguf.metadata
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerFileError(f"{source}: tokenizer.ggml.model is {_brief(model)}; only 'gpt2' "
                                     "(byte-level BPE) is supported here")
        tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
        if isinstance(merges, np.ndarray) and merges.size == 0:
            merges = []  # an empty array has no element type to tell; a byte-only vocabulary has no merges
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise TokenizerFileError(f"{source}: tokenizer.ggml.tokens is missing or not a list of strings")
        if not isinstance(merges, list) or not all(isinstance(m, str) and m.count(" ") == 1 for m in merges):
            raise TokenizerFileError(f"{source}: tokenizer.ggml.merges is missing or not a list of 'a b' strings")
        types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
        if not isinstance(types, (list, np.ndarray)) or len(types) != len(tokens):  # GGUF: an int32 array
            raise TokenizerFileError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries "
                                     f"but there are {len(tokens)} tokens")
        pre = meta.get("tokenizer.ggml.pre", "gpt2")
        if pre not in PRE_TOKENIZERS:
            raise TokenizerFileError(f"{source}: unsupported pre-tokenizer tokenizer.ggml.pre = {_brief(pre)}; "
                                     f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
        vocab, added = {}, {}
        for i, (token, kind) in enumerate(zip(tokens, types)):
            table = added if kind in (3, 4) else vocab  # 3 CONTROL, 4 USER_DEFINED: matched in the text
            if token in vocab or token in added:
                raise TokenizerFileError(f"{source}: token {_brief(token)} appears twice")
            table[token] = i
        pairs = [tuple(m.split(" ")) for m in merges]
        steps = [("split", pattern, "isolated", False) for pattern in PRE_TOKENIZERS[pre]]
        return cls({**vocab, **added}, pairs, pre_tokenizer=steps, added_tokens=added, source=source)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> "ByteLevelBPETokenizer":
        """Read a Hugging Face tokenizer.json whose model is byte-level BPE."""
        file = Path(path)
        source = f"tokenizer.json {str(file)!r}"
        data = read_json(file, source, MAX_FILE_BYTES, TokenizerFileError)
        return cls.from_tokenizer_json_data(data, source=source)

    @classmethod
    def from_tokenizer_json_data(cls, data, *, source: str = "tokenizer.json data") -> "ByteLevelBPETokenizer":
        """The same as from_tokenizer_json, from the already parsed JSON object."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise TokenizerFileError(f"{source} has no 'model' object; not a tokenizer.json file")
        model = data["model"]
        if model.get("type", "BPE") != "BPE":
            raise TokenizerFileError(f"{source}: model type is {_brief(model.get('type'))}; only BPE is supported")
        for key, default in (("dropout", None), ("byte_fallback", False),
                             ("continuing_subword_prefix", ""), ("end_of_word_suffix", "")):
            if model.get(key) not in (default, None):
                raise TokenizerFileError(f"{source}: model.{key} = {_brief(model.get(key))} is not supported")
        normalizer = data.get("normalizer")
        if normalizer is not None:
            kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
            raise TokenizerFileError(f"{source}: a normalizer ({_brief(kind)}) is not supported")
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not isinstance(merges, list):
            raise TokenizerFileError(f"{source}: model.vocab must be an object and model.merges a list")
        pairs = []
        for k, merge in enumerate(merges):
            if isinstance(merge, str) and merge.count(" ") == 1:
                pairs.append(tuple(merge.split(" ")))
            elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
                pairs.append((merge[0], merge[1]))
            else:
                raise TokenizerFileError(f"{source}: model.merges[{k}] = {_brief(merge)} is not 'a b' or [a, b]")
        added = {}
        added_list = data.get("added_tokens") or []
        if not isinstance(added_list, list):
            raise TokenizerFileError(f"{source}: added_tokens must be a list")
        for k, entry in enumerate(added_list):
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) \
                    or not is_integer(entry.get("id")):
                raise TokenizerFileError(f"{source}: added_tokens[{k}] needs a string 'content' and an int 'id'")
            for flag in ("lstrip", "rstrip", "single_word"):
                if entry.get(flag):
                    raise TokenizerFileError(f"{source}: added token {_brief(entry['content'])} has {flag}=true, "
                                             "which is not supported")
            added[entry["content"]] = entry["id"]
        steps = _pre_tokenizer_steps(data.get("pre_tokenizer"), source)
        decoder = data.get("decoder")
        decoder_type = decoder.get("type") if isinstance(decoder, dict) else decoder
        if decoder_type != "ByteLevel":
            raise TokenizerFileError(f"{source}: decoder is {_brief(decoder_type)}; expected ByteLevel")
        unk = model.get("unk_token")
        if unk is not None and (not isinstance(unk, str) or unk not in vocab):
            raise TokenizerFileError(f"{source}: model.unk_token {_brief(unk)} is not in the vocabulary")
        return cls({**vocab}, pairs, pre_tokenizer=steps, added_tokens=added,
                   ignore_merges=bool(model.get("ignore_merges", False)),
                   unk_id=None if unk is None else vocab[unk], source=source)

    # ---- encoding ------------------------------------------------------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """The pieces that merges work within, written in byte-level characters ("Ġworld")."""
        pieces = [text]
        for step in self._steps:
            if step[0] == "split":
                _, regex, behaviour, invert = step
                pieces = _split_step(pieces, regex, behaviour, invert)
                continue
            _, add_prefix_space, use_regex = step
            if add_prefix_space:  # as HF: every piece that does not start with a space gets one
                pieces = [p if p.startswith(" ") else " " + p for p in pieces]
            if use_regex:
                pieces = _split_step(pieces, compile_pattern(GPT2_PATTERN), "isolated", False)
            # bytes -> printable characters, through Latin-1 so that str.translate does it in C
            pieces = [p.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_CHAR) for p in pieces]
        return pieces

    def _encode_piece(self, chars: str) -> list[int]:
        ids = self._cache.get(chars)
        if ids is None:
            whole = self.vocab.get(chars) if self.ignore_merges else None
            if whole is not None:
                ids = [whole]
            else:
                symbols = [self._char_ids[c] for c in chars]
                ids = apply_merges([i for i in symbols if i is not None], self.ranks)
            self._cache.put(chars, ids)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of text, added tokens matched, no BOS/EOS added."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for segment, is_added in split_special(text, self._added_regex):
            if is_added:
                ids.append(self.added_tokens[segment])
                continue
            for piece in self.pre_tokenize(segment):
                ids.extend(self._encode_piece(piece))
        return ids

    def encode_as_tokens(self, text: str) -> list[str]:
        return [self.id_to_token[i] for i in self.encode(text)]

    # ---- decoding ------------------------------------------------------------------------
    def token_bytes(self, i: int) -> bytes:
        """The bytes one token stands for (an added token: its UTF-8 text)."""
        token = self.id_to_token[i]
        if any(c not in _CHAR_TO_BYTE for c in token):  # the HF decoder's rule, added tokens included
            return token.encode("utf-8")
        return bytes(_CHAR_TO_BYTE[c] for c in token)

    def decode(self, ids) -> str:
        """Text of ids; bytes that are not valid UTF-8 become U+FFFD (as the HF ByteLevel decoder)."""
        out = []
        for position, i in enumerate(ids):
            if not is_integer(i):
                raise TypeError(f"ids[{position}] must be an int, got {type(i).__name__}")
            i = int(i)
            if not 0 <= i < len(self.id_to_token) or self.id_to_token[i] is None:
                raise ValueError(f"ids[{position}] = {i} is out of range; vocab_size is {self.vocab_size}")
            out.append(self.token_bytes(i))
        return b"".join(out).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteLevelBPETokenizer(vocab_size={self.vocab_size}, source={self.source})"


def _pre_tokenizer_steps(spec, source: str) -> list[tuple]:
    """Translate a tokenizer.json pre_tokenizer into our list of steps.

    Sequences are flattened with a stack of (node, depth), not by recursion, and may nest
    at most MAX_SEQUENCE_DEPTH deep.
    """
    if spec is None:
        raise TokenizerFileError(f"{source}: no pre_tokenizer; a byte-level BPE needs a ByteLevel pre-tokenizer")
    steps: list[tuple] = []
    stack = [(spec, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict):
            raise TokenizerFileError(f"{source}: pre_tokenizer entry {_brief(node)} is not an object")
        kind = node.get("type")
        if kind == "Sequence":
            children = node.get("pretokenizers")
            if not isinstance(children, list):
                raise TokenizerFileError(f"{source}: a Sequence pre_tokenizer needs a 'pretokenizers' list")
            if depth >= MAX_SEQUENCE_DEPTH:
                raise TokenizerFileError(f"{source}: pre_tokenizer Sequences are nested more than "
                                         f"{MAX_SEQUENCE_DEPTH} deep")
            stack.extend((child, depth + 1) for child in reversed(children))  # popped in order
        elif kind == "ByteLevel":
            steps.append(("byte_level", bool(node.get("add_prefix_space", True)), bool(node.get("use_regex", True))))
        elif kind == "Digits":  # HF splits on char::is_numeric, the \p{N} class
            steps.append(("split", r"\p{N}", "isolated", False) if node.get("individual_digits")
                         else ("split", r"\p{N}+", "isolated", False))
        elif kind == "Split":
            pattern = node.get("pattern")
            if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
                regex = pattern["Regex"]
            elif isinstance(pattern, dict) and isinstance(pattern.get("String"), str):
                regex = re.escape(pattern["String"])
            else:
                raise TokenizerFileError(f"{source}: Split pre-tokenizer without a Regex or String pattern")
            behaviour = node.get("behavior", "Isolated")
            snake = ("".join("_" + c.lower() if c.isupper() else c for c in behaviour).lstrip("_")
                     if isinstance(behaviour, str) else None)
            if snake not in _BEHAVIOURS:
                raise TokenizerFileError(f"{source}: Split behavior {_brief(behaviour)} is not supported")
            steps.append(("split", regex, snake, bool(node.get("invert", False))))
        else:
            raise TokenizerFileError(f"{source}: pre_tokenizer type {_brief(kind)} is not supported "
                                     "(supported: Sequence, ByteLevel, Digits, Split)")
    if sum(step[0] == "byte_level" for step in steps) != 1:
        raise TokenizerFileError(f"{source}: expected exactly one ByteLevel pre-tokenizer; "
                                 "not a byte-level BPE tokenizer")
    return steps
