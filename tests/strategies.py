"""Hypothesis strategies shared by every test file.

Shapes are deliberately small and ragged: sequence lengths that are not
multiples of any tile size, every GQA group ratio, T != S.
Chapters add their own strategies below, each under a heading.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

FLOAT_DTYPES = (np.float32, np.float64)


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    n_heads: int
    n_kv_heads: int
    q_len: int  # T
    kv_len: int  # S
    head_dim: int  # D

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


@st.composite
def attention_shapes(draw, *, max_len: int = 33, head_dims=(1, 2, 3, 4, 8, 16), q_le_kv=False):
    """[B, Hq, T, D] / [B, Hkv, S, D] with Hq % Hkv == 0, any T and S (T <= S if q_le_kv)."""
    n_kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 4))
    kv_len = draw(st.integers(1, max_len))
    q_len = draw(st.integers(1, kv_len if q_le_kv else max_len))
    return AttentionShape(
        batch=draw(st.integers(1, 2)),
        n_heads=n_kv_heads * group,
        n_kv_heads=n_kv_heads,
        q_len=q_len,
        kv_len=kv_len,
        head_dim=draw(st.sampled_from(head_dims)),
    )


def seeds():
    return st.integers(0, 2**32 - 1)


def dtypes():
    return st.sampled_from(FLOAT_DTYPES)


def finite_logits(max_dims: int = 3, max_side: int = 6, magnitude: float = 1e4):
    """Finite float16, float32 or float64 arrays of rank 1 to max_dims, entries in [-magnitude, magnitude]."""
    from hypothesis.extra import numpy as hnp

    return st.sampled_from([np.float16, np.float32, np.float64]).flatmap(lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=1, max_dims=max_dims, max_side=max_side),
        elements=st.floats(-magnitude, magnitude, width=np.finfo(dtype).bits)))


def random_qkv(shape: AttentionShape, seed: int, dtype=np.float64, scale: float = 1.0):
    """q [B, Hq, T, D], k and v [B, Hkv, S, D] with standard normal entries times scale."""
    rng = np.random.default_rng(seed)
    b, hq, hkv, t, s, d = (shape.batch, shape.n_heads, shape.n_kv_heads,
                           shape.q_len, shape.kv_len, shape.head_dim)
    q = (rng.standard_normal((b, hq, t, d)) * scale).astype(dtype)
    k = (rng.standard_normal((b, hkv, s, d)) * scale).astype(dtype)
    v = rng.standard_normal((b, hkv, s, d)).astype(dtype)
    return q, k, v


@st.composite
def model_configs(draw):
    """Small TransformerConfigs over every choice: MHA/GQA/MQA, norms, FFNs, positions, blocks."""
    from tinytransformer.model import TransformerConfig

    n_kv_heads = draw(st.integers(1, 2))
    n_heads = n_kv_heads * draw(st.integers(1, 3))
    return TransformerConfig(
        vocab_size=draw(st.integers(2, 40)),
        d_model=n_heads * draw(st.sampled_from([2, 4])),
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=draw(st.integers(1, 16)),
        max_seq_len=24,
        norm=draw(st.sampled_from(["rms", "layer"])),
        ffn=draw(st.sampled_from(["swiglu", "gelu"])),
        position=draw(st.sampled_from(["rope", "alibi", "learned", "sinusoidal"])),
        block=draw(st.sampled_from(["pre", "post"])),
        rope_interleaved=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()),
    )


# --- text (tokenizer chapter) -------------------------------------------------------

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


# --- n-gram chapter -----------------------------------------------------------------

NGRAM_WORDS = ("a", "b", "c", "d", "e", "f")  # few words, so n-grams repeat and counts of counts fill


def ngram_sentences(*, max_sentences: int = 10, max_len: int = 8, words=NGRAM_WORDS, min_sentences: int = 1):
    """A small corpus: a list of sentences, each a list of str tokens (possibly empty)."""
    sentence = st.lists(st.sampled_from(words), min_size=0, max_size=max_len)
    return st.lists(sentence, min_size=min_sentences, max_size=max_sentences)


def ngram_orders(max_order: int = 4):
    return st.integers(1, max_order)


def ngram_smoothings():
    return st.sampled_from(("mle", "laplace", "add-k", "kneser-ney", "modified-kneser-ney"))


NGRAM_QUERY_WORDS = NGRAM_WORDS + ("zz", "<s>", "</s>")  # "zz" is never in training: the <unk> path


def ngram_contexts(sentences, order, rng, extra=4):
    """(contexts of the scored tokens of the training text, a few random contexts, some unseen)."""
    seen = set()
    for s in sentences:
        padded = ["<s>"] * (order - 1) + list(s) + ["</s>"]
        for i in range(order - 1, len(padded)):
            seen.add(tuple(padded[i - order + 1:i]))
    drawn = set()
    for _ in range(extra):
        length = int(rng.integers(0, order))
        drawn.add(tuple(str(w) for w in rng.choice(NGRAM_QUERY_WORDS, length)))
    return sorted(seen), sorted(drawn - seen)


# Replacement fields and lines for corrupting ARPA files: numbers at and past the edges of float64,
# counts of thousands of digits, words with odd characters, lines out of place.
ARPA_FIELDS = ("0", "-0", "1", "0.5", "-99", "-1e308", "1e308", "-inf", "inf", "nan", "+3", "9" * 5000, "1e-320",
               "1_0", "0x10", "--1", "<s>", "</s>", "<unk>", "a", "\\end\\", "\\data\\", "\u00a0", "é", "x" * 300)
ARPA_COUNTS = ("0", "1", "2", "-1", "9" * 5000, str(10**18 - 1), str(10**17), "99999999999")
ARPA_LINES = ("\\3-grams:", "ngram 9=1", "-1 a b c d e", "-0.5\t" + "x" * 10000, "\\data\\", "\\end\\",
              "-1\t<s>\t" + "1" * 400, "\ufeff-1\ta", "-1\ta\x00b", "ngram 1=" + "9" * 30,
              "\\99999999999999999999-grams:", "-1 \u2028 a", "-1\t<s> <s>\t2", "ngram 2 = 1")
ARPA_POSITIVE_WEIGHTS = ("0.001", "0.3", "1", "5", "300", "1e308")


@st.composite
def arpa_mutations(draw, n_lines: int, size: int):
    """Ways to corrupt an ARPA file of `n_lines` lines and `size` bytes: a truncation, flipped bytes,
    a field replaced, a line duplicated, deleted, moved or inserted, a header count changed, a
    positive back-off weight planted."""
    kind = draw(st.sampled_from(["truncate", "flip", "field", "duplicate", "delete", "swap", "count",
                                 "insert", "weight"]))
    if kind == "truncate":
        return ("truncate", draw(st.integers(0, size - 1)))
    if kind == "flip":
        new = st.sampled_from(list(b"0123456789-+.e \t\n\\=<>/s\x00\xff\xc3"))
        return ("flip", draw(st.lists(st.tuples(st.integers(0, size - 1), new), min_size=1, max_size=8)))
    if kind == "count":
        return ("count", (draw(st.integers(1, 4)), draw(st.sampled_from(ARPA_COUNTS))))
    line = draw(st.integers(0, n_lines - 1))
    if kind == "field":
        return ("field", (line, draw(st.integers(0, 5)), draw(st.sampled_from(ARPA_FIELDS))))
    if kind == "swap":
        return ("swap", (line, draw(st.integers(0, n_lines - 1))))
    if kind == "insert":
        return ("insert", (line, draw(st.sampled_from(ARPA_LINES))))
    if kind == "weight":
        return ("weight", (line, draw(st.sampled_from(ARPA_POSITIVE_WEIGHTS))))
    return (kind, line)


def apply_arpa_mutation(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "truncate":
        return data[:arg]
    if kind == "flip":
        out = bytearray(data)
        for position, byte in arg:
            out[position] = byte
        return bytes(out)
    lines = data.split(b"\n")
    if kind == "count":
        order, count = arg
        prefix = f"ngram {order}=".encode()
        return b"\n".join(prefix + count.encode() if line.startswith(prefix) else line for line in lines)
    if kind == "field":
        line, index, value = arg
        fields = lines[line].split()
        fields[min(index, len(fields)):index + 1] = [value.encode()]
        lines[line] = b"\t".join(fields)
    elif kind == "weight":  # the last field of an n-gram line with a back-off weight, else appended
        line, value = arg
        fields = lines[line].split()
        lines[line] = b"\t".join((fields[:-1] if len(fields) >= 3 else fields) + [value.encode()])
    elif kind == "swap":
        a, b = arg
        lines[a], lines[b] = lines[b], lines[a]
    elif kind == "insert":
        line, text = arg
        lines.insert(line, text.encode())
    elif kind == "duplicate":
        lines.insert(arg, lines[arg])
    else:  # delete
        del lines[arg]
    return b"\n".join(lines)


# --- pretrained model / GGUF --------------------------------------------------------

_GGUF_SCALARS = {
    np.uint8: st.integers(0, 2**8 - 1), np.int8: st.integers(-2**7, 2**7 - 1),
    np.uint16: st.integers(0, 2**16 - 1), np.int16: st.integers(-2**15, 2**15 - 1),
    np.uint32: st.integers(0, 2**32 - 1), np.int32: st.integers(-2**31, 2**31 - 1),
    np.uint64: st.integers(0, 2**64 - 1), np.int64: st.integers(-2**63, 2**63 - 1),
    np.float32: st.floats(width=32, allow_nan=False), np.float64: st.floats(allow_nan=False),
}


def gguf_scalars(dtype=None):
    """One typed GGUF metadata value: a NumPy scalar of one of the 10 numeric types, a bool, or a str."""
    numeric = [st.builds(t, strat) for t, strat in _GGUF_SCALARS.items()] if dtype is None \
        else [st.builds(dtype, _GGUF_SCALARS[dtype])]
    return st.one_of(*numeric, st.booleans(), st.text(max_size=20)) if dtype is None else numeric[0]


@st.composite
def gguf_arrays(draw, depth: int = 0):
    """A GGUF array value: a list of one element type (numbers, bools, strings, or arrays)."""
    kind = draw(st.sampled_from(["number", "bool", "str"] + (["array"] if depth < 2 else [])))
    n = draw(st.integers(0, 6))
    if kind == "number":
        dtype = draw(st.sampled_from(list(_GGUF_SCALARS)))
        return np.array(draw(st.lists(_GGUF_SCALARS[dtype], min_size=n, max_size=n)), dtype=dtype)
    if kind == "bool":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if kind == "str":
        return draw(st.lists(st.text(max_size=10), min_size=n, max_size=n))
    return [draw(gguf_arrays(depth=depth + 1)) for _ in range(n)]


def gguf_values():
    return st.one_of(gguf_scalars(), gguf_arrays())


def gguf_metadata():
    """Metadata dicts key -> typed value, as `write_gguf` takes them. Not the key general.alignment:
    that one is the file's layout, which write_gguf checks against its alignment argument (hypothesis
    finds the key among the module's constants; its own tests cover it)."""
    keys = st.text(min_size=1, max_size=24).filter(lambda key: key != "general.alignment")
    return st.dictionaries(keys, gguf_values(), max_size=6)


