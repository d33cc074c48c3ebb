"""Fuzzing the tokenizer file readers: tokenizer.json and SentencePiece .model files.

Mutated, truncated and crafted files (flipped, inserted and deleted bytes, planted huge
varints, fields replaced by junk, deep nesting, huge counts, long pieces, scores at the
float32 limit) go to ByteLevelBPETokenizer.from_tokenizer_json and SentencePieceTokenizer.
Each case runs in a child process (tests/fuzzing.py: run_bounded) with a time and a memory
bound, and must end in one of two ways:

- a clean error: the format's own error class (TokenizerFileError, SentencePieceError)
  with the file's name in its message;
- a load, after which encoding and decoding a probe text work.

An unclear error (any other exception, or a message without the file name), a hang, a
memory blow-up or a crash fails the test. The bases are generated files (small and
medium tokenizers, every pre-tokenizer kind, SentencePiece BPE and unigram models with
user-defined, unused and byte pieces) and real ones (SentencePiece models trained by the
library, with its normalization rules; SmolLM2's vocabulary and merges as a tokenizer.json).

To count outcomes, set TT_FUZZ_TALLY to a file: every case appends its format and
outcome there, and `python tests/test_tokenizer_fuzz.py FILE` prints the counts:

    TT_FUZZ_TALLY=/tmp/tally HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_tokenizer_fuzz.py
    python tests/test_tokenizer_fuzz.py /tmp/tally
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import BAD_KINDS, record, run_bounded, tally_table
from strategies.tokenizers import (apply_byte_mutation, apply_json_edit, apply_sentencepiece_edit, byte_mutations,
                                   json_edits, sentencepiece_edits, sentencepiece_model_bytes, tiny_tokenizer_json)
from tinytransformer.corpus import load_corpus
from tinytransformer.tokenizers import (GPT2_PATTERN, LLAMA3_PATTERN, BPETokenizer, ByteLevelBPETokenizer, SentencePieceError,
                                        SentencePieceTokenizer, TokenizerFileError)
from tinytransformer.tokenizers.byte_level import bytes_to_unicode
from tinytransformer.tokenizers.spm_model_file import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED
from tinytransformer.tokenizers.unicode_regex import compile_pattern

SECONDS, MEGABYTES = 10, 400
PROBE = "Hello wörld, 2024! 漢字 ｆｕｌｌ <|endoftext|> hi hi\n\n  x" + "a" * 26 + "!"
FILE_ERRORS = {"tokenizer.json": TokenizerFileError, "sentencepiece": SentencePieceError}
fuzz_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class NoFileName(Exception):
    """The reader's error did not name the file."""


def outcome_of(fmt: str, path: Path, probe: str = PROBE):
    """Load the file at path as fmt in a bounded child process; encode and decode the probe."""
    error = FILE_ERRORS[fmt]

    def case():
        try:
            if fmt == "tokenizer.json":
                tok = ByteLevelBPETokenizer.from_tokenizer_json(path)
            else:
                tok = SentencePieceTokenizer(path)
            ids = tok.encode(probe)
            assert isinstance(tok.decode(ids), str)
        except error as e:
            if path.name not in str(e):
                raise NoFileName(f"{type(e).__name__}: {e}") from None
            raise

    return run_bounded(case, clean=(error,), seconds=SECONDS, megabytes=MEGABYTES)


def check(fmt: str, path: Path, probe: str = PROBE) -> None:
    """The case ends in a load or a clean error (and is counted when TT_FUZZ_TALLY is set)."""
    outcome = outcome_of(fmt, path, probe)
    record(fmt, path.name, outcome)
    assert outcome.kind not in BAD_KINDS, f"{path.name}: {outcome}"


# ---- the files we start from -----------------------------------------------------------------------
def bpe_tokenizer_json(tok: BPETokenizer, pre_tokenizer=None) -> dict:
    """A trained BPETokenizer written as a Hugging Face tokenizer.json (byte-level BPE)."""
    table = bytes_to_unicode()
    name = ["".join(table[b] for b in token) for token in tok.vocab]
    data = tiny_tokenizer_json()
    data["model"]["vocab"] = {token: i for i, token in enumerate(name)} | {"<|endoftext|>": len(name)}
    data["model"]["merges"] = [f"{name[a]} {name[b]}" for a, b in tok.merges]
    data["added_tokens"][0]["id"] = len(name)
    if pre_tokenizer is not None:
        data["pre_tokenizer"] = pre_tokenizer
    return data


