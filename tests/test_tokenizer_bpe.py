"""Laws of the BPE trainer (tinytransformer.tokenizers.bpe) and of the built-in corpus."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.tokenizers import bpe_vocab_sizes, tokenizer_text
from tinytransformer.corpus import builtin_corpus, load_corpus, train_heldout_split
from tinytransformer.tokenizers import GPT2_PATTERN, GPT4_PATTERN, LLAMA3_PATTERN, BPETokenizer
from tinytransformer.tokenizers import bpe
from tinytransformer.tokenizers.bpe import apply_merges, pretokenize, train_incremental
from tinytransformer.tokenizers.unicode_regex import compile_pattern, split

PATTERNS = [None, GPT2_PATTERN, GPT4_PATTERN]


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


@pytest.fixture(scope="module")
def corpus_tokenizer(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus[:60_000], 256 + 300 + 1, pattern=GPT2_PATTERN,
                              special_tokens=["<|endoftext|>"])


def max_merges(text: str, pattern) -> int:
    """An upper bound on the merges text supports: one per adjacent byte pair, minus one per piece."""
    pieces = compile_pattern(pattern).findall(text) if pattern else [text]
    return sum(max(len(p.encode()) - 1, 0) for p in pieces)


def train_up_to(text: str, n_merges: int, pattern) -> BPETokenizer:
    """Train with n_merges, or with as many as the text supports if that is fewer."""
    try:
        return BPETokenizer.train(text, 256 + n_merges, pattern=pattern)
    except ValueError as error:
        supported = int(str(error).split("supports only ")[1].split(" ")[0])
        return BPETokenizer.train(text, 256 + supported, pattern=pattern)


# ---- the fast trainer and encoder equal the reference ------------------------------------------
@given(text=tokenizer_text(), n_merges=st.integers(0, 40), pattern=st.sampled_from(PATTERNS))
def test_the_incremental_trainer_learns_exactly_the_reference_merges(text, n_merges, pattern):
    pieces = Counter(piece.encode() for piece in pretokenize(text, pattern) if piece)
    assert train_incremental(pieces, n_merges) == bpe.train(text, n_merges, pattern)


@given(text=tokenizer_text(), n_merges=st.integers(0, 40), pattern=st.sampled_from(PATTERNS))
def test_bpe_tokenizer_train_learns_the_reference_merges_or_says_how_many_the_text_supports(text, n_merges, pattern):
    reference = bpe.train(text, n_merges, pattern)
    if len(reference) < n_merges:
        with pytest.raises(ValueError, match=f"supports only {len(reference)} merges"):
            BPETokenizer.train(text, 256 + n_merges, pattern=pattern)
    else:
        assert BPETokenizer.train(text, 256 + n_merges, pattern=pattern).merges == reference


@given(training=tokenizer_text(), text=tokenizer_text(max_fragments=20), pattern=st.sampled_from(PATTERNS))
def test_the_fast_encoder_gives_exactly_the_reference_ids(training, text, pattern):
    merges = bpe.train(training + text[: len(text) // 2], 30, pattern)  # merges that the text can use
    assert BPETokenizer(merges, pattern=pattern).encode(text) == bpe.encode(text, merges, pattern)


@given(text=tokenizer_text(max_fragments=20))
def test_the_fast_encoder_gives_the_reference_ids_with_corpus_merges(corpus_tokenizer, text):
    text = text.replace("<|endoftext|>", "")  # the reference knows no special tokens
    assert corpus_tokenizer.encode(text) == bpe.encode(text, corpus_tokenizer.merges, GPT2_PATTERN)


# ---- trainer laws --------------------------------------------------------------------------
@given(text=tokenizer_text(), vocab_size=bpe_vocab_sizes(), pattern=st.sampled_from(PATTERNS))
def test_trained_vocabulary_has_the_requested_size_or_a_clear_error(text, vocab_size, pattern):
    vocab_size += 1  # room for the special token
    try:
        tok = BPETokenizer.train(text, vocab_size, pattern=pattern, special_tokens=["<s>"])
    except ValueError as error:
        supported = int(str(error).split("supports only ")[1].split(" ")[0])
        assert supported < vocab_size - 257 and supported <= max_merges(text, pattern)
        return
    assert tok.vocab_size == vocab_size
    assert len(tok.vocab) == vocab_size - 1 and tok.special_tokens == {"<s>": vocab_size - 1}


@given(text=tokenizer_text(), pattern=st.sampled_from(PATTERNS))
def test_every_merge_uses_parts_that_exist_before_it(text, pattern):
    tok = train_up_to(text, 40, pattern)
    for t, (a, b) in enumerate(tok.merges):
        assert a < 256 + t and b < 256 + t
        assert tok.vocab[256 + t] == tok.vocab[a] + tok.vocab[b]


@given(text=tokenizer_text(), pattern=st.sampled_from(PATTERNS))
def test_encoding_the_training_text_leaves_no_pair_that_a_merge_would_join(text, pattern):
    tok = train_up_to(text, 40, pattern)
    pieces = compile_pattern(pattern).findall(text) if pattern else [text]
    for piece in pieces:
        ids = tok.encode(piece)
        assert tok.decode(ids) == piece
        assert not any((a, b) in tok.ranks for a, b in zip(ids, ids[1:]))


def test_training_a_pretokenized_text_to_exhaustion_leaves_one_token_per_distinct_piece():
    text = "low lower lowest low low newer newest"
    pieces = set(split(text, GPT2_PATTERN))
    n = max_merges(" ".join(sorted(pieces)), GPT2_PATTERN)  # an upper bound, reached or not
    for size in range(256, 256 + n + 2):
        try:
            tok = BPETokenizer.train(text, size, pattern=GPT2_PATTERN)
        except ValueError:
            break
    assert all(len(tok.encode(p)) == 1 for p in pieces)


def test_merges_follow_pair_frequency_with_smallest_pair_on_ties():
    tok = BPETokenizer.train("aaabdaaabac", 259)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]  # "aa" (4), then "ab" < ("aa","a") on a tie at 2
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_training_four_thousand_merges_on_half_a_megabyte_takes_seconds(corpus):
    start = time.perf_counter()
    tok = BPETokenizer.train(corpus, 256 + 4096, pattern=GPT2_PATTERN)
    elapsed = time.perf_counter() - start
    assert tok.vocab_size == 256 + 4096
    assert elapsed < 30, f"4096 merges on {len(corpus.encode()) / 1e6:.2f} MB took {elapsed:.1f} s"


# ---- encode / decode -----------------------------------------------------------------------------
@given(text=tokenizer_text(max_fragments=20))
def test_decode_inverts_encode_on_any_unicode(corpus_tokenizer, text):
    assert corpus_tokenizer.decode(corpus_tokenizer.encode(text)) == text


@given(text=tokenizer_text(max_fragments=20))
def test_special_tokens_encode_to_their_id_and_never_appear_otherwise(corpus_tokenizer, text):
    special = corpus_tokenizer.special_tokens["<|endoftext|>"]
    ids = corpus_tokenizer.encode(text)
    assert ids.count(special) == text.count("<|endoftext|>")


@given(ids=st.lists(st.sampled_from([97, 98]), max_size=16))
def test_the_heap_replay_equals_the_reference_loop_on_runs_of_two_letters(ids):
    # runs such as "aaab" are where merging left to right, and stale heap entries, matter
    merges = [(97, 97), (256, 97), (98, 97), (97, 98), (257, 259)]
    ranks = {pair: (t, 256 + t) for t, pair in enumerate(merges)}
    assert apply_merges(ids, ranks) == bpe.encode(bytes(ids).decode(), merges)


def test_decoding_a_partial_character_gives_the_replacement_character():
    tok = BPETokenizer([], pattern=None)
    euro = list("€".encode())  # e2 82 ac
    assert tok.decode(euro) == "€"
    assert tok.decode(euro[:2]) == "\ufffd"  # one U+FFFD per maximal invalid subsequence
    assert tok.decode(euro[:1] + [ord("x")]) == "\ufffdx"
    assert tok.decode([0xFF, 0xFE]) == "\ufffd\ufffd"


# ---- files ---------------------------------------------------------------------------------------
@given(text=tokenizer_text())
@settings(max_examples=10)
def test_save_then_load_gives_the_same_encoding(corpus_tokenizer, tmp_path_factory, text):
    path = tmp_path_factory.mktemp("bpe") / "tok.json"
    corpus_tokenizer.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == corpus_tokenizer.merges and loaded.pattern == corpus_tokenizer.pattern
    assert loaded.encode(text) == corpus_tokenizer.encode(text)


@pytest.mark.parametrize("content, problem", [
    (b"{\"format\": \"tinytransformer-bpe\", \"version\": 1, \"merges\": [[1, 2]", "not valid UTF-8 JSON"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"[1, 2, 3]", "is not a tinytransformer-bpe"),
    (json.dumps({"format": "tinytransformer-bpe", "version": 1, "merges": [[1, 300]]}).encode(), "merge 0"),
    (json.dumps({"format": "tinytransformer-bpe", "version": 1, "merges": [[1, 2]],
                 "special_tokens": {"<s>": 999}}).encode(), "special token ids"),
    (json.dumps({"format": "tinytransformer-bpe", "version": 1, "merges": "x"}).encode(), "'merges'"),
])
def test_a_corrupt_tokenizer_file_is_a_clear_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as info:
        BPETokenizer.load(path)
    assert "bad.json" in str(info.value)


def test_out_of_range_and_non_integer_ids_are_clear_errors(corpus_tokenizer):
    with pytest.raises(ValueError, match=r"ids\[1\] = 100000 is out of range; vocab_size is 557"):
        corpus_tokenizer.decode([1, 100000])
    with pytest.raises(ValueError, match="out of range"):
        corpus_tokenizer.decode([-1])
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int"):
        corpus_tokenizer.decode(["a"])


@pytest.mark.parametrize("kwargs, problem", [
    ({"vocab_size": 100}, "vocab_size must be between 256"),
    ({"vocab_size": 256, "special_tokens": ["<s>"]}, "vocab_size must be between 257"),
    ({"vocab_size": 300, "special_tokens": "<s>"}, "special_tokens must be a list"),
    ({"vocab_size": 300, "special_tokens": ["<s>", "<s>"]}, "duplicates"),
    ({"vocab_size": 300, "pattern": r"\p{Xyz}"}, r"unsupported Unicode class"),
])
def test_bad_training_arguments_are_clear_errors(kwargs, problem):
    with pytest.raises((ValueError, TypeError), match=problem):
        BPETokenizer.train("some text", **kwargs)


def test_too_little_text_for_the_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="supports only 1 merges"):
        BPETokenizer.train("ab", 300)


# ---- pre-tokenization regex ----------------------------------------------------------------------
def test_gpt2_pattern_splits_words_numbers_and_spaces_as_gpt2_does():
    assert split("Hello world's 2024 ☃!!  x\n\n", GPT2_PATTERN) == [
        "Hello", " world", "'s", " 2024", " ☃!!", " ", " x", "\n\n"]
    assert split("x\x1c y", GPT2_PATTERN) == ["x", "\x1c", " y"]  # U+001C is not \s in Oniguruma


@given(text=tokenizer_text())
def test_pretokenization_pieces_concatenate_back_to_the_text(text):
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        assert "".join(split(text, pattern)) == text


@given(text=tokenizer_text())
def test_the_bmp_only_copy_of_a_pattern_matches_as_the_full_one_on_text_below_u10000(text):
    text = "".join(c for c in text if ord(c) < 0x10000)
    for pattern in (GPT2_PATTERN, GPT4_PATTERN, LLAMA3_PATTERN, r"\p{N}"):
        compiled = compile_pattern(pattern)
        assert compiled.bmp is not None
        assert compiled.bmp.findall(text) == compiled.full.findall(text)


# ---- the built-in corpus -------------------------------------------------------------------------
def test_builtin_corpus_is_the_python_documentation_topics(corpus):
    from pydoc_data.topics import topics

    assert corpus == builtin_corpus() and len(corpus.encode()) > 300_000
    assert topics["assert"].strip("\n") in corpus


@given(fraction=st.floats(0.01, 0.99))
def test_train_heldout_split_concatenates_back_and_cuts_at_a_line_start(corpus, fraction):
    text = corpus[:5000]
    train, heldout = train_heldout_split(text, fraction)
    assert train + heldout == text
    assert train.endswith("\n") or "\n" not in text[len(train):-1]


def test_load_corpus_reads_a_user_file_and_rejects_bad_ones(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("héllo\n", encoding="utf-8")
    assert load_corpus(good) == "héllo\n"
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("héllo".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*not valid UTF-8"):
        load_corpus(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="max_bytes"):
        load_corpus(good, max_bytes=3)
    with pytest.raises(ValueError, match="fraction must be"):
        train_heldout_split("abc", 1.5)