def gguf_python_value(value):
    """What the reader should return for a value given to the writer: a Python scalar, a NumPy
    array for an array of numbers or bools (an empty list is written as an empty int32 array),
    a list of str, or a list of such values."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        if not value:
            return np.zeros(0, np.int32)
        if all(isinstance(v, bool) for v in value):
            return np.array(value, dtype=np.bool_)
        return [gguf_python_value(v) for v in value]
    return value


def gguf_same(a, b) -> bool:
    """Exact equality of two metadata values as the reader returns them, types and dtypes included."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype \
            and a.shape == b.shape and bool(np.all(a == b))
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(gguf_same, a, b))
    return type(a) is type(b) and a == b


def gguf_header(version: int = 3, n_tensors: int = 0, n_kv: int = 0, magic: bytes = b"GGUF") -> bytes:
    """The fixed GGUF header, for crafting files by hand (any counts, true or not)."""
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf_string(text) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return struct.pack("<Q", len(data)) + data


def gguf_kv(key, value_type: int, body: bytes) -> bytes:
    """One metadata entry: key, value type, and the value's bytes as given."""
    return gguf_string(key) + struct.pack("<I", value_type) + body


def gguf_tensor_info(name, dims, kind: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + struct.pack("<IQ", kind, offset)


@st.composite
def gguf_mutations(draw, size: int):
    """Ways to corrupt a GGUF file of `size` bytes: flipped bytes, a truncation, a planted huge count."""
    kind = draw(st.sampled_from(["flip", "truncate", "huge"]))
    if kind == "truncate":
        return ("truncate", draw(st.integers(0, size - 1)))
    if kind == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=8))
        return ("flip", flips)
    value = draw(st.sampled_from([2**63 - 1, 2**64 - 1, 2**40, 2**32 - 1, 10**12]))
    return ("huge", (draw(st.integers(0, size - 8)), value))


