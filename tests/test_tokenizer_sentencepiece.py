"""Our SentencePiece encoder equals the sentencepiece library on models trained on the built-in corpus."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from strategies.tokenizers import sentencepiece_model_bytes, sentencepiece_vocabularies, tokenizer_text
from tinytransformer.corpus import load_corpus
from tinytransformer.tokenizers import SentencePieceError, SentencePieceTokenizer
from tinytransformer.tokenizers.spm_model_file import (BPE, UNIGRAM, model_file_bytes, parse_model_file,
                                                      round_float32)
from tinytransformer.tokenizers.spm_normalizer import decode_bytes_like_sentencepiece

# (name, trainer options): both model types, several vocabulary sizes, byte fallback on and off,
# the default nmt_nfkc rule, identity and nfkc_cf, user-defined and control symbols, no dummy
# prefix, whitespace as a suffix.
CONFIGS = {
    "unigram-500-nfkc": dict(model_type="unigram", vocab_size=500),
    "bpe-500-nfkc": dict(model_type="bpe", vocab_size=500),
    "unigram-800-bytes": dict(model_type="unigram", vocab_size=800, byte_fallback=True),
    "bpe-1000-bytes": dict(model_type="bpe", vocab_size=1000, byte_fallback=True),
    "unigram-300-identity": dict(model_type="unigram", vocab_size=300, normalization_rule_name="identity"),
    "bpe-400-identity-bytes": dict(model_type="bpe", vocab_size=400, normalization_rule_name="identity",
                                   byte_fallback=True),
    "unigram-400-symbols": dict(model_type="unigram", vocab_size=400, user_defined_symbols=["<tag>", "ab"],
                                control_symbols=["<ctl>"]),
    "bpe-400-no-prefix": dict(model_type="bpe", vocab_size=400, user_defined_symbols=["<tag>"],
                              add_dummy_prefix=False, remove_extra_whitespaces=False),
    "bpe-500-suffix-bytes": dict(model_type="bpe", vocab_size=500, treat_whitespace_as_suffix=True,
                                 byte_fallback=True),
    "unigram-500-nfkc_cf-digits": dict(model_type="unigram", vocab_size=500, normalization_rule_name="nfkc_cf",
                                       split_digits=True),
}


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory):
    """Train every CONFIGS model once per session on a 40 kB slice of the built-in corpus."""
    spm = require("sentencepiece", "the parity oracle")
    folder = tmp_path_factory.mktemp("spm")
    train_file = folder / "train.txt"
    train_file.write_text(load_corpus()[:40_000], encoding="utf-8")
    models = {}
    for name, options in CONFIGS.items():
        prefix = folder / name
        spm.SentencePieceTrainer.train(input=str(train_file), model_prefix=str(prefix), minloglevel=2,
                                       num_threads=1, **options)
        models[name] = str(prefix) + ".model"
    return models


@pytest.fixture(scope="session")
def model_pairs(trained_models):
    spm = require("sentencepiece", "the parity oracle")
    return {name: (spm.SentencePieceProcessor(model_file=path), SentencePieceTokenizer(path))
            for name, path in trained_models.items()}


# ---- parity with the library ---------------------------------------------------------------
@given(text=tokenizer_text(max_fragments=14), name=st.sampled_from(sorted(CONFIGS)))
def test_encoding_equals_the_sentencepiece_library(model_pairs, text, name):
    reference, ours = model_pairs[name]
    assert ours.encode(text) == reference.encode(text)


@given(text=tokenizer_text(max_fragments=14), name=st.sampled_from(sorted(CONFIGS)))
def test_decoding_equals_the_sentencepiece_library(model_pairs, text, name):
    reference, ours = model_pairs[name]
    ids = reference.encode(text)
    assert ours.decode(ids) == reference.decode(ids)


@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(sorted(CONFIGS)))
def test_decoding_arbitrary_id_sequences_equals_the_library(model_pairs, seed, name):
    reference, ours = model_pairs[name]  # control, unknown and lone byte pieces in any order
    rng = random.Random(seed)
    ids = [rng.randrange(reference.vocab_size()) for _ in range(rng.randint(0, 12))]
    ids += [rng.randrange(8) for _ in range(rng.randint(0, 3))]  # the reserved pieces live at the start
    rng.shuffle(ids)
    assert ours.decode(ids) == reference.decode(ids)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encoding_the_corpus_equals_the_library(model_pairs, name):
    reference, ours = model_pairs[name]
    text = load_corpus()[100_000:130_000]  # text the models were not trained on
    for line in text.splitlines()[:400]:
        assert ours.encode(line) == reference.encode(line), line
    assert ours.encode(text[:3000]) == reference.encode(text[:3000])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vocabulary_matches_the_library(model_pairs, name):
    reference, ours = model_pairs[name]
    assert ours.vocab_size == reference.vocab_size()
    assert [ours.id_to_piece(i) for i in range(ours.vocab_size)] == \
        [reference.id_to_piece(i) for i in range(reference.vocab_size())]


# ---- laws ------------------------------------------------------------------------------------
@given(text=tokenizer_text(max_fragments=14))
def test_decode_inverts_encode_for_identity_normalization_with_byte_fallback(model_pairs, text):
    _, ours = model_pairs["bpe-400-identity-bytes"]
    text = text.replace("\u2581", "")  # the space marker itself decodes to a space: it cannot round-trip
    # identity keeps every character and byte fallback spells every unknown one; what is lost is
    # the whitespace that remove_extra_whitespaces folds: leading, trailing and repeated spaces.
    folded = " ".join(text.split(" ")).strip(" ")
    while "  " in folded:
        folded = folded.replace("  ", " ")
    assert ours.decode(ours.encode(text)) == folded


def test_normalization_marks_spaces_and_adds_the_dummy_prefix(model_pairs):
    _, ours = model_pairs["unigram-500-nfkc"]
    assert ours.normalize("  Hello   world ") == "\u2581Hello\u2581world"
    assert ours.normalize("ｆｕｌｌ①") == "\u2581full1"  # NFKC folds compatibility forms
    _, identity = model_pairs["unigram-300-identity"]
    assert identity.normalize("ｆｕｌｌ") == "\u2581ｆｕｌｌ"


def test_unknown_characters_become_one_unk_or_bytes(model_pairs):
    _, plain = model_pairs["unigram-500-nfkc"]
    ids = plain.encode("漢字漢字")
    assert plain.unk_id in ids and ids.count(plain.unk_id) == 1  # a run of unknowns is one <unk>
    assert plain.decode(ids).endswith(" \u2047 ")  # the unknown surface
    _, with_bytes = model_pairs["unigram-800-bytes"]
    pieces = with_bytes.encode_as_pieces("漢")
    assert pieces[-3:] == ["<0xE6>", "<0xBC>", "<0xA2>"]


def test_partial_byte_sequences_decode_to_one_replacement_per_invalid_byte(model_pairs):
    reference, ours = model_pairs["bpe-1000-bytes"]
    e2, x82 = ours.piece_to_id("<0xE2>"), ours.piece_to_id("<0x82>")
    assert ours.decode([e2, x82]) == reference.decode([e2, x82]) == "\ufffd\ufffd"
    assert decode_bytes_like_sentencepiece(b"\xe2\x82\xac\xe2") == "€\ufffd"


# ---- the model file ------------------------------------------------------------------------
@given(pieces=sentencepiece_vocabularies(), model_type=st.sampled_from([UNIGRAM, BPE]))
def test_a_written_model_file_reads_back_to_its_pieces(pieces, model_type):
    data = model_file_bytes(pieces, model_type=model_type)
    assert data == sentencepiece_model_bytes(pieces, model_type=model_type)  # the tests' own writer
    model = parse_model_file(data, "written.model")
    assert model.pieces == [(p, round_float32(s), t) for p, s, t in pieces]
    assert (model.model_type, model.byte_fallback, model.normalizer.name) == (model_type, False, "identity")


# ---- bad input -------------------------------------------------------------------------------
def test_out_of_range_ids_are_a_clear_error(model_pairs):
    _, ours = model_pairs["bpe-500-nfkc"]
    with pytest.raises(ValueError, match=r"ids\[1\] = 500 is out of range.*500 pieces"):
        ours.decode([3, 500])
    with pytest.raises(ValueError, match="out of range"):
        ours.decode([-1])


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_a_truncated_model_file_is_a_clear_error_naming_the_file(trained_models, tmp_path, cut):
    data = open(trained_models["unigram-500-nfkc"], "rb").read()
    bad = tmp_path / "truncated.model"
    bad.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(SentencePieceError, match="truncated.model"):
        SentencePieceTokenizer(bad)


@pytest.mark.parametrize("content, problem", [
    (b"", "no pieces"),
    (b"not a model at all, just text", "corrupt|not a SentencePiece"),
    (bytes(range(256)), "corrupt|not a SentencePiece"),
    (b"\x0a\x05\x0a\x03abc", "no unknown piece"),  # one piece "abc", no <unk>
    (b"\x0a\x02\x0a\x00", "piece 0 is empty"),
])
def test_a_corrupt_model_file_is_a_clear_error(tmp_path, content, problem):
    bad = tmp_path / "bad.model"
    bad.write_bytes(content)
    with pytest.raises(SentencePieceError, match=problem) as info:
        SentencePieceTokenizer(bad)
    assert "bad.model" in str(info.value)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20)
def test_a_model_file_with_flipped_bytes_loads_or_fails_cleanly(trained_models, tmp_path_factory, seed):
    data = bytearray(open(trained_models["bpe-500-nfkc"], "rb").read())
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    bad = tmp_path_factory.mktemp("flip") / "flipped.model"
    bad.write_bytes(bytes(data))
    try:
        tok = SentencePieceTokenizer(bad)
    except SentencePieceError as error:
        assert "flipped.model" in str(error)
        return
    try:  # a model that loads must encode and decode, or say that its rules are corrupt
        ids = tok.encode("Hello wörld, 2024! 漢字 ｆｕｌｌ")
    except SentencePieceError as error:
        assert "flipped.model" in str(error)
        return
    assert isinstance(tok.decode(ids), str)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        SentencePieceTokenizer(tmp_path / "nothing.model")
