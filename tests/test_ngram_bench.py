"""The n-gram benchmark's harness: the table of estimators, the slice the transformer scores, the comparison
with it, and its report written whole."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import tinytransformer
from tinytransformer.bench import ngram as bench
from tinytransformer.bench.common import write_report
from tinytransformer.corpus import heldout_slice
from tinytransformer.ngram import NGramLM, bits_per_byte, text_to_sentences
from tinytransformer.ngram.comparison import bits_per_byte_table
from tinytransformer.testing import assert_close


def test_the_transformer_column_says_why_it_is_missing(monkeypatch):
    def broken(path=None):
        raise FileNotFoundError("no model file here")

    monkeypatch.setattr(tinytransformer, "load_model", broken)
    column = bench.transformer_column("some text")
    assert column == {"error": "FileNotFoundError: no model file here"}


def test_the_table_has_a_row_per_level_order_and_estimator_and_kneser_ney_beats_laplace():
    train = "the cat sat on the mat.\nthe dog sat on the log.\n" * 20
    heldout = "the cat sat on the log.\n"
    rows = bits_per_byte_table(train, heldout, orders=(1, 2, 3), smoothings=("laplace", "kneser-ney"),
                                     levels=("word", "byte"), extra_texts={"slice": heldout[:10]})
    assert len(rows) == 2 * 3 * 2
    lookup = {(r["level"], r["order"], r["smoothing"]): r for r in rows}
    for level in ("word", "byte"):
        assert lookup[(level, 3, "kneser-ney")]["bpb"] < lookup[(level, 3, "laplace")]["bpb"]
        lm = NGramLM(3, "kneser-ney").fit(text_to_sentences(train, level))
        assert_close(lookup[(level, 3, "kneser-ney")]["bpb_slice"],
                     bits_per_byte(lm, heldout[:10], level), rtol=1e-12, atol=0)
    table = bench.format_table(rows)
    assert table.count("\n") == 2 + 6 - 1 and "| word | 3 |" in table


def test_the_json_report_is_encoded_first_and_renamed_into_place(tmp_path):
    path = tmp_path / "ngram.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError, match="report: .* is not a number"):
        write_report({"bpb": object()}, path)
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["ngram.json"]
    write_report({"bpb": np.float64(0.5), "slice": math.inf}, path)
    assert json.loads(path.read_text()) == {"bpb": 0.5, "slice": math.inf}


def test_the_transformer_slice_ends_at_a_line_end_and_the_ratio_is_against_the_best_ngram():
    assert heldout_slice("ab\ncd\nef", 6) == "ab\ncd\n"
    assert heldout_slice("abcdef", 3) == "abc"  # no line end: the characters as they are
    rows = [{"level": "word", "order": 2, "smoothing": "laplace", "bpb_slice": 3.0},
            {"level": "word", "order": 3, "smoothing": "kneser-ney", "bpb_slice": 2.0},
            {"level": "byte", "order": 5, "smoothing": "kneser-ney", "bpb_slice": 1.5}]
    best, ratio = bench.best_against_transformer(rows, {"bpb": 0.5})
    assert best["word"]["order"] == 3 and best["byte"]["order"] == 5 and ratio == 3.0
    assert bench.best_against_transformer(rows, {"error": "no model"})[1] is None
