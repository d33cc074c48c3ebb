"""Untrusted tokenizer files and text: bounded time and memory, clear errors, nothing lost.

Each test here is a case that once went wrong: quadratic memory or cubic time on a
SentencePiece model with one long piece, a tokenizer.json regex that backtracks for
ever, RecursionError on deep nesting, OverflowError on float32 scores, a save that
truncated the file it replaced, caches that grew with the input. (That a lecture leaves no
temporary folder behind is checked for every chapter in tests/test_chapters.py.) Cases that could hang or exhaust memory run through
tests/fuzzing.py: run_bounded, in a child process with a time and a memory bound.
"""
from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from fuzzing import run_bounded
from strategies.tokenizers import sentencepiece_model_bytes, sentencepiece_vocabularies, tiny_tokenizer_json
from tinytransformer.tokenizers import (BPETokenizer, ByteLevelBPETokenizer, SentencePieceError,
                                        SentencePieceTokenizer, TokenizerFileError)
from tinytransformer.tokenizers.piece_cache import PieceCache
from tinytransformer.tokenizers.byte_level import bytes_to_unicode
from tinytransformer.tokenizers.spm_model_file import BPE, CONTROL, NORMAL, UNIGRAM, UNKNOWN, UNUSED, USER_DEFINED

BASE_PIECES = [("<unk>", 0.0, UNKNOWN), ("a", -2.0, NORMAL), ("b", -2.5, NORMAL), ("▁", -1.0, NORMAL)]


def write_model(folder, pieces, name="crafted.model", **options):
    path = folder / name
    path.write_bytes(sentencepiece_model_bytes(pieces, **options))
    return path


def library(path):
    spm = require("sentencepiece", "the parity oracle")
    return spm.SentencePieceProcessor(model_file=str(path))


# ---- SentencePiece: long pieces ----------------------------------------------------------------
def test_a_model_with_one_long_piece_loads_in_memory_linear_in_the_file(tmp_path):
    # every prefix of an 80,000-character piece, stored as a set, was 3 GB for an 80 kB file
    path = write_model(tmp_path, BASE_PIECES + [("ab" * 40_000, -5.0, NORMAL)])

    def case():
        tok = SentencePieceTokenizer(path)
        assert tok.encode_as_pieces("ab" * 50)[0] == "▁"

    outcome = run_bounded(case, seconds=20, megabytes=200)
    assert outcome.kind == "ok", outcome


@pytest.mark.parametrize("model_type", [UNIGRAM, BPE])
def test_encoding_next_to_a_long_user_defined_piece_takes_linear_time(tmp_path, model_type):
    # a 20 kB model and 8 kB of text that starts the piece at every position: 54 s before
    path = write_model(tmp_path, BASE_PIECES + [("ab" * 10_000, 0.0, USER_DEFINED)], model_type=model_type)
    text = "ab" * 4_000

    def case():
        tok = SentencePieceTokenizer(path)
        assert tok.decode(tok.encode(text)) == text
        assert tok.encode_as_pieces("x" + "ab" * 10_000)[-1] == "ab" * 10_000

    outcome = run_bounded(case, seconds=10, megabytes=300)
    assert outcome.kind == "ok", outcome


@pytest.mark.parametrize("model_type", [UNIGRAM, BPE])
def test_long_user_defined_pieces_encode_as_the_library(tmp_path, model_type):
    path = write_model(tmp_path, BASE_PIECES + [("ab" * 300, 0.0, USER_DEFINED), ("ba" * 200, 0.0, USER_DEFINED)],
                       model_type=model_type)
    reference, ours = library(path), SentencePieceTokenizer(path)
    for text in ("ab" * 299, "ab" * 300, "x" + "ab" * 301 + "a", "ba" * 500, "a b " * 100):
        assert ours.encode(text) == reference.encode(text)


@given(pieces=sentencepiece_vocabularies(), model_type=st.sampled_from([UNIGRAM, BPE]),
       text=st.text("ab c▁", max_size=30))
@settings(max_examples=40)
def test_any_crafted_vocabulary_encodes_as_the_library(tmp_path_factory, pieces, model_type, text):
    # NORMAL, USER_DEFINED and UNUSED pieces in any mix: the trie, the lattice, the BPE heap, resegment
    path = write_model(tmp_path_factory.mktemp("spm"), pieces, model_type=model_type)
    assert SentencePieceTokenizer(path).encode(text) == library(path).encode(text)


# ---- SentencePiece: recursion and float32 range ------------------------------------------------
def unused_chain(n: int):
    """A BPE vocabulary where "a" * k is an UNUSED piece made of "a" * (k - 1) and "a", for k <= n + 1."""
    return [("<unk>", 0.0, UNKNOWN), ("a", 0.0, NORMAL), ("▁", 0.0, NORMAL)] + \
        [("a" * k, float(k), UNUSED) for k in range(2, n + 2)]