@functools.lru_cache(maxsize=1)
def json_bases() -> dict[str, dict]:
    corpus = load_corpus()[:20_000]
    trained = BPETokenizer.train(corpus, 256 + 200)
    digits_first = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    removed = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    return {"tiny": tiny_tokenizer_json(), "trained-200": bpe_tokenizer_json(trained),
            "digits": bpe_tokenizer_json(trained, digits_first), "llama3-split": bpe_tokenizer_json(trained, llama3),
            "removed-spaces": bpe_tokenizer_json(trained, removed)}


BYTE_PIECES = [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]


@functools.lru_cache(maxsize=1)
def sentencepiece_bases() -> dict[str, tuple[list, dict]]:
    """Crafted models: (pieces, options for sentencepiece_model_bytes)."""
    words = [("▁", -1.0, NORMAL), ("a", -2.0, NORMAL), ("b", -2.5, NORMAL), ("ab", -1.5, NORMAL),
             ("▁ab", -1.2, NORMAL), ("ba", -3.0, UNUSED), ("<tag>", 0.0, USER_DEFINED), ("H", -4.0, NORMAL),
             ("l", -3.0, NORMAL), ("lo", -3.5, NORMAL), ("ll", -2.9, NORMAL)]
    special = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    return {"unigram": (special + words, {"model_type": 1}),
            "bpe": (special + words, {"model_type": 2}),
            "unigram-bytes": (special + BYTE_PIECES + words, {"model_type": 1, "byte_fallback": True}),
            "bpe-bytes-no-prefix": (special + BYTE_PIECES + words,
                                    {"model_type": 2, "byte_fallback": True, "add_dummy_prefix": False})}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Every base file's bytes, by format and name; real SentencePiece models when the library is here."""
    files = {"tokenizer.json": {name: json.dumps(data).encode() for name, data in json_bases().items()},
             "sentencepiece": {name: sentencepiece_model_bytes(pieces, **options)
                               for name, (pieces, options) in sentencepiece_bases().items()}}
    try:
        import sentencepiece as spm
    except ImportError:
        return files
    folder = tmp_path_factory.mktemp("spm-fuzz")
    text = folder / "train.txt"
    text.write_text(load_corpus()[:20_000], encoding="utf-8")
    for model_type in ("bpe", "unigram"):
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / model_type), minloglevel=2,
                                       num_threads=1, model_type=model_type, vocab_size=400,
                                       user_defined_symbols=["<tag>"], byte_fallback=model_type == "bpe")
        files["sentencepiece"][f"trained-{model_type}"] = (folder / f"{model_type}.model").read_bytes()
    return files


@pytest.fixture(scope="module", autouse=True)
def compiled_patterns():
    """Compile the usual pre-tokenizer patterns once, here: every forked case inherits them."""
    for pattern in (GPT2_PATTERN, LLAMA3_PATTERN, r"\p{N}", r"\p{N}+", " "):
        compile_pattern(pattern)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---- mutated and truncated files ---------------------------------------------------------------------
@fuzz_settings
@given(data=st.data(), fmt=st.sampled_from(sorted(FILE_ERRORS)))
def test_a_file_with_mutated_bytes_loads_or_fails_cleanly(bases, tmp_path, data, fmt):
    name = data.draw(st.sampled_from(sorted(bases[fmt])), label="base")
    original = bases[fmt][name]
    mutated = apply_byte_mutation(original, data.draw(byte_mutations(len(original)), label="mutation"))
    check(fmt, write(tmp_path, f"mutated-{name}", mutated))


@fuzz_settings
@given(data=st.data(), fmt=st.sampled_from(sorted(FILE_ERRORS)))
def test_a_truncated_file_fails_cleanly(bases, tmp_path, data, fmt):
    name = data.draw(st.sampled_from(sorted(bases[fmt])), label="base")
    original = bases[fmt][name]
    cut = data.draw(st.integers(0, len(original) - 1), label="cut")
    check(fmt, write(tmp_path, f"truncated-{name}", original[:cut]))


@fuzz_settings
@given(data=st.data())
def test_a_tokenizer_json_with_an_edited_field_loads_or_fails_cleanly(tmp_path, data):
    documents = json_bases()
    name = data.draw(st.sampled_from(sorted(documents)), label="base")
    edited = apply_json_edit(documents[name], data.draw(json_edits(documents[name]), label="edit"))
    check("tokenizer.json", write(tmp_path, f"edited-{name}.json", json.dumps(edited).encode()))


@fuzz_settings
@given(data=st.data())
def test_a_sentencepiece_model_with_an_edited_piece_loads_or_fails_cleanly(tmp_path, data):
    models = sentencepiece_bases()
    name = data.draw(st.sampled_from(sorted(models)), label="base")
    pieces, options = models[name]
    pieces, options = apply_sentencepiece_edit(pieces, options, data.draw(sentencepiece_edits(len(pieces))))
    check("sentencepiece", write(tmp_path, f"edited-{name}.model", sentencepiece_model_bytes(pieces, **options)))