def apply_gguf_mutation(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "truncate":
        return data[:arg]
    out = bytearray(data)
    if kind == "flip":
        for position, xor in arg:
            out[position] ^= xor
    else:
        position, value = arg
        out[position:position + 8] = value.to_bytes(8, "little")
    return bytes(out)


@st.composite
def tiny_llama_configs(draw):
    """Keyword arguments for random_llama.write_random_llama: small, every GQA ratio, both head layouts."""
    n_kv_heads = draw(st.sampled_from([1, 2]))
    n_heads = n_kv_heads * draw(st.sampled_from([1, 2, 4]))
    return dict(n_layers=draw(st.integers(1, 2)), dim=32 * draw(st.integers(1, 2)),
                n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_dim=32 * draw(st.integers(1, 3)),
                seed=draw(st.integers(0, 1000)), tied_embeddings=draw(st.booleans()),
                weight_type=draw(st.sampled_from([0, 1, 2, 3, 8, 30])))


def token_ids(vocab_size: int, min_size: int = 1, max_size: int = 24):
    return st.lists(st.integers(0, vocab_size - 1), min_size=min_size, max_size=max_size)


# --- CUDA kernels / paged cache -----------------------------------------------------

# Cases for the kernels: lengths past every tile size (v2 tiles 32 x 16/32, v3 64 x 32/64,
# decode 32 keys), head dims that are and are not the padded widths (32/64/128).
KERNEL_HEAD_DIMS = (1, 3, 8, 16, 24, 64, 100, 128)
KERNEL_DTYPES = ("float32", "float16", "bfloat16")


@st.composite
def kernel_attention_cases(draw, *, max_len: int = 80, head_dims=KERNEL_HEAD_DIMS, dtypes=KERNEL_DTYPES):
    """(AttentionShape, causal, alibi, dtype name, seed) for the flash kernels."""
    shape = draw(attention_shapes(max_len=max_len, head_dims=head_dims))
    return shape, draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from(dtypes)), draw(seeds())


