"""The n-gram comparison harness: its bits-per-byte arithmetic, checked on models whose answer is known."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinytransformer
from tinytransformer.bench import ngram as bench
from tinytransformer.ngram import NGramLM, text_to_sentences
from tinytransformer.testing import assert_close


class ByteTokenizer:
    added_tokens: dict = {}

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8")


class UniformModel:
    """A 'transformer' whose logits are all equal: every token costs log2(vocab) bits."""

    def __init__(self, vocab_size=256, bos_id=None):
        self.tokenizer = ByteTokenizer()
        self.config = type("Config", (), {"vocab_size": vocab_size, "bos_id": bos_id})()
        self.calls = []

    def forward(self, ids):
        ids = np.asarray(ids)
        self.calls.append(len(ids))
        return np.zeros((len(ids), self.config.vocab_size), dtype=np.float32)


class CountingModel(UniformModel):
    """Puts log-odds 3 on the token that the bytes of `text` say comes next (a perfect-ish oracle)."""

    def forward(self, ids):
        logits = super().forward(ids)
        logits[np.arange(len(ids) - 1), np.asarray(ids)[1:]] = 3.0  # only the positions it can see
        return logits


@given(text=st.text(alphabet=st.sampled_from("ab c\né"), min_size=1, max_size=60),
       chunk=st.integers(1, 9), bos=st.sampled_from([None, 0]))
def test_a_uniform_model_costs_log2_vocab_bits_per_token(text, chunk, bos):
    model = UniformModel(bos_id=bos)
    result = bench.transformer_bits_per_byte(text, model=model, chunk=chunk)
    n_bytes = len(text.encode("utf-8"))
    # every byte-token is scored once; with no document-start id the first one is charged uniformly
    assert_close(result["bpb"], math.log2(256), rtol=1e-12, atol=0)
    assert result["tokens"] == n_bytes and result["bytes"] == n_bytes
    assert max(model.calls, default=0) <= chunk and sum(model.calls) == n_bytes - (bos is None)


def test_windows_without_a_cache_restart_their_context():
    text = "abcabcabc"
    model = CountingModel(bos_id=0)
    result = bench.transformer_bits_per_byte(text, model=model, chunk=4)
    # inside a window, the logit of the true next token is 3 exactly when the true token was fed
    # at the following input position; at the last position of each window it is not visible
    p_hit = math.exp(3) / (math.exp(3) + 255)
    windows = [list(range(i, min(i + 4, 9))) for i in range(0, 9, 4)]  # targets of each window
    bits = sum(-math.log2(p_hit) * (len(w) - 1) + math.log2(256) for w in windows)
    assert_close(result["bpb"], bits / 9, rtol=1e-9, atol=0)


def test_the_transformer_column_says_why_it_is_missing(monkeypatch):
    def broken(path=None):
        raise FileNotFoundError("no model file here")

    monkeypatch.setattr(tinytransformer, "load_model", broken)
    column = bench.transformer_column("some text")
    assert column == {"error": "FileNotFoundError: no model file here"}


def test_the_table_has_a_row_per_level_order_and_estimator_and_kneser_ney_beats_laplace():
    train = "the cat sat on the mat.\nthe dog sat on the log.\n" * 20
    heldout = "the cat sat on the log.\n"
    rows = bench.bits_per_byte_table(train, heldout, orders=(1, 2, 3), smoothings=("laplace", "kneser-ney"),
                                     levels=("word", "byte"), extra_texts={"slice": heldout[:10]})
    assert len(rows) == 2 * 3 * 2
    lookup = {(r["level"], r["order"], r["smoothing"]): r for r in rows}
    for level in ("word", "byte"):
        assert lookup[(level, 3, "kneser-ney")]["bpb"] < lookup[(level, 3, "laplace")]["bpb"]
        lm = NGramLM(3, "kneser-ney").fit(text_to_sentences(train, level))
        assert_close(lookup[(level, 3, "kneser-ney")]["bpb_slice"],
                     bench.bits_per_byte(lm, heldout[:10], level), rtol=1e-12, atol=0)
    table = bench.format_table(rows)
    assert table.count("\n") == 2 + 6 - 1 and "| word | 3 |" in table


@pytest.mark.model
def test_smollm2_scores_a_sentence_in_a_sensible_number_of_bits(smollm2_path):
    loaded = tinytransformer.load_model(smollm2_path)
    result = bench.transformer_bits_per_byte("The quick brown fox jumps over the lazy dog.\n", model=loaded.model,
                                             tokenizer=loaded.tokenizer)
    assert 0.3 < result["bpb"] < 4.0  # English under a real model: far below 8 bits per byte


def test_the_json_report_is_encoded_first_and_renamed_into_place(tmp_path):
    path = tmp_path / "ngram.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError, match="report: .* is not a number"):
        bench.write_report({"bpb": object()}, path)
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["ngram.json"]
    bench.write_report({"bpb": np.float64(0.5), "slice": math.inf}, path)
    assert json.loads(path.read_text()) == {"bpb": 0.5, "slice": math.inf}


def test_the_transformer_slice_ends_at_a_line_end_and_the_ratio_is_against_the_best_ngram():
    assert bench.heldout_slice("ab\ncd\nef", 6) == "ab\ncd\n"
    assert bench.heldout_slice("abcdef", 3) == "abc"  # no line end: the characters as they are
    rows = [{"level": "word", "order": 2, "smoothing": "laplace", "bpb_slice": 3.0},
            {"level": "word", "order": 3, "smoothing": "kneser-ney", "bpb_slice": 2.0},
            {"level": "byte", "order": 5, "smoothing": "kneser-ney", "bpb_slice": 1.5}]
    best, ratio = bench.best_against_transformer(rows, {"bpb": 0.5})
    assert best["word"]["order"] == 3 and best["byte"]["order"] == 5 and ratio == 3.0
    assert bench.best_against_transformer(rows, {"error": "no model"})[1] is None
