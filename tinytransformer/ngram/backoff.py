"""Back-off models: what Kneser-Ney produces, what ARPA files store, what KenLM reads.

A back-off model stores, for every n-gram it keeps, a probability P*(h w) and, for
every stored context h, a back-off weight bow(h). A query uses the longest stored
n-gram and pays the weights of the longer contexts it passed over (h' is h without
its first word; bow(h) = 1 if h is not stored):

    P(w | h) = P*(h w)  if h w is stored,  else  bow(h) P(w | h')

Interpolated Kneser-Ney is one, with P*(h w) its full probability and bow(h) = gamma(h),
since for an unseen h w only gamma(h) P(w | h') is left. ARPA files hold exactly these
numbers as log10 P* and log10 bow, so KenLM scores our files the same.

    >>> from tinytransformer.ngram import NGramLM
    >>> lm = NGramLM(2, "kneser-ney").fit([["a", "b"], ["b", "a"]]).model    # a BackoffLM
    >>> stored = 10 ** lm.log10_probability(["a", "b"])                      # "a b" was seen
    >>> abs(lm.score("b", ["a"]) - stored) < 1e-15
    True
    >>> p_b, bow_b = 10 ** lm.log10_probability(["b"]), 10 ** lm.log10_back_off(["b"])
    >>> abs(lm.score("b", ["b"]) - bow_b * p_b) < 1e-15                      # "b b" was not
    True

Does not handle: pruning, renormalising a model, `<unk>` outside the vocabulary's
first slot (the vocabulary always starts `<unk>`, `<s>`, `</s>`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import is_integer
from tinytransformer.ngram.counting import lookup
from tinytransformer.ngram.scoring import BOS, EOS, UNK, LanguageModel

__all__ = ["BackoffLM", "BackoffTable", "BACK_OFF_MASS_TOLERANCE"]

# How far above 1 the back-off mass of a context may be before the model is refused.
BACK_OFF_MASS_TOLERANCE = 1e-3


@dataclass
class BackoffTable:
    """The stored n-grams of one order, sorted by key = prefix index * |V| + last word id."""

    keys: np.ndarray  # int64 [M]
    logp: np.ndarray  # float64 [M] log10 P*(h w) of each stored n-gram
    bow: np.ndarray  # float64 [M] log10 bow of each stored n-gram as a context (0 at the top order)


def ngram_ids(keys_by_order, k: int, vocab_size: int) -> np.ndarray:
    """The word ids of every stored k-gram, in table order: int64 [M_k, k]."""
    words = np.arange(vocab_size, dtype=np.int64)[:, None]  # [M_1, 1] the unigram table is the vocabulary
    for j in range(2, k + 1):
        keys = keys_by_order[j - 1]
        words = np.concatenate([words[keys // vocab_size], (keys % vocab_size)[:, None]], axis=1)  # [M_j, j]
    return words


class BackoffLM(LanguageModel):
    """A back-off n-gram model: log10 P* and log10 bow for every stored n-gram.

    vocab: the words, starting `<unk>`, `<s>`, `</s>`; tables: one `BackoffTable` per
    order, the first holding every word of the vocabulary (key = word id). Built by
    `kneser_ney_model` or read from an ARPA file by `arpa.read_arpa` (written by `arpa.write_arpa`).
    """

    def __init__(self, vocab, tables):
        vocab = list(vocab)
        if vocab[:3] != [UNK, BOS, EOS]:
            raise ValueError(f"vocab: expected it to start with {[UNK, BOS, EOS]}, got {vocab[:3]}")
        if not tables:
            raise ValueError("tables: expected at least the 1-gram table, got none")
        V = len(vocab)
        if not np.array_equal(tables[0].keys, np.arange(V)):
            raise ValueError(f"tables[0]: expected the keys 0..{V - 1} (one per vocabulary word), "
                             f"got {tables[0].keys.size} keys")
        for k, t in enumerate(tables, 1):
            if not (t.keys.shape == t.logp.shape == t.bow.shape) or t.keys.ndim != 1:
                raise ValueError(f"tables[{k - 1}]: expected keys, logp and bow of one length, got shapes "
                                 f"{t.keys.shape}, {t.logp.shape}, {t.bow.shape}")
            if t.keys.size > 1 and not (np.diff(t.keys) > 0).all():
                raise ValueError(f"tables[{k - 1}]: expected strictly increasing keys")
        self.order = len(tables)
        self.vocab = vocab
        self._index = {w: i for i, w in enumerate(vocab)}
        self.tables: list[BackoffTable] = list(tables)
        self._check_back_off_mass()

    def __repr__(self) -> str:
        sizes = ", ".join(str(t.keys.size) for t in self.tables)
        return f"BackoffLM(order={self.order}, |V|={len(self.vocab)}, n-grams per order: {sizes})"

    # ------------------------------------------------------------------ what is stored
    def distinct_ngrams(self, order) -> int:
        """Number of n-grams of this order stored in the model."""
        if not is_integer(order) or not 1 <= order <= self.order:
            raise ValueError(f"order: expected an integer in 1..{self.order}, got {order!r}")
        return int(self.tables[order - 1].keys.size)

    def ngrams(self, order: int) -> np.ndarray:
        """Word ids of every stored n-gram of this order, in table order: int64 [M, order]."""
        return ngram_ids([t.keys for t in self.tables], order, len(self.vocab))

    def log10_probability(self, ngram) -> float:
        """log10 P*(ngram) as stored (KeyError if the n-gram is not stored)."""
        return float(self.tables[len(ngram) - 1].logp[self._stored(ngram)])

    def log10_back_off(self, context) -> float:
        """log10 bow(context) as stored (0 where the context is not stored)."""
        if not context:
            return 0.0
        try:
            return float(self.tables[len(context) - 1].bow[self._stored(context)])
        except KeyError:
            return 0.0

    def _stored(self, ngram) -> int:
        ngram = self._check_context(ngram, name="ngram", limit=self.order)
        index = self._lookup(np.array([[self._id(w) for w in ngram]], dtype=np.int64))[0] if ngram else -1
        if index < 0:
            raise KeyError(f"the n-gram {' '.join(ngram)!r} is not stored in the model")
        return int(index)

    # ------------------------------------------------------------------ scoring
    def _lookup(self, grams) -> np.ndarray:
        return lookup([t.keys for t in self.tables], grams, len(self.vocab))

    def _log10prob(self, grams) -> np.ndarray:
        """log10 P(last | the others) for each row of grams [N, m+1], by the back-off rule."""
        m = grams.shape[1] - 1
        total = np.zeros(len(grams))
        done = np.zeros(len(grams), dtype=bool)
        with np.errstate(over="ignore"):  # log10 values near -1.8e308 may add up to -inf: P = 0
            for j in range(m + 1):  # drop one more word of the context each time
                gram = self._lookup(grams[:, j:])
                found = ~done & (gram >= 0)
                total[found] += self.tables[m - j].logp[gram[found]]  # the longest stored n-gram's log10 P*
                done |= found
                if j < m:
                    ctx = self._lookup(grams[:, j:m])
                    back = ~done & (ctx >= 0)
                    total[back] += self.tables[m - j - 1].bow[ctx[back]]  # a context passed over: log10 bow
        return total

    def _check_back_off_mass(self) -> None:
        """Refuse a back-off weight above 1 that gives the words it backs off to more than 1 in all.

        A weight above 1 is allowed (Katz back-off files have them), as long as the words
        it backs off to get at most 1 in total; one that gives them more would let
        P(w | h) exceed 1.

        A stored P* is at most 1 (the ARPA reader checks), and a weight bow(h) <= 1 cannot
        raise a probability, so only a context h with bow(h) > 1 can make some P(w | h) > 1.
        For each, the mass it gives the words never seen after it, bow(h) (mass(h') - S'(h)),
        must be at most 1 + BACK_OFF_MASS_TOLERANCE (a margin for printed rounding): a little
        stricter than P(w | h) <= 1 for each w, and what every normalised model satisfies.
        Here mass(h) = sum over all w of P(w | h) = S(h) + bow(h) (mass(h') - S'(h)), with
        S(h) = sum of P*(h w) over the stored h w and S'(h) = sum of P(w | h') over the same w.
        """
        if not any((t.bow > 0).any() for t in self.tables[:-1]):
            return  # no weight above 1: every P is a product of numbers <= 1
        V = len(self.vocab)
        with np.errstate(over="ignore", invalid="ignore"):
            masses = [np.array([np.sum(10.0 ** self.tables[0].logp)])]  # [order 0: the empty context]
            for j in range(1, self.order):  # contexts h of order j, followed by the stored (j+1)-grams
                grams = self.ngrams(j + 1)  # [M, j+1]
                parent = self.tables[j].keys // V  # [M] index of each (j+1)-gram's context h
                size = self.tables[j - 1].keys.size
                seen = np.bincount(parent, weights=10.0 ** self.tables[j].logp, minlength=size)  # S(h)
                lower = np.bincount(parent, weights=10.0 ** self._log10prob(grams[:, 1:]), minlength=size)  # S'(h)
                mass_lower = self._context_mass(self.ngrams(j)[:, 1:], masses)  # mass(h')
                back = 10.0 ** self.tables[j - 1].bow * np.maximum(mass_lower - lower, 0.0)
                masses.append(seen + back)
                bad = np.flatnonzero((self.tables[j - 1].bow > 0) & ~(back <= 1 + BACK_OFF_MASS_TOLERANCE))
                if bad.size:
                    i = int(bad[0])
                    context = " ".join(self.vocab[w] for w in self.ngrams(j)[i])
                    raise ValueError(
                        f"the back-off weight of {context!r} (log10 {self.tables[j - 1].bow[i]:+.6g}) gives "
                        f"the words never seen after it a total probability of {back[i]:.6g}, above 1: "
                        f"P(. | {context}) sums to more than 1, and P(w | {context}) can exceed 1; a back-off "
                        "weight above 1 must leave the probabilities after its context summing to 1")

    def _context_mass(self, contexts, masses) -> np.ndarray:
        """mass(c) for each row of contexts [M, m]: that of its longest stored suffix."""
        m = contexts.shape[1]
        out = np.full(len(contexts), masses[0][0])
        done = np.zeros(len(contexts), dtype=bool)
        for i in range(m):
            index = self._lookup(contexts[:, i:])
            found = ~done & (index >= 0)
            out[found] = masses[m - i][index[found]]
            done |= found
        return out