# ---- crafted files: huge counts, deep nesting, long pieces ----------------------------------------------
@functools.lru_cache(maxsize=1)
def crafted_json_cases() -> dict[str, bytes]:
    tiny = tiny_tokenizer_json()

    def edited(**changes):
        data = json.loads(json.dumps(tiny))
        for dotted, value in changes.items():
            node = data
            keys = dotted.split(".")
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = value
        return json.dumps(data).encode()

    sequence = tiny["pre_tokenizer"]
    for _ in range(40):  # deeper than MAX_SEQUENCE_DEPTH, shallower than the JSON limit
        sequence = {"type": "Sequence", "pretokenizers": [sequence]}
    table = bytes_to_unicode()
    return {
        "deep-array.json": b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep-object.json": b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
        "deep-sequence.json": edited(pre_tokenizer=sequence),
        "huge-id.json": edited(**{"model.vocab.hi": 2**62}),
        "negative-id.json": edited(**{"model.vocab.hi": -1}),
        "float-id.json": edited(**{"model.vocab.hi": 1e308}),
        "nan-id.json": edited(**{"model.vocab.hi": float("nan")}),
        "duplicate-ids.json": edited(**{"model.vocab.Ġhi": 256}),
        "huge-merges.json": edited(**{"model.merges": ["x y"] * 300_000}),
        "many-added-tokens.json": edited(added_tokens=[{"id": 259 + k, "content": f"<t{k}>"} for k in range(5_000)],
                                         **{"model.vocab": {**tiny["model"]["vocab"],
                                                            **{f"<t{k}>": 259 + k for k in range(5_000)}}}),
        "long-token.json": edited(**{"model.vocab": {**tiny["model"]["vocab"], "x" * 5_000_000: 259}}),
        "long-pattern.json": edited(pre_tokenizer={"type": "Split", "pattern": {"Regex": "a|" * 200_000 + "b"}}),
        "nested-quantifier.json": edited(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(\\s+)+$"}, "behavior": "Isolated"},
            {"type": "ByteLevel", "use_regex": False}]}),
        "deeply-nested-groups.json": edited(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?=" * 2000 + "a" + ")" * 2000}, "behavior": "Isolated"},
            {"type": "ByteLevel", "use_regex": False}]}),
        "alternation-in-star.json": edited(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(a|a)*b"}, "behavior": "Isolated"},
            {"type": "ByteLevel", "use_regex": False}]}),
        "all-byte-tokens-missing.json": edited(**{"model.vocab": {"hi": 0}, "model.merges": []}),
        "latin-1.json": json.dumps(tiny, ensure_ascii=False).encode("utf-8").replace("Ġ".encode(), b"\xc4"),
        "not-json.json": bytes(range(256)) * 10,
        "empty.json": b"",
        "byte-tokens-only.json": edited(**{"model.vocab": {table[b]: b for b in range(256)}, "model.merges": [],
                                           "added_tokens": []}),
    }


@pytest.mark.parametrize("name", sorted(crafted_json_cases()))
def test_a_crafted_tokenizer_json_loads_or_fails_cleanly(tmp_path, name):
    check("tokenizer.json", write(tmp_path, name, crafted_json_cases()[name]))


