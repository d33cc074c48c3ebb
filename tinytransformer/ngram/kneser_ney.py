"""Kneser-Ney smoothing: absolute discounts and continuation counts, interpolated.

Kneser-Ney (Kneser and Ney 1995; Chen and Goodman 1998) subtracts a discount from
every seen count and hands the freed mass to the distribution one order lower, down
to the uniform 1/|V|. h' is h without its first word; a(g) is the raw count c(g) at
the top order and, below it, the continuation count N1+(. g), the number of distinct
words seen before g ("Francisco" is frequent but follows only "San"):

    P(w | h) = max(a(h w) - D(a(h w)), 0) / a(h .)  +  gamma(h) P(w | h')
    gamma(h) = sum_w D(a(h w)) / a(h .)                       (the mass taken away)

    >>> from tinytransformer.ngram.counting import NGramCounts
    >>> counts = NGramCounts.from_sentences([["I", "am", "Sam"], ["Sam", "I", "am"]], order=2)
    >>> D = kneser_ney_discounts(counts)                # {order: (D,)}
    >>> lm = kneser_ney_model(counts, D)                # a BackoffLM, ready to score
    >>> round(float(lm.distribution(["I"]).sum()), 12)
    1.0

D(a) is one discount per order (interpolated) or three, for a = 1, 2, 3+ (modified,
what KenLM builds): `chen_goodman_discounts`. The reference `KneserNeyReference` is
the equation, recursive, over Counters of tuples; `kneser_ney_model` computes it for
every stored n-gram at once with sorted arrays, tested equal, as a `BackoffLM`.

Does not handle: KenLM's raw counts for n-grams that start with `<s>` (our n-1 `<s>`
of padding make the top order carry those counts), pruning, Katz or Witten-Bell.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from tinytransformer.ngram.backoff import BackoffLM, BackoffTable
from tinytransformer.ngram.counting import NGramCounts, count_ngrams, vocabulary
from tinytransformer.ngram.scoring import BOS, BOS_ID, UNK

__all__ = [
    "KneserNeyReference", "kneser_ney_counts", "kneser_ney_discounts", "kneser_ney_model",
    "chen_goodman_discounts", "FALLBACK_DISCOUNT", "FALLBACK_MODIFIED_DISCOUNTS",
]

# Discounts used where counts of counts give none in (0, j] (the modified ones are KenLM's).
FALLBACK_DISCOUNT = 0.75
FALLBACK_MODIFIED_DISCOUNTS = (0.5, 1.0, 1.5)


def chen_goodman_discounts(counts_of_counts, modified: bool) -> tuple[float, ...]:
    """(D,) or (D1, D2, D3+) from the counts of counts n1..n4 of one order.

    n_j is the number of n-grams of the order with a = j. Interpolated Kneser-Ney uses
    D = n1 / (n1 + 2 n2) for every a >= 1; modified Kneser-Ney uses, with Y = n1 / (n1 + 2 n2),

        D1 = 1 - 2Y n2/n1  (a = 1),   D2 = 2 - 3Y n3/n2  (a = 2),   D3+ = 3 - 4Y n4/n3  (a >= 3)

    Where the counts give no discount in (0, j] (a tiny corpus) the fallback is used:
    D = 0.75, or KenLM's --discount_fallback (0.5, 1.0, 1.5) for modified.
    """
    n1, n2, n3, n4 = counts_of_counts
    if not modified:
        if n1 > 0 and n2 > 0:
            return (n1 / (n1 + 2 * n2),)  # D = n1 / (n1 + 2 n2), always in (0, 1)
        return (FALLBACK_DISCOUNT,)
    if min(counts_of_counts) == 0:
        return FALLBACK_MODIFIED_DISCOUNTS
    Y = n1 / (n1 + 2 * n2)
    D = (1 - 2 * Y * n2 / n1, 2 - 3 * Y * n3 / n2, 3 - 4 * Y * n4 / n3)
    if all(0 < d <= j for j, d in enumerate(D, 1)):
        return D
    return FALLBACK_MODIFIED_DISCOUNTS


def _discount(discounts, a):
    """D(a): 0 for a = 0; D for a >= 1 (interpolated), D1, D2, D3+ (modified)."""
    if a <= 0:
        return 0.0
    return discounts[min(a, len(discounts)) - 1]


# ---------------------------------------------------------------------- the reference
class KneserNeyReference:
    """Interpolated (or modified) Kneser-Ney, straight from the equation, over Counters of tuples.

    Slow and plain: the oracle that `kneser_ney_model` is tested against. An n-gram that ends
    in `<s>` follows only padding and gets a = 0 below the top order; a context never
    seen (a(h .) = 0) passes all its mass down (gamma = 1); below the unigrams is 1/|V|.
    """

    def __init__(self, sentences, order: int, modified: bool = False, min_count: int = 1):
        sentences = [list(s) for s in sentences]
        self.order = order
        self.vocab = vocabulary(sentences, min_count)
        counts = count_ngrams(sentences, order, min_count)
        # a(g): raw count at the top order, continuation count N1+(. g) below it.
        a: Counter = Counter({g: c for g, c in counts.items() if len(g) == order})
        for g in counts:
            if len(g) >= 2:
                a[g[1:]] += 1  # one more distinct word seen before g[1:]
        for g in list(a):
            if len(g) < order and g[-1] == BOS:
                a[g] = 0  # only padding comes before an n-gram that ends in <s>
        self.a = a
        self.discounts = {}
        for k in range(1, order + 1):
            of_order = [c for g, c in a.items() if len(g) == k]
            self.discounts[k] = chen_goodman_discounts([of_order.count(j) for j in (1, 2, 3, 4)], modified)
        # a(h .) and sum_w D(a(h w)) for every context h
        self.total: dict = defaultdict(float)
        self.taken: dict = defaultdict(float)
        for g, c in a.items():
            self.total[g[:-1]] += c
            self.taken[g[:-1]] += _discount(self.discounts[len(g)], c)

    def score(self, word: str, context=()) -> float:
        """P(word | context) by the recursive equation of the module docstring."""
        known = set(self.vocab)
        h = tuple(w if w in known else UNK for w in context)
        w = word if word in known else UNK
        a_hw = self.a[h + (w,)]
        alpha = (a_hw - _discount(self.discounts[len(h) + 1], a_hw)) / self.total[h] if self.total[h] else 0.0
        gamma = self.taken[h] / self.total[h] if self.total[h] else 1.0
        lower = self.score(w, h[1:]) if h else 1.0 / len(self.vocab)
        return alpha + gamma * lower


# ---------------------------------------------------------------------- the fast path
def kneser_ney_counts(counts: NGramCounts) -> list[np.ndarray | None]:
    """a(g) for every stored n-gram, indexed [order][table index] (raw at the top, N1+(. g) below)."""
    n, V, tables = counts.order, len(counts.vocab), counts.tables
    adjusted: list[np.ndarray | None] = [None] * (n + 1)
    adjusted[n] = tables[n - 1].count.astype(np.float64)
    for k in range(n - 1, 0, -1):
        # each stored (k+1)-gram x g adds one distinct left neighbour to its suffix g
        adjusted[k] = np.bincount(counts.suffixes[k + 1], minlength=tables[k - 1].keys.size).astype(np.float64)
        adjusted[k][tables[k - 1].keys % V == BOS_ID] = 0.0  # only padding precedes <s>
    return adjusted


def kneser_ney_discounts(counts: NGramCounts, modified: bool = False) -> dict[int, tuple[float, ...]]:
    """{order: (D,)} for interpolated, {order: (D1, D2, D3+)} for modified Kneser-Ney."""
    adjusted = kneser_ney_counts(counts)
    return {k: chen_goodman_discounts([int(np.count_nonzero(adjusted[k] == j)) for j in (1, 2, 3, 4)], modified)
            for k in range(1, counts.order + 1)}


def kneser_ney_model(counts: NGramCounts, discounts: dict[int, tuple[float, ...]]) -> BackoffLM:
    """The Kneser-Ney model of `counts` as a BackoffLM: log10 P of every stored n-gram, log10 gamma(h).

    discounts: what `kneser_ney_discounts` returns; one per order is interpolated
    Kneser-Ney, three per order modified Kneser-Ney.
    """
    n, V, tables = counts.order, len(counts.vocab), counts.tables
    if sorted(discounts) != list(range(1, n + 1)):
        raise ValueError(f"discounts: expected one entry per order 1..{n}, got orders {sorted(discounts)}")
    adjusted = kneser_ney_counts(counts)
    logp: list[np.ndarray] = []
    bow: list[np.ndarray] = []
    p_lower = None
    for k in range(1, n + 1):
        a = adjusted[k]
        D = tuple(float(d) for d in discounts[k])
        # D(a): the discount for a k-gram seen a times (0 for a = 0)
        if len(D) == 3:
            d = np.select([a == 1, a == 2, a >= 3], list(D), 0.0)
        else:
            d = np.where(a >= 1, D[0], 0.0)
        if k == 1:
            total = a.sum()
            alpha = (a - d) / total
            gamma0 = d.sum() / total
            p = alpha + gamma0 / V  # interpolate with the uniform distribution over V
        else:
            parent = counts.prefixes[k]  # [M_k] index of each k-gram's context h
            size = tables[k - 2].keys.size
            total = np.bincount(parent, weights=a, minlength=size)  # a(h .)
            taken = np.bincount(parent, weights=d, minlength=size)  # sum_w D(a(h w))
            seen = total > 0
            gamma = np.ones(size)
            gamma[seen] = taken[seen] / total[seen]
            safe_total = np.where(seen, total, 1.0)
            alpha = np.where(seen[parent], (a - d) / safe_total[parent], 0.0)
            p = alpha + gamma[parent] * p_lower[counts.suffixes[k]]  # P(w|h) = alpha + gamma(h) P(w|h')
            bow.append(np.log10(gamma))
        logp.append(np.log10(p))
        p_lower = p
    bow.append(np.zeros(tables[n - 1].keys.size))  # the top order is never a context
    return BackoffLM(counts.vocab, [BackoffTable(t.keys, lp, b) for t, lp, b in zip(tables, logp, bow)])
