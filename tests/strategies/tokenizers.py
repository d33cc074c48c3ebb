"""Text that tokenizers get wrong, tiny vocabularies, and edits that corrupt tokenizer files."""
from __future__ import annotations

import math
import struct

from hypothesis import strategies as st

from strategies.gguf import apply_gguf_mutation


# Fragments that tokenizers get wrong: combining marks, emoji sequences (skin tone, ZWJ,
# flags), CJK, Hangul, control and separator characters, NFKC-sensitive forms, digits,
# contractions, special-token text, the SentencePiece space marker itself.
TOKENIZER_FRAGMENTS = (
    "Hello", " world", "'s", " don't", "2024", " 3.14", "x²", "½", "①", "Ⅻ", "naïve", "e\u0301",
    "a\u0308\u0301", "\u0301", "😀", "👍🏽", "👩\u200d💻", "🇰🇷", "漢字", "日本語のテキスト", "한국어",
    " 안녕하세요", "\t", "\r\n", "\x00", "\x04", "\x1c", "\x7f", "\x85", "\u3000", "\u00a0", "\u200b",
    "ﬁ", "ｆｕｌｌ", "<|im_start|>", "<|endoftext|>", "\u2581", "\ufeff", "\U000e0041", "\U0010fffd",
)


def tokenizer_text(max_fragments: int = 10):
    """Arbitrary Unicode text (no surrogates, no unassigned code points) with the hard cases above
    and long runs of spaces and newlines."""
    fragment = st.one_of(
        st.sampled_from(TOKENIZER_FRAGMENTS),
        st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=6),
        st.text(st.sampled_from("abcdefghij ABC.,;'\n0123"), max_size=10),
        st.builds(lambda unit, n: unit * n, st.sampled_from([" ", "\n", "\t", " \n", "\n\n "]),
                  st.integers(1, 12)),
    )
    return st.lists(fragment, max_size=max_fragments).map("".join)


def bpe_vocab_sizes(max_merges: int = 60):
    """A vocabulary size for BPETokenizer.train: the 256 byte tokens plus some merges."""
    return st.integers(256, 256 + max_merges)