def encode_dtype(x, dtype: str):
    """(array to pass to a kernel, the float64 values it holds, dtype= argument) for a dtype name."""
    from tinytransformer.cuda import from_bfloat16_bits, to_bfloat16_bits

    if dtype == "bfloat16":
        bits = to_bfloat16_bits(x)
        return bits, from_bfloat16_bits(bits).astype(np.float64), "bfloat16"
    stored = np.asarray(x).astype(dtype)
    return stored, stored.astype(np.float64), None


@dataclass(frozen=True)
class PagedCase:
    n_kv_heads: int
    group: int  # G = Hq / Hkv
    head_dim: int
    block_size: int
    lengths: tuple  # context length of each sequence (counting the q_len new tokens)
    q_len: int  # T: new tokens per sequence (1 = plain decoding, more = speculative verification)
    interleave: bool  # append the sequences' chunks in a shuffled order (scattered block tables)
    decoy: bool  # a sequence that grows alongside and is freed, leaving holes in the free list
    seed: int


@st.composite
def paged_cases(draw, *, max_len: int = 70, max_batch: int = 3, head_dims=(1, 4, 8, 32, 50, 64, 128)):
    lengths = tuple(draw(st.lists(st.integers(1, max_len), min_size=1, max_size=max_batch)))
    return PagedCase(
        n_kv_heads=draw(st.integers(1, 2)),
        group=draw(st.sampled_from((1, 2, 3, 4, 8))),
        head_dim=draw(st.sampled_from(head_dims)),
        block_size=draw(st.sampled_from((1, 3, 4, 16))),
        lengths=lengths,
        q_len=draw(st.integers(1, 3)),
        interleave=draw(st.booleans()),
        decoy=draw(st.booleans()),
        seed=draw(seeds()),
    )


