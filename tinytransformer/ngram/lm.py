"""NGramLM: one front door to the estimators of this chapter, chosen by name.

    NGramLM(order, smoothing).fit(sentences)
        = NGramCounts.from_sentences(sentences, order)         counting
          + AddKLM(counts, k)                                   "mle" (k = 0), "laplace", "add-k"
          | kneser_ney_model(counts, kneser_ney_discounts(counts))  "kneser-ney", "modified-kneser-ney"

After `fit`, `lm.counts` holds the counts and `lm.model` the fitted estimator (an
`AddKLM` or a `BackoffLM`); scoring, perplexity and sampling follow the convention
of `scoring` (one `</s>` per sentence, n-1 `<s>` on the left: ARPA's and KenLM's).

    >>> lm = NGramLM(2, smoothing="mle").fit([["I", "am", "Sam"], ["Sam", "I", "am"]])
    >>> lm.score("am", ["I"])                 # c(I am) / c(I .) = 2 / 2
    1.0
    >>> lm.score("Sam", ["<s>"])              # 1 of the 2 sentences starts with Sam
    0.5
    >>> kn = NGramLM(2, smoothing="kneser-ney").fit([["I", "am", "Sam"], ["Sam", "I", "am"]])
    >>> round(sum(kn.score(w, ["I"]) for w in kn.vocab), 12)
    1.0

Does not handle: refitting in place with more text (fit counts from scratch).
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import integer, is_integer, is_real
from tinytransformer.ngram.arpa import write_arpa
from tinytransformer.ngram.backoff import BackoffLM
from tinytransformer.ngram.counting import AddKLM, NGramCounts
from tinytransformer.ngram.kneser_ney import kneser_ney_discounts, kneser_ney_model
from tinytransformer.ngram.scoring import LanguageModel

__all__ = ["NGramLM", "SMOOTHINGS"]

SMOOTHINGS = ("mle", "laplace", "add-k", "kneser-ney", "modified-kneser-ney")


class NGramLM(LanguageModel):
    """A count-based language model of a given order (3 = trigram).

    order: n, the model conditions on the n-1 previous tokens.
    smoothing: "mle", "laplace" (add-1), "add-k", "kneser-ney" (interpolated,
        one discount per order) or "modified-kneser-ney" (three per order).
    k: the pseudo-count of add-k (must stay 1 for "laplace").
    min_count: training words seen fewer times than this become `<unk>`.
    """

    def __init__(self, order, smoothing="mle", k=1.0, min_count=1):
        if not is_integer(order) or order < 1:
            raise ValueError(f"order: expected an integer >= 1 (1 = unigram), got {order!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing: expected one of {SMOOTHINGS}, got {smoothing!r}")
        if not is_real(k) or not math.isfinite(k) or k <= 0:
            raise ValueError(f"k: expected a finite number > 0, got {k!r}")
        if smoothing == "laplace" and k != 1:
            raise ValueError(f"k: smoothing='laplace' is add-k with k=1, got k={k!r}; "
                             "use smoothing='add-k' for another k")
        min_count = integer(min_count, "min_count", low=1)
        self.order = int(order)
        self.smoothing = smoothing
        self.k = float(k)
        self.min_count = int(min_count)
        self.vocab: list[str] = []
        self._index: dict[str, int] = {}
        self.discounts: dict[int, tuple[float, ...]] = {}
        self.counts: NGramCounts | None = None
        self.model: AddKLM | BackoffLM | None = None

    def __repr__(self) -> str:
        fitted = f", |V|={len(self.vocab)}" if self.vocab else ", unfitted"
        return f"NGramLM(order={self.order}, smoothing={self.smoothing!r}{fitted})"

    def fit(self, sentences) -> "NGramLM":
        """Count the n-grams of `sentences` (an iterable of lists of str tokens) and estimate."""
        counts = NGramCounts.from_sentences(sentences, self.order, self.min_count)
        if self.smoothing in ("kneser-ney", "modified-kneser-ney"):
            self.discounts = kneser_ney_discounts(counts, modified=self.smoothing == "modified-kneser-ney")
            self.model = kneser_ney_model(counts, self.discounts)
        else:
            self.discounts = {}
            self.model = AddKLM(counts, k=0.0 if self.smoothing == "mle" else self.k)
        self.counts = counts
        self.vocab, self._index = counts.vocab, counts.index
        return self

    def _log10prob(self, grams) -> np.ndarray:
        return self.model._log10prob(grams)

    # ------------------------------------------------------------------ the counts
    def count(self, ngram) -> int:
        """How many times the n-gram (a sequence of 1..order words) occurred in padded training text."""
        self._check_fitted("count")
        ngram = self._check_context(ngram, name="ngram", limit=self.order)
        if not ngram:
            raise ValueError("ngram: expected 1..order words, got none")
        index = self.counts.lookup(np.array([[self._id(w) for w in ngram]], dtype=np.int64))[0]
        return int(self.counts.tables[len(ngram) - 1].count[index]) if index >= 0 else 0

    def training_counts(self, sentences, order=None) -> np.ndarray:
        """Training count of the order-k n-gram ending at every scored token of `sentences`.

        A zero is an n-gram that training never saw: the sparsity that smoothing is for.
        """
        self._check_fitted("training_counts")
        order = self.order if order is None else order
        if not is_integer(order) or not 1 <= order <= self.order:
            raise ValueError(f"order: expected an integer in 1..{self.order}, got {order!r}")
        grams = self._scored_ngrams(sentences)[:, self.order - order:]
        index = self.counts.lookup(grams)
        return np.where(index >= 0, self.counts.tables[order - 1].count[np.maximum(index, 0)], 0)

    def distinct_ngrams(self, order) -> int:
        """Number of distinct n-grams of this order seen in (padded) training text."""
        self._check_fitted("distinct_ngrams")
        if not is_integer(order) or not 1 <= order <= self.order:
            raise ValueError(f"order: expected an integer in 1..{self.order}, got {order!r}")
        return int(np.count_nonzero(self.counts.tables[order - 1].count))

    # ------------------------------------------------------------------ ARPA files
    def to_arpa(self, path) -> None:
        """Write a Kneser-Ney model as an ARPA file (see `arpa.write_arpa`)."""
        self._check_fitted("to_arpa")
        if not isinstance(self.model, BackoffLM):
            raise ValueError(
                f"to_arpa: smoothing={self.smoothing!r} is not a back-off model (its probability "
                "after an unseen context is not a lower-order probability times a weight), so an "
                "ARPA file cannot hold it; fit with 'kneser-ney' or 'modified-kneser-ney'")
        write_arpa(self.model, path)