def test_a_chain_of_1500_unused_pieces_encodes_without_recursion(tmp_path):
    path = write_model(tmp_path, unused_chain(1500), model_type=BPE, add_dummy_prefix=False)
    ids = SentencePieceTokenizer(path).encode("a" * 1501)
    assert len(ids) == 102 and ids[1:] == [1] * 101  # resegmented 101 levels deep, as the library


def test_a_chain_of_unused_pieces_encodes_as_the_library(tmp_path):
    path = write_model(tmp_path, unused_chain(300), model_type=BPE, add_dummy_prefix=False)
    reference, ours = library(path), SentencePieceTokenizer(path)
    for n in (50, 101, 102, 103, 250, 301):
        assert ours.encode("a" * n) == reference.encode("a" * n), n


@pytest.mark.parametrize("model_type", [UNIGRAM, BPE])
def test_scores_near_the_float32_limit_encode_as_the_library(tmp_path, model_type):
    # sums of scores near -3e38 leave the float32 range: -inf, as in C++, not OverflowError
    pieces = [("<unk>", 0.0, UNKNOWN), ("▁", -3e38, NORMAL), ("a", -3e38, NORMAL), ("b", -3.4e38, NORMAL),
              ("ab", -3e38, NORMAL), ("<t>", 0.0, USER_DEFINED)]
    path = write_model(tmp_path, pieces, model_type=model_type)
    ours = SentencePieceTokenizer(path)
    texts = ("ab ab a", "abab", "ba b<t>a", "xyz ab")
    assert all(isinstance(ours.encode(text), list) for text in texts)
    reference = library(path)
    assert [ours.encode(text) for text in texts] == [reference.encode(text) for text in texts]


def test_a_unigram_model_without_any_normal_piece_is_a_clear_error(tmp_path):
    # the library refuses it too ("no pieces are loaded"); it used to load and fail at the first encode
    path = write_model(tmp_path, [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL)], model_type=UNIGRAM)
    with pytest.raises(SentencePieceError, match="crafted.model.*needs a NORMAL"):
        SentencePieceTokenizer(path)


def test_a_bpe_model_without_any_normal_piece_encodes_everything_as_unknown(tmp_path):
    path = write_model(tmp_path, [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL)], model_type=BPE)
    assert SentencePieceTokenizer(path).encode("abc d") == [0]


# ---- tokenizer.json ----------------------------------------------------------------------------
def test_a_split_pattern_that_backtracks_exponentially_is_refused_with_a_clear_error(tmp_path):
    data = tiny_tokenizer_json()
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    path = tmp_path / "backtracking.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    def case():  # 2**26 ways to cut the a's before the "!" fails the $: 15 s before
        ByteLevelBPETokenizer.from_tokenizer_json(path).encode("a" * 26 + "!")

    outcome = run_bounded(case, clean=(TokenizerFileError,), seconds=5)
    assert outcome.kind == "clean error", outcome
    assert "backtracking.json" in outcome.detail and "quantifier inside a quantified group" in outcome.detail


def test_a_tokenizer_json_nested_two_thousand_deep_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"model": ' + "[" * 2000 + "]" * 2000 + "}", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="deep.json' is nested more than 200 levels deep"):
        ByteLevelBPETokenizer.from_tokenizer_json(path)


def test_a_pre_tokenizer_sequence_nested_five_thousand_deep_is_a_clear_error():
    data = tiny_tokenizer_json()
    node = data["pre_tokenizer"]
    for _ in range(5000):
        node = {"type": "Sequence", "pretokenizers": [node]}
    data["pre_tokenizer"] = node
    with pytest.raises(TokenizerFileError, match="Sequences are nested more than"):
        ByteLevelBPETokenizer.from_tokenizer_json_data(data)


def test_a_tokenizer_json_that_gives_one_id_to_two_tokens_is_refused(tmp_path):
    data = tiny_tokenizer_json()
    data["model"]["vocab"]["Ġhi"] = 256  # "hi" has 256 too: decoding 256 would pick one of them
    path = tmp_path / "duplicate_ids.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="duplicate_ids.json': id 256 is given to two tokens, 'hi' and 'Ġhi'"):
        ByteLevelBPETokenizer.from_tokenizer_json(path)


def test_an_added_token_may_repeat_its_own_vocabulary_entry():
    data = tiny_tokenizer_json()  # "<|endoftext|>" is id 258 in both model.vocab and added_tokens
    assert ByteLevelBPETokenizer.from_tokenizer_json_data(data).encode("<|endoftext|>") == [258]