def build_paged_cache(case: PagedCase, dtype=np.float64):
    """Fill a one-layer PagedKVCache as a server would, in chunks, interleaved or not.

    Returns (cache, seq_ids, ks, vs): ks[b] and vs[b] are the contiguous [Hkv, L_b, D]
    arrays that were appended, the independent oracle for what the cache must hold.
    """
    from tinytransformer.paged_cache import PagedKVCache

    rng = np.random.default_rng(case.seed)
    Hkv, D, bs = case.n_kv_heads, case.head_dim, case.block_size
    ks = [rng.standard_normal((Hkv, L, D)).astype(dtype) for L in case.lengths]  # the data depends on
    vs = [rng.standard_normal((Hkv, L, D)).astype(dtype) for L in case.lengths]  # the seed alone, not the layout
    lengths = list(case.lengths)
    if case.decoy:
        lengths.append(int(rng.integers(1, 40)))
        ks.append(np.zeros((Hkv, lengths[-1], D), dtype=dtype))
        vs.append(np.zeros((Hkv, lengths[-1], D), dtype=dtype))
    need = sum(-(-L // bs) for L in lengths)
    cache = PagedKVCache(1, Hkv, D, n_blocks=need + 1, block_size=bs, dtype=dtype)
    ids = [cache.add_sequence() for _ in lengths]
    chunks = []  # (sequence index, start, stop), in order within each sequence
    for s, L in enumerate(lengths):
        start = 0
        while start < L:
            stop = min(L, start + int(rng.integers(1, 6)))
            chunks.append((s, start, stop))
            start = stop
    if case.interleave:  # a random merge that keeps each sequence's chunks in order
        keys = rng.random(len(chunks))
        order = sorted(range(len(chunks)), key=lambda c: (keys[c], chunks[c][1]))
        per_seq = {s: [c for c in chunks if c[0] == s] for s in range(len(lengths))}
        chunks = [per_seq[chunks[c][0]].pop(0) for c in order]
    for s, start, stop in chunks:
        cache.append(ids[s], ks[s][:, start:stop], vs[s][:, start:stop])
    if case.decoy:
        cache.free(ids.pop())
        ks.pop(), vs.pop()
    return cache, ids, ks, vs


# --- quantisation ---------------------------------------------------------------------

# How the values of a tensor to quantise are drawn: the cases quantisers get wrong.
QUANT_VALUE_KINDS = ("normal", "heavy-tailed", "outliers", "constant", "zero", "tiny", "subnormal", "huge",
                     "positive", "sparse", "ties")


def quant_values(kind: str, shape, seed: int) -> np.ndarray:
    """A float32 array of `shape` whose values are of one kind of QUANT_VALUE_KINDS."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(shape)
    x = {
        "normal": normal,
        "heavy-tailed": rng.standard_t(2, shape),
        "outliers": normal * np.where(rng.random(shape) < 0.02, 100.0, 1.0),
        "constant": np.full(shape, rng.standard_normal()),
        "zero": np.zeros(shape),
        "tiny": normal * 1e-8,
        "subnormal": normal * 1e-40,
        "huge": normal * 1e4,
        "positive": np.abs(normal) + 0.5,
        "sparse": normal * (rng.random(shape) < 0.05),
        "ties": np.round(normal * 4) / 4,  # many exact halves of a step
    }[kind]
    return np.asarray(x, dtype=np.float32)


@st.composite
def quant_tensors(draw, *, multiple_of: int = 32, max_rows: int = 4, max_blocks: int = 4, kinds=QUANT_VALUE_KINDS):
    """A float32 matrix [rows, k * multiple_of] of one value kind: what a block quantiser takes."""
    shape = (draw(st.integers(1, max_rows)), multiple_of * draw(st.integers(1, max_blocks)))
    return quant_values(draw(st.sampled_from(kinds)), shape, draw(seeds()))


@st.composite
def calibration_layers(draw, *, group_sizes=(32, 64)):
    """(weight [C_out, C_in], activations x [n, C_in] with correlated channels of very different sizes,
    group size): a linear layer and its calibration set, as GPTQ and AWQ see them."""
    group = draw(st.sampled_from(group_sizes))
    n_in = group * draw(st.integers(1, 3))
    n_out = draw(st.integers(8, 24))
    rng = np.random.default_rng(draw(seeds()))
    weight = rng.standard_normal((n_out, n_in)).astype(np.float32)
    mixing = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)  # correlated inputs
    channel_scale = np.exp(rng.standard_normal(n_in))  # some channels much larger than others
    x = (rng.standard_normal((2 * n_in, n_in)) @ mixing) * channel_scale
    return weight, x.astype(np.float32), group


# --- serving chapter ------------------------------------------------------------------


@st.composite
def serving_models(draw):
    """A small random TinyTransformer of any architecture, in float64 so that batching cannot
    flip a greedy choice through rounding (the laws compare token ids)."""
    from tinytransformer.model import TinyTransformer, init_params

    config = draw(model_configs())
    return TinyTransformer(config, init_params(config, seed=draw(seeds()), dtype=np.float64))


def serving_prompts(vocab_size: int, *, max_prompts: int = 5, max_len: int = 8):
    """A few prompts (lists of token ids) of ragged lengths."""
    prompt = st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=max_len)
    return st.lists(prompt, min_size=1, max_size=max_prompts)


# --- training chapter ---------------------------------------------------------------


@st.composite
def activation_shapes(draw, *, max_len: int = 9, max_width: int = 12):
    """[B, T, C] for a layer's activations: odd and even lengths, widths from 1."""
    return (draw(st.integers(1, 3)), draw(st.integers(1, max_len)), draw(st.integers(1, max_width)))


def coordinates(rng, shape, n: int = 3):
    """n random multi-indices into an array of `shape` (for finite-difference checks)."""
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]