def tiny_tokenizer_json() -> dict:
    """A minimal byte-level BPE tokenizer.json: the 256 byte tokens, two merges, one added token."""
    from tinytransformer.tokenizers.byte_level import bytes_to_unicode

    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)} | {"hi": 256, "Ġhi": 257, "<|endoftext|>": 258}
    added = {"id": 258, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [added],
            "normalizer": None, "post_processor": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": vocab, "merges": ["h i", "Ġ hi"]}}


def _protobuf_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def protobuf_field(number: int, value) -> bytes:
    """One protobuf record: str/bytes length-delimited, float as 4 bytes, int/bool as a varint."""
    if isinstance(value, str):
        value = value.encode("utf-8", errors="surrogatepass")
    if isinstance(value, bytes):
        return _protobuf_varint(number << 3 | 2) + _protobuf_varint(len(value)) + value
    if isinstance(value, float):
        return _protobuf_varint(number << 3 | 5) + struct.pack("<f", value)
    return _protobuf_varint(number << 3) + _protobuf_varint(int(value) & (2**64 - 1))


def sentencepiece_model_bytes(pieces, *, model_type: int = 1, byte_fallback: bool = False,
                              add_dummy_prefix: bool = True, remove_extra_whitespaces: bool = True) -> bytes:
    """A SentencePiece .model file with the given pieces [(piece, score, type)] and the identity
    normalizer (no charsmap). model_type 1 unigram, 2 BPE; types 1 NORMAL 2 UNKNOWN 3 CONTROL
    4 USER_DEFINED 5 UNUSED 6 BYTE."""
    body = b"".join(protobuf_field(1, protobuf_field(1, piece) + protobuf_field(2, float(score))
                                   + protobuf_field(3, kind)) for piece, score, kind in pieces)
    trainer = protobuf_field(3, model_type) + protobuf_field(35, byte_fallback)
    normalizer = (protobuf_field(1, "identity") + protobuf_field(3, add_dummy_prefix)
                  + protobuf_field(4, remove_extra_whitespaces) + protobuf_field(5, True))
    return body + protobuf_field(2, trainer) + protobuf_field(3, normalizer)


def sentencepiece_vocabularies(draw_pieces=st.text("ab▁c", min_size=2, max_size=6)):
    """Pieces for sentencepiece_model_bytes: <unk>, the single characters, then random longer
    pieces with random scores and types (NORMAL, USER_DEFINED, UNUSED)."""
    extra = st.lists(st.tuples(draw_pieces, st.floats(-20, 0, width=32), st.sampled_from([1, 1, 1, 4, 5])),
                     max_size=12, unique_by=lambda item: item[0])
    base = [("<unk>", 0.0, 2), ("a", -2.0, 1), ("b", -2.5, 1), ("c", -3.0, 1), ("▁", -1.0, 1)]
    return extra.map(lambda items: base + [item for item in items if item[0] not in {p for p, _, _ in base}])


@st.composite
def byte_mutations(draw, size: int):
    """Ways to corrupt a file of `size` bytes: flipped bytes, a truncation, inserted or deleted
    bytes, a repeated stretch, or a planted varint of a huge count (what protobuf lengths use)."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "repeat", "varint"]))
    position = draw(st.integers(0, max(size - 1, 0)))
    if kind == "truncate":
        return ("truncate", position)
    if kind == "flip":
        return ("flip", draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 255)),
                                      min_size=1, max_size=8)))
    if kind == "insert":
        return ("insert", (position, draw(st.binary(min_size=1, max_size=16))))
    if kind in ("delete", "repeat"):
        return (kind, (position, draw(st.integers(1, 64))))
    huge = draw(st.sampled_from([2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]))
    return ("varint", (position, huge))


def apply_byte_mutation(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind in ("truncate", "flip"):  # the same two as for GGUF files
        return apply_gguf_mutation(data, mutation)
    position, value = arg
    if kind == "insert":
        return data[:position] + value + data[position:]
    if kind == "delete":
        return data[:position] + data[position + value:]
    if kind == "repeat":
        return data[:position + value] + data[position:]
    return data[:position] + _protobuf_varint(value) + data[position + 1:]


@st.composite
def sentencepiece_edits(draw, n_pieces: int):
    """An edit of a crafted SentencePiece model (pieces and trainer options): a score that is not
    finite or near the float32 limit, an unknown type, an empty, invalid or very long piece, a
    duplicated or removed piece, an unknown model type, byte fallback without byte pieces."""
    kind = draw(st.sampled_from(["score", "type", "piece", "duplicate", "remove", "model type", "byte fallback"]))
    index = draw(st.integers(0, max(n_pieces - 1, 0)))
    if kind == "score":
        return (kind, index, draw(st.sampled_from([math.inf, -math.inf, math.nan, 3.4e38, -3.4e38, -1e-45])))
    if kind == "type":
        return (kind, index, draw(st.sampled_from([0, 2, 3, 4, 5, 6, 7, 99, -1, 2**40])))
    if kind == "piece":
        return (kind, index, draw(st.sampled_from(["", b"\xff\xfe", "a" * 50_000, "<0x41>", "<0xZZ>", "\u2581" * 3])))
    if kind == "model type":
        return (kind, index, draw(st.sampled_from([0, 3, 4, 99, -1])))
    return (kind, index, None)


def apply_sentencepiece_edit(pieces, options, edit):
    """(pieces, options) for sentencepiece_model_bytes with the edit applied (see sentencepiece_edits)."""
    pieces, options = list(pieces), dict(options)
    kind, index, value = edit
    if kind == "score":
        pieces[index] = (pieces[index][0], value, pieces[index][2])
    elif kind == "type":
        pieces[index] = (pieces[index][0], pieces[index][1], value)
    elif kind == "piece":
        pieces[index] = (value, pieces[index][1], pieces[index][2])
    elif kind == "duplicate":
        pieces.append(pieces[index])
    elif kind == "remove":
        del pieces[index]
    elif kind == "model type":
        options["model_type"] = value
    else:
        options["byte_fallback"] = True
    return pieces, options


JSON_JUNK = (None, True, 0, -1, 2**62, -2**62, 1e308, 0.5, "", "x" * 10_000, [], {}, [1, "a"], {"type": "Sequence"},
             {"Regex": "("}, {"Regex": "(a+)+$"}, [[[[[[[[[[]]]]]]]]]])


def _json_paths(node, prefix=()):
    """Every (path, value) in a JSON document, depth first."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            yield from _json_paths(value, prefix + (k,))


@st.composite
def json_edits(draw, document):
    """An edit of a parsed JSON document: a value replaced by junk, a key deleted, an id given twice,
    a pre-tokenizer wrapped in Sequences many deep, or a Split pattern that backtracks."""
    paths = [path for path, _ in _json_paths(document) if path]
    kind = draw(st.sampled_from(["junk", "delete", "duplicate id", "nest", "pattern"]))
    if kind == "nest":
        return ("nest", draw(st.integers(1, 60)))
    if kind == "pattern":
        return ("pattern", draw(st.sampled_from(["(a+)+$", "(a|aa)*b", "a*a*a*b", "(x)\\1", "[", "x" * 20_000,
                                                 "\\p{Xx}", "(?<=a+)b", "\\p{N}{1,3}", "(?i:'s|'t)"])))
    if kind == "duplicate id":
        return ("duplicate id", draw(st.integers(0, 300)), draw(st.integers(0, 300)))
    return (kind, draw(st.sampled_from(paths)), draw(st.sampled_from(JSON_JUNK)))


def apply_json_edit(document, edit):
    """A copy of the document with the edit applied (see json_edits)."""
    import copy

    document = copy.deepcopy(document)
    kind = edit[0]
    if kind == "nest":
        node = document.get("pre_tokenizer")
        for _ in range(edit[1]):
            node = {"type": "Sequence", "pretokenizers": [node]}
        document["pre_tokenizer"] = node
    elif kind == "pattern":
        document["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": edit[1]}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    elif kind == "duplicate id":
        vocab = document.get("model", {}).get("vocab", {})
        if isinstance(vocab, dict) and vocab:
            tokens = list(vocab)
            vocab[tokens[edit[1] % len(tokens)]] = vocab[tokens[edit[2] % len(tokens)]]
    else:
        _, path, junk = edit
        node = document
        for key in path[:-1]:
            node = node[key]
        if kind == "delete" and isinstance(node, dict):
            node.pop(path[-1], None)
        elif kind == "delete":
            del node[path[-1]]
        else:
            node[path[-1]] = junk
    return document