# ---- saving ------------------------------------------------------------------------------------
def test_a_save_that_fails_leaves_the_existing_file_as_it_was(tmp_path):
    path = tmp_path / "tok.json"
    BPETokenizer([(104, 105)]).save(path)
    before = path.read_bytes()
    unwritable = BPETokenizer([(104, 105)], special_tokens={"\ud800": 257})  # a lone surrogate: not UTF-8
    with pytest.raises(ValueError, match="tok.json.*cannot be written as UTF-8"):
        unwritable.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]  # no temporary file left behind


def test_save_replaces_the_file_whole(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text("x" * 100_000, encoding="utf-8")  # longer than what replaces it
    with open(path, "rb") as reader:  # a reader that has the old file open keeps reading the old file
        BPETokenizer([(104, 105)], pattern=r"\p{L}+").save(path)
        assert reader.read() == b"x" * 100_000
    assert BPETokenizer.load(path).encode("hihi") == [256, 256]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]


def test_save_gives_the_permissions_that_a_plain_write_would(tmp_path):
    plain, saved = tmp_path / "plain.json", tmp_path / "saved.json"
    plain.write_text("{}")
    BPETokenizer([]).save(saved)
    assert saved.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    saved.chmod(0o600)
    BPETokenizer([(104, 105)]).save(saved)  # replacing a file keeps its permissions
    assert saved.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where, problem", [("missing_folder/tok.json", FileNotFoundError),
                                            (".", IsADirectoryError)])
def test_saving_to_a_path_that_cannot_be_a_file_is_a_clear_error(tmp_path, where, problem):
    with pytest.raises(problem, match="does not exist|is a directory"):
        BPETokenizer([]).save(tmp_path / where)


# ---- caches ------------------------------------------------------------------------------------
def distinct_words(n: int, length: int) -> list[str]:
    return ["x" * (length - 10) + "".join(chr(ord("a") + int(d)) for d in f"{k:010d}") for k in range(n)]


def test_the_byte_level_cache_is_bounded_by_size_not_by_count():
    # 2,000-character pieces, each distinct: the count-bounded cache held 400 MB after 20,000
    table = bytes_to_unicode()
    tok = ByteLevelBPETokenizer({table[b]: b for b in range(256)}, [])
    pieces = distinct_words(1500, 2000)  # letters only, so each is one piece: 27 MB in a cache that keeps all

    def case():
        for piece in pieces:
            tok.encode(piece)

    outcome = run_bounded(case, seconds=60, megabytes=20)
    assert outcome.kind == "ok", outcome


@pytest.mark.parametrize("make", [lambda: BPETokenizer([], pattern=r"\p{L}+"),
                                  lambda: ByteLevelBPETokenizer.from_tokenizer_json_data(tiny_tokenizer_json())],
                         ids=["BPETokenizer", "ByteLevelBPETokenizer"])
def test_every_tokenizer_cache_stays_within_its_size_bound(make):
    tok = make()
    tok._cache.max_bytes = 200_000  # the default is 32 MB; a small bound shows the policy quickly
    words = distinct_words(3000, 60)  # about 1.8 MB of cache entries if all were kept
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for word in words:
        tok.encode(word)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert tok._cache.nbytes <= 200_000 and 0 < len(tok._cache) < 3000
    assert grown < 400_000, f"the cache bound is 200,000 bytes but memory grew by {grown:,}"


@given(puts=st.lists(st.tuples(st.text(max_size=30), st.lists(st.integers(0, 1000), max_size=20)), max_size=30),
       max_bytes=st.integers(0, 5000), max_piece_chars=st.integers(0, 50))
def test_the_piece_cache_never_holds_more_than_its_bound_and_returns_what_was_put(puts, max_bytes, max_piece_chars):
    cache = PieceCache(max_bytes=max_bytes, max_piece_chars=max_piece_chars)
    for piece, ids in puts:
        cache.put(piece, ids)
        assert cache.nbytes <= max_bytes
        assert cache.get(piece) in (None, ids)
        if len(piece) > max_piece_chars:
            assert cache.get(piece) is None or any(p == piece for p, _ in puts[:-1])


def test_the_piece_cache_charges_at_least_what_its_entries_take_in_memory():
    table = list(range(1000, 1100))  # a tokenizer's ids are shared int objects from its tables
    cache = PieceCache(max_bytes=10**9)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for word in distinct_words(2000, 50):  # the pieces too: the cache keeps them alive
        cache.put(word, [table[i % 100] for i in range(len(word) // 3)])
    taken = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert 1.0 <= cache.nbytes / taken < 2.0, (cache.nbytes, taken)