@functools.lru_cache(maxsize=1)
def crafted_sentencepiece_cases() -> dict[str, tuple[bytes, str]]:
    """(file bytes, probe text) per case."""
    from strategies.tokenizers import protobuf_field

    base = [("<unk>", 0.0, UNKNOWN), ("a", -2.0, NORMAL), ("b", -2.5, NORMAL), ("▁", -1.0, NORMAL)]
    chain = [("<unk>", 0.0, UNKNOWN), ("a", 0.0, NORMAL), ("▁", 0.0, NORMAL)] + \
        [("a" * k, float(k), UNUSED) for k in range(2, 1502)]
    tiny = sentencepiece_model_bytes(base)
    return {
        "long-piece.model": (sentencepiece_model_bytes(base + [("ab" * 40_000, -5.0, NORMAL)]), "ab" * 500),
        "long-user-defined-unigram.model": (sentencepiece_model_bytes(base + [("ab" * 10_000, 0.0, USER_DEFINED)]),
                                            "ab" * 4_000),
        "long-user-defined-bpe.model": (sentencepiece_model_bytes(base + [("ab" * 10_000, 0.0, USER_DEFINED)],
                                                                  model_type=2), "ab" * 4_000),
        "unused-chain.model": (sentencepiece_model_bytes(chain, model_type=2, add_dummy_prefix=False), "a" * 1501),
        "no-normal-piece-unigram.model": (sentencepiece_model_bytes([("<unk>", 0.0, UNKNOWN)]), PROBE),
        "no-normal-piece-bpe.model": (sentencepiece_model_bytes([("<unk>", 0.0, UNKNOWN)], model_type=2), PROBE),
        "scores-at-float32-limit.model": (sentencepiece_model_bytes(
            [("<unk>", 0.0, UNKNOWN), ("a", -3.4e38, NORMAL), ("b", 3.4e38, NORMAL), ("▁", -3e38, NORMAL)]),
            "ab ba " * 50),
        "nan-scores.model": (sentencepiece_model_bytes([(p, float("nan"), t) for p, _, t in base]), "ab ba"),
        "many-pieces.model": (sentencepiece_model_bytes(base + [(f"p{k}", -float(k), NORMAL) for k in range(20_000)]),
                              PROBE),
        "many-user-defined.model": (sentencepiece_model_bytes(
            base + [(f"<u{k}>", 0.0, USER_DEFINED) for k in range(5_000)], model_type=2), "<u1><u4999>" * 100),
        "huge-length.model": (tiny + b"\x0a" + b"\xff" * 9 + b"\x01", PROBE),
        "huge-field-number.model": (tiny + b"\xf8\xff\xff\xff\x0f\x00", PROBE),
        "varint-too-long.model": (tiny + b"\x08" + b"\x80" * 20, PROBE),
        "group-wire-type.model": (tiny + b"\x0b", PROBE),
        "charsmap-huge-trie.model": (tiny + protobuf_field(3, protobuf_field(2, b"\xff\xff\xff\x7f" + b"\x00" * 64)),
                                     PROBE),
        "charsmap-garbage.model": (tiny + protobuf_field(3, protobuf_field(2, (256).to_bytes(4, "little")
                                                                             + bytes(range(256)) + b"x\x00" * 20)),
                                   PROBE),
        "byte-fallback-without-bytes.model": (sentencepiece_model_bytes(base, byte_fallback=True), PROBE),
        "bad-byte-piece.model": (sentencepiece_model_bytes(base + [("<0xZZ>", 0.0, BYTE)], byte_fallback=True), PROBE),
        "not-protobuf.model": (b"\x00" * 1000, PROBE),
    }


@pytest.mark.parametrize("name", sorted(crafted_sentencepiece_cases()))
def test_a_crafted_sentencepiece_model_loads_or_fails_cleanly(tmp_path, name):
    data, probe = crafted_sentencepiece_cases()[name]
    check("sentencepiece", write(tmp_path, name, data), probe)


# ---- a real model's tokenizer.json -------------------------------------------------------------------
@pytest.mark.model
@settings(fuzz_settings, max_examples=6)
@given(data=st.data())
def test_smollm2s_tokenizer_json_mutated_or_truncated_loads_or_fails_cleanly(smollm2_path, tmp_path, data):
    original = smollm2_tokenizer_json(smollm2_path)
    if data.draw(st.booleans(), label="truncate"):
        mutated = original[:data.draw(st.integers(0, len(original) - 1), label="cut")]
    else:
        mutated = apply_byte_mutation(original, data.draw(byte_mutations(len(original)), label="mutation"))
    check("tokenizer.json", write(tmp_path, "smollm2-tokenizer.json", mutated))


_SMOLLM2_JSON: dict = {}


def smollm2_tokenizer_json(gguf_path) -> bytes:
    """SmolLM2's vocabulary, merges, added tokens and pre-tokenizer, written as a tokenizer.json."""
    if not _SMOLLM2_JSON:
        tok = ByteLevelBPETokenizer.from_gguf(gguf_path)
        data = tiny_tokenizer_json()
        by_rank = sorted(tok.ranks.items(), key=lambda item: item[1][0])
        data["model"]["vocab"] = dict(tok.vocab)
        data["model"]["merges"] = [f"{tok.id_to_token[a]} {tok.id_to_token[b]}" for (a, b), _ in by_rank]
        data["added_tokens"] = [{"id": i, "content": token} for token, i in tok.added_tokens.items()]
        data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
        _SMOLLM2_JSON["data"] = json.dumps(data).encode()
    return _SMOLLM2_JSON["data"]


def main(argv: list[str]) -> int:
    """Print the counts of a TT_FUZZ_TALLY file: cases per format and how each ended."""
    if len(argv) != 1:
        print("usage: python tests/test_tokenizer_fuzz.py TALLY_FILE", file=sys.stderr)
        return 2
    print(tally_table(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
