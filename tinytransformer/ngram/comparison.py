"""Comparing estimators: every smoothing, every order, word and byte level, in bits per byte.

Chapter 7's table fits one model per (level, order, smoothing) on the training text and
scores the held-out text in bits per byte (`bits.bits_per_byte`), timing both; the best
row of each level is what a transformer is measured against.

    >>> train = "the cat sat on the mat.\\nthe dog sat on the log.\\n" * 5
    >>> rows = bits_per_byte_table(train, "the cat sat on the log.\\n", orders=(1, 3),
    ...                            smoothings=("laplace", "kneser-ney"), levels=("word",))
    >>> [(r["order"], r["smoothing"]) for r in rows]
    [(1, 'laplace'), (1, 'kneser-ney'), (3, 'laplace'), (3, 'kneser-ney')]
    >>> best = best_by_level(rows, "bpb")
    >>> best["word"]["order"], best["word"]["smoothing"]
    (3, 'kneser-ney')

Does not handle: tuning a smoothing's parameters on held-out text (add-k uses k = ADD_K),
pruning, timing more than one run.
"""
from __future__ import annotations

import time

from tinytransformer.ngram.bits import bits_per_byte, text_to_sentences
from tinytransformer.ngram.lm import SMOOTHINGS, NGramLM

__all__ = ["ORDERS", "LEVELS", "ADD_K", "fit_model", "bits_per_byte_table", "best_by_level"]

ORDERS = (1, 2, 3, 4, 5)
LEVELS = ("word", "byte")
ADD_K = 0.01  # the k of the "add-k" rows (Laplace is k = 1)


def fit_model(order: int, smoothing: str, sentences, min_count: int = 1) -> NGramLM:
    """An NGramLM of this order and smoothing fitted on the sentences (add-k with k = ADD_K)."""
    k = ADD_K if smoothing == "add-k" else 1.0
    return NGramLM(order, smoothing=smoothing, k=k, min_count=min_count).fit(sentences)


def bits_per_byte_table(train: str, heldout: str, orders=ORDERS, smoothings=SMOOTHINGS, levels=LEVELS,
                        extra_texts: dict | None = None) -> list[dict]:
    """Rows {level, order, smoothing, bpb, fit_s, score_s, [bpb_<name> for extra texts]}.

    fit_s and score_s are wall-clock seconds (time.perf_counter) of fitting and of scoring `heldout`.
    """
    rows = []
    for level in levels:
        sentences = text_to_sentences(train, level)
        for order in orders:
            for smoothing in smoothings:
                start = time.perf_counter()
                lm = fit_model(order, smoothing, sentences)
                fitted = time.perf_counter()
                bpb = bits_per_byte(lm, heldout, level)
                row = {"level": level, "order": order, "smoothing": smoothing, "bpb": bpb,
                       "fit_s": fitted - start, "score_s": time.perf_counter() - fitted}
                for name, text in (extra_texts or {}).items():
                    row[f"bpb_{name}"] = bits_per_byte(lm, text, level)
                rows.append(row)
    return rows


def best_by_level(rows: list[dict], column: str = "bpb") -> dict[str, dict]:
    """{level: the row with the fewest bits per byte in `column`}, levels in the order they first appear."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["level"] not in best or r[column] < best[r["level"]][column]:
            best[r["level"]] = r
    return best
