"""n-gram language models: counting, smoothing, Kneser-Ney, ARPA files.

Before attention there was counting. An n-gram model predicts a word from the
n-1 words before it, P(w_i | w_{i-n+1} .. w_{i-1}), estimated from how often
each n-gram occurred in training text. The maximum-likelihood estimate

    P_mle(w | h) = c(h w) / c(h .)

gives probability 0 to every n-gram it never saw, so held-out text gets
infinite perplexity. Smoothing moves some mass to the unseen: add-k adds k to
every count, P = (c(h w) + k) / (c(h .) + k |V|). Kneser-Ney (Kneser and Ney
1995; Chen and Goodman 1998, "An empirical study of smoothing techniques for
language modeling") subtracts a discount D from every seen count and hands the
freed mass to a lower-order distribution built from *continuation counts*
N1+(. w) = the number of distinct words seen before w ("Francisco" is frequent
but follows only "San", so it is a poor guess after an unseen context):

    P_kn(w | h) = max(a(h w) - D(a), 0) / a(h .)  +  gamma(h) P_kn(w | h')
    gamma(h)   = sum_w D(a(h w)) / a(h .)                 (the mass taken away)

with h' = h without its first word, a = raw counts at the highest order and
continuation counts below it (none for n-grams ending in `<s>`, which only the
padding produces), and at the bottom a uniform 1/|V| so that every
word, `<unk>` included, gets probability > 0. Interpolated Kneser-Ney uses one
discount per order, D = n1 / (n1 + 2 n2); modified Kneser-Ney (what KenLM
builds) uses three, D1, D2, D3+, from the counts of counts n1..n4:

    Y = n1 / (n1 + 2 n2),  D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3

Where counts of counts give no discount in (0, j] (a tiny corpus) a fallback is
used: D = 0.75, or KenLM's --discount_fallback (0.5, 1.0, 1.5) for modified.

An interpolated model is also a back-off model: a seen n-gram stores its full
interpolated probability and a seen context h stores its back-off weight
gamma(h). That is exactly what an ARPA file holds (log10 probabilities and
log10 back-off weights), so `to_arpa` writes it and KenLM scores it the same.

Conventions (those of `nltk.lm`, whose names this class follows):
- Training sentences are padded as nltk's `padded_everygram_pipeline` does:
  n-1 `<s>` on the left and n-1 `</s>` on the right, and every k-gram inside a
  padded sentence is counted, k = 1..n. (For order 1 nltk adds no padding; we add
  one `</s>` so that a unigram model can end a sentence.)
- Scoring a sentence scores each word and one `</s>`, each given the n-1 tokens
  before it, with n-1 `<s>` on the left. To score our way with KenLM, pass the
  padded sentence: `kenlm.Model(p).full_scores("<s> <s> a b </s>", bos=False,
  eos=False)` and drop the first n-1 scores. (KenLM's `bos=True` starts from the
  single context `<s>`, which is the same thing only for bigram models; KenLM
  reads models of order 2 and up.)
- The vocabulary is `<unk>`, `<s>`, `</s>` and every training word seen at least
  `min_count` times; rarer training words are counted as `<unk>` (nltk instead
  keeps their counts under the word), and unknown words map to `<unk>`.
- Tokens are integer ids; the n-grams of each order sit in a sorted array of
  int64 keys, key = index of the (k-1)-gram prefix * |V| + last word id, and
  lookups are `np.searchsorted`. No dictionaries of tuples.

    >>> lm = NGramLM(2, smoothing="mle").fit([["I", "am", "Sam"], ["Sam", "I", "am"]])
    >>> lm.score("am", ["I"])                 # c(I am) / c(I .) = 2 / 2
    1.0
    >>> lm.score("Sam", ["<s>"])              # 1 of the 2 sentences starts with Sam
    0.5
    >>> kn = NGramLM(2, smoothing="kneser-ney").fit([["I", "am", "Sam"], ["Sam", "I", "am"]])
    >>> round(sum(kn.score(w, ["I"]) for w in kn.vocab), 12)
    1.0

Does not handle: pruning, Katz or Witten-Bell smoothing, interpolating
lower orders for MLE/add-k (nltk does not either), ARPA files for MLE or add-k
(their unseen-context rule is not a back-off), gzip-compressed ARPA files,
KenLM's binary format, tokens that contain whitespace in ARPA files.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NGramLM", "BOS", "EOS", "UNK", "SMOOTHINGS",
    "text_to_sentences", "bits_per_byte", "unknown_word_bits",
]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_UNK_ID, _BOS_ID, _EOS_ID = 0, 1, 2
SMOOTHINGS = ("mle", "laplace", "add-k", "kneser-ney", "modified-kneser-ney")
_BACKOFF_SMOOTHINGS = ("kneser-ney", "modified-kneser-ney", "arpa")

# Discounts used where counts of counts give none in (0, j] (the modified ones are KenLM's).
FALLBACK_DISCOUNT = 0.75
FALLBACK_MODIFIED_DISCOUNTS = (0.5, 1.0, 1.5)

_LOG10_2 = math.log10(2.0)
_MAX_ARPA_LINE = 1 << 20  # bytes; an ARPA line is a few numbers and n words


@dataclass
class _Table:
    """The distinct k-grams of one order, sorted by key = prefix index * |V| + last word id."""

    keys: np.ndarray  # int64 [M]
    count: np.ndarray | None = None  # int64 [M] raw counts (None for a model read from ARPA)
    context_total: np.ndarray | None = None  # int64 [M] c(g .): sum of counts of the (k+1)-grams g w
    logp: np.ndarray | None = None  # float64 [M] log10 P(w | h) (back-off models only)
    bow: np.ndarray | None = None  # float64 [M] log10 back-off weight of this k-gram as a context


class NGramLM:
    """A count-based language model of a given order (3 = trigram).

    order: n, the model conditions on the n-1 previous tokens.
    smoothing: "mle", "laplace" (add-1), "add-k", "kneser-ney" (interpolated,
        one discount per order) or "modified-kneser-ney" (three per order).
    k: the pseudo-count of add-k (must stay 1 for "laplace").
    min_count: training words seen fewer times than this become `<unk>`.
    """

    def __init__(self, order, smoothing="mle", k=1.0, min_count=1):
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
            raise ValueError(f"order: expected an integer >= 1 (1 = unigram), got {order!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing: expected one of {SMOOTHINGS}, got {smoothing!r}")
        if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) \
                or not math.isfinite(k) or k <= 0:
            raise ValueError(f"k: expected a finite number > 0, got {k!r}")
        if smoothing == "laplace" and k != 1:
            raise ValueError(f"k: smoothing='laplace' is add-k with k=1, got k={k!r}; "
                             "use smoothing='add-k' for another k")
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"min_count: expected an integer >= 1, got {min_count!r}")
        self.order = int(order)
        self.smoothing = smoothing
        self.k = float(k)
        self.min_count = int(min_count)
        self.vocab: list[str] = []
        self.discounts: dict[int, tuple[float, ...]] = {}
        self._index: dict[str, int] = {}
        self._tables: list[_Table] = []

    def __repr__(self) -> str:
        fitted = f", |V|={len(self.vocab)}" if self.vocab else ", unfitted"
        return f"NGramLM(order={self.order}, smoothing={self.smoothing!r}{fitted})"

    # ------------------------------------------------------------------ counting
    def fit(self, sentences):
        """Count the n-grams of `sentences` (an iterable of lists of str tokens) and estimate."""
        if self.smoothing == "arpa":
            raise ValueError("fit: this model was read from an ARPA file and has no counts to refit; "
                             "create a new NGramLM(order, smoothing=...) instead")
        words, lengths = _flatten(sentences, "sentences", reserved=True)
        if not lengths:
            raise ValueError("sentences: expected at least one sentence to train on, got none")
        n = self.order

        # Vocabulary: specials first, then words seen >= min_count times, sorted.
        first_seen: dict[str, int] = {}
        raw = np.fromiter((first_seen.setdefault(w, len(first_seen)) for w in words),
                          dtype=np.int64, count=len(words))
        freq = np.bincount(raw, minlength=len(first_seen))
        kept = sorted(w for w, f in zip(first_seen, freq) if f >= self.min_count and w != UNK)
        self.vocab = [UNK, BOS, EOS] + kept
        self._index = {w: i for i, w in enumerate(self.vocab)}
        to_id = np.array([self._index.get(w, _UNK_ID) for w in first_seen], dtype=np.int64)
        word_ids = to_id[raw] if words else np.zeros(0, np.int64)  # rare words -> <unk>
        V = len(self.vocab)

        # Padded sequence: n-1 <s>, the words, max(n-1, 1) </s> per sentence.
        left, right = n - 1, max(n - 1, 1)
        lengths = np.asarray(lengths, dtype=np.int64)
        padded = lengths + left + right
        starts = np.cumsum(padded) - padded
        sentence_of = np.repeat(np.arange(len(lengths)), padded)  # [L] which sentence each slot is in
        slot = np.arange(padded.sum()) - starts[sentence_of]  # position inside its padded sentence
        word_start = np.cumsum(lengths) - lengths
        is_word = (slot >= left) & (slot < left + lengths[sentence_of])
        seq = np.where(slot < left, _BOS_ID, _EOS_ID).astype(np.int64)
        seq[is_word] = word_ids[(word_start[sentence_of] + slot - left)[is_word]]
        L = len(seq)

        # Order 1: the table is the whole vocabulary (index = word id).
        counts = np.bincount(seq, minlength=V).astype(np.int64)
        tables = [_Table(keys=np.arange(V, dtype=np.int64), count=counts)]
        prefixes, suffixes = [None, None], [None, None]  # indexed by order
        gram_at = seq.copy()  # [L] index of the k-gram that starts at each slot (-1: none)
        for k in range(2, n + 1):
            if tables[-1].keys.size * V >= 2**62:
                raise ValueError(f"fit: too many distinct {k - 1}-grams for a {V}-word vocabulary")
            start = np.arange(L - k + 1)
            valid = sentence_of[start] == sentence_of[start + k - 1]  # k-gram inside one sentence
            start = start[valid]
            key = gram_at[start] * V + seq[start + k - 1]  # (k-1)-gram prefix index, last word
            keys, first, inverse_k, count_k = np.unique(key, return_index=True, return_inverse=True,
                                                        return_counts=True)
            suffixes.append(gram_at[start[first] + 1])  # index of the last k-1 words, order k-1
            prefixes.append(keys // V)
            tables.append(_Table(keys=keys, count=count_k.astype(np.int64)))
            next_at = np.full(L, -1, dtype=np.int64)
            next_at[start] = inverse_k.reshape(-1)
            gram_at = next_at
        # c(h .) for every h of order k-1 = sum of the counts of the k-grams that extend it.
        for k in range(2, n + 1):
            tables[k - 2].context_total = np.bincount(prefixes[k], weights=tables[k - 1].count,
                                                      minlength=tables[k - 2].keys.size).astype(np.int64)
        tables[n - 1].context_total = np.zeros(tables[n - 1].keys.size, dtype=np.int64)
        self._tables = tables
        self._unigram_total = int(counts.sum())
        self.discounts = {}
        if self.smoothing in ("kneser-ney", "modified-kneser-ney"):
            self._estimate_kneser_ney(prefixes, suffixes)
        return self

    def _estimate_kneser_ney(self, prefixes, suffixes):
        """Fill every table's log10 P and log10 back-off weight (interpolated Kneser-Ney)."""
        n, V, tables = self.order, len(self.vocab), self._tables
        modified = self.smoothing == "modified-kneser-ney"
        # a: raw counts at the top order, continuation counts N1+(. g) below it.
        adjusted = [None] * (n + 1)
        adjusted[n] = tables[n - 1].count.astype(np.float64)
        for k in range(n - 1, 0, -1):
            adjusted[k] = np.bincount(suffixes[k + 1], minlength=tables[k - 1].keys.size).astype(np.float64)
            # A k-gram that ends in <s> is only ever preceded by left padding: no continuation.
            adjusted[k][tables[k - 1].keys % V == _BOS_ID] = 0.0
        p_lower = None
        for k in range(1, n + 1):
            a = adjusted[k]
            counts_of_counts = [int(np.count_nonzero(a == j)) for j in (1, 2, 3, 4)]
            D = _discounts(counts_of_counts, modified)
            self.discounts[k] = D
            # D(a): the discount for a k-gram seen a times (0 for a = 0).
            if modified:
                d = np.select([a == 1, a == 2, a >= 3], list(D), 0.0)
            else:
                d = np.where(a >= 1, D[0], 0.0)
            if k == 1:
                total = a.sum()
                alpha = (a - d) / total
                gamma0 = d.sum() / total
                p = alpha + gamma0 / V  # interpolate with the uniform distribution over V
            else:
                parent = prefixes[k]
                size = tables[k - 2].keys.size
                total = np.bincount(parent, weights=a, minlength=size)  # a(h .)
                taken = np.bincount(parent, weights=d, minlength=size)  # sum_w D(a(h w))
                seen = total > 0
                gamma = np.ones(size)
                gamma[seen] = taken[seen] / total[seen]
                safe_total = np.where(seen, total, 1.0)
                alpha = np.where(seen[parent], (a - d) / safe_total[parent], 0.0)
                p = alpha + gamma[parent] * p_lower[suffixes[k]]  # P(w|h) = alpha + gamma(h) P(w|h')
                tables[k - 2].bow = np.log10(gamma)
            tables[k - 1].logp = np.log10(p)
            p_lower = p
        tables[n - 1].bow = np.zeros(tables[n - 1].keys.size)

    # ------------------------------------------------------------------ scoring
    def score(self, word, context=None) -> float:
        """P(word | context); context holds at most order-1 words (fewer: a lower-order query)."""
        return float(2.0 ** self.logscore(word, context))

    def logscore(self, word, context=None) -> float:
        """log2 P(word | context) (-inf where the probability is 0)."""
        self._check_fitted("logscore")
        if not isinstance(word, str):
            raise TypeError(f"word: expected a str, got {type(word).__name__}")
        context = self._check_context(context)
        ids = np.array([[self._id(w) for w in (*context, word)]], dtype=np.int64)
        return float(self._log10prob(ids)[0] / _LOG10_2)

    def logscores(self, sentences) -> np.ndarray:
        """log2 P of every scored token of `sentences`: each word and one `</s>` per sentence."""
        self._check_fitted("logscores")
        return self._log10prob(self._scored_ngrams(sentences)) / _LOG10_2

    def sentence_logscore(self, sentence) -> float:
        """log2 P(sentence), the sum over its words and the closing `</s>`."""
        return float(self.logscores([sentence]).sum())

    def perplexity(self, sentences) -> float:
        """2 ** (mean negative log2 P) over the scored tokens (inf if any has P = 0)."""
        scores = self.logscores(sentences)
        if scores.size == 0:
            raise ValueError("sentences: expected at least one sentence to score, got none")
        with np.errstate(over="ignore"):
            return float(np.exp2(-scores.mean()))

    def training_counts(self, sentences, order=None) -> np.ndarray:
        """Training count of the order-k n-gram ending at every scored token of `sentences`.

        A zero is an n-gram that training never saw: the sparsity that smoothing is for.
        """
        self._check_fitted("training_counts")
        if self.smoothing == "arpa":
            raise ValueError("training_counts: a model read from an ARPA file has no counts")
        order = self.order if order is None else order
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= self.order:
            raise ValueError(f"order: expected an integer in 1..{self.order}, got {order!r}")
        grams = self._scored_ngrams(sentences)[:, self.order - order:]
        index = self._lookup(grams)
        return np.where(index >= 0, self._tables[order - 1].count[np.maximum(index, 0)], 0)

    def count(self, ngram) -> int:
        """How many times the n-gram (a sequence of 1..order words) occurred in padded training text."""
        self._check_fitted("count")
        ngram = self._check_context(ngram, name="ngram", limit=self.order)
        if not ngram or self.smoothing == "arpa":
            raise ValueError("ngram: expected 1..order words of a model fitted on text")
        index = self._lookup(np.array([[self._id(w) for w in ngram]], dtype=np.int64))[0]
        return int(self._tables[len(ngram) - 1].count[index]) if index >= 0 else 0

    def distinct_ngrams(self, order) -> int:
        """Number of distinct n-grams of this order stored in the model."""
        self._check_fitted("distinct_ngrams")
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= self.order:
            raise ValueError(f"order: expected an integer in 1..{self.order}, got {order!r}")
        if order == 1 and self._tables[0].count is not None:
            return int(np.count_nonzero(self._tables[0].count))
        return int(self._tables[order - 1].keys.size)

    def distribution(self, context=()) -> np.ndarray:
        """P(w | context) for every w in `self.vocab`, as a float64 array [|V|]."""
        self._check_fitted("distribution")
        context = self._check_context(context)
        ids = np.array([self._id(w) for w in context], dtype=np.int64)
        V = len(self.vocab)
        grams = np.concatenate([np.broadcast_to(ids, (V, len(ids))), np.arange(V)[:, None]], axis=1)
        return 10.0 ** self._log10prob(grams)

    # ------------------------------------------------------------------ sampling
    def generate(self, n_words, context=(), seed=None) -> list[str]:
        """Sample n_words tokens, each from P(. | the previous order-1 tokens).

        context: the words so far (the last order-1 are used; a shorter context is
        taken as the start of a sentence). After `</s>` a new sentence starts.
        seed: an int (or None for fresh randomness) for numpy's default_rng.
        """
        self._check_fitted("generate")
        if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or n_words < 0:
            raise ValueError(f"n_words: expected an integer >= 0, got {n_words!r}")
        if isinstance(context, str):
            raise TypeError(f"context: expected a sequence of words, got the str {context!r}")
        rng = np.random.default_rng(seed)
        width = self.order - 1
        history = [BOS] * width + [str(w) for w in context]
        out: list[str] = []
        for _ in range(int(n_words)):
            ctx = history[len(history) - width:] if width else []
            p = self.distribution(ctx)
            total = p.sum()
            if not total > 0:
                raise ValueError(f"generate: the context {ctx} was never seen in training, so the "
                                 f"{self.smoothing} distribution after it is all zeros")
            word = self.vocab[int(rng.choice(len(p), p=p / total))]
            out.append(word)
            history = history + [word] if word != EOS else [BOS] * width
        return out

    # ------------------------------------------------------------------ ARPA files
    def to_arpa(self, path) -> None:
        """Write the model as an ARPA file: log10 P and log10 back-off weight of every n-gram."""
        self._check_fitted("to_arpa")
        if self.smoothing not in _BACKOFF_SMOOTHINGS:
            raise ValueError(
                f"to_arpa: smoothing={self.smoothing!r} is not a back-off model (its probability "
                "after an unseen context is not a lower-order probability times a weight), so an "
                "ARPA file cannot hold it; fit with 'kneser-ney' or 'modified-kneser-ney'")
        for w in self.vocab:
            if not w or any(c.isspace() for c in w):
                raise ValueError(f"to_arpa: the vocabulary word {w!r} is empty or contains whitespace, "
                                 "which ARPA files use to separate words")
        n, V = self.order, len(self.vocab)
        vocab = np.array(self.vocab, dtype=object)
        words = np.arange(V, dtype=np.int64)[:, None]  # [M_1, 1] word ids of each unigram
        lines = ["\\data\\"] + [f"ngram {k}={t.keys.size}" for k, t in enumerate(self._tables, 1)]
        for k, table in enumerate(self._tables, 1):
            if k > 1:
                words = np.concatenate([words[table.keys // V], (table.keys % V)[:, None]], axis=1)
            lines += ["", f"\\{k}-grams:"]
            text = [" ".join(row) for row in vocab[words]]
            if k < n:
                lines += [f"{_fmt(p)}\t{t}\t{_fmt(b)}" for p, t, b in zip(table.logp, text, table.bow)]
            else:
                lines += [f"{_fmt(p)}\t{t}" for p, t in zip(table.logp, text)]
        lines += ["", "\\end\\", ""]
        Path(path).write_text("\n".join(lines), encoding="utf-8")

    @classmethod
    def from_arpa(cls, path, *, max_order: int = 64) -> "NGramLM":
        """Read an ARPA file (ours, KenLM's, SRILM's). The model scores as KenLM does.

        Raises ValueError naming the file and line on a malformed file: a missing
        `\\data\\` header or section, counts that disagree with the header, a bad
        number, an n-gram whose context is missing.
        """
        return _read_arpa(cls, path, max_order)

    # ------------------------------------------------------------------ internals
    def _check_fitted(self, what):
        if not self._tables:
            raise ValueError(f"{what}: the model is not fitted; call fit(sentences) or NGramLM.from_arpa(path)")

    def _id(self, word) -> int:
        return self._index.get(word, _UNK_ID)

    def _check_context(self, context, name="context", limit=None):
        limit = self.order - 1 if limit is None else limit
        if context is None:
            return ()
        if isinstance(context, str):
            raise TypeError(f"{name}: expected a sequence of words, got the str {context!r}")
        context = tuple(context)
        for w in context:
            if not isinstance(w, str):
                raise TypeError(f"{name}: expected str words, got {type(w).__name__} {w!r}")
        if len(context) > limit:
            raise ValueError(f"{name} has {len(context)} words but an order-{self.order} model "
                             f"takes at most {limit}")
        return context

    def _scored_ngrams(self, sentences) -> np.ndarray:
        """[N, order] ids: for every word and closing </s>, the order-1 tokens before it and itself."""
        words, lengths = _flatten(sentences, "sentences", reserved=False)
        n = self.order
        index = self._index
        ids = np.fromiter((index.get(w, _UNK_ID) for w in words), dtype=np.int64, count=len(words))
        lengths = np.asarray(lengths, dtype=np.int64)
        padded = lengths + n  # n-1 <s> + words + one </s>
        starts = np.cumsum(padded) - padded
        sentence_of = np.repeat(np.arange(len(lengths)), padded)
        slot = np.arange(padded.sum()) - starts[sentence_of]
        seq = np.where(slot < n - 1, _BOS_ID, _EOS_ID).astype(np.int64)
        is_word = (slot >= n - 1) & (slot < n - 1 + lengths[sentence_of])
        seq[is_word] = ids
        # every slot that is not a left pad is scored, with the n-1 slots before it
        targets = np.flatnonzero(slot >= n - 1)
        return seq[targets[:, None] + np.arange(-(n - 1), 1)]  # [N, n]

    def _lookup(self, grams) -> np.ndarray:
        """Index of each row of grams [N, k] in the order-k table, or -1 where it is absent."""
        V = len(self.vocab)
        index = grams[:, 0].copy()
        for j in range(1, grams.shape[1]):
            keys = self._tables[j].keys
            key = index * V + grams[:, j]
            if keys.size == 0:
                index = np.full_like(index, -1)
                continue
            pos = np.minimum(np.searchsorted(keys, key), keys.size - 1)
            index = np.where((index >= 0) & (keys[pos] == key), pos, -1)
        return index

    def _log10prob(self, grams) -> np.ndarray:
        """log10 P(last | the others) for each row of grams [N, m+1], m <= order-1."""
        m = grams.shape[1] - 1
        if self.smoothing in _BACKOFF_SMOOTHINGS:
            # Back-off: the longest seen n-gram's P times the weights of the longer contexts passed over.
            total = np.zeros(len(grams))
            done = np.zeros(len(grams), dtype=bool)
            for j in range(m + 1):
                gram = self._lookup(grams[:, j:])
                found = ~done & (gram >= 0)
                total[found] += self._tables[m - j].logp[gram[found]]
                done |= found
                if j < m:
                    ctx = self._lookup(grams[:, j:m])
                    back = ~done & (ctx >= 0)
                    total[back] += self._tables[m - j - 1].bow[ctx[back]]
            return total
        # MLE and add-k read two counts: c(h w) and c(h .).
        gram = self._lookup(grams)
        c_hw = np.where(gram >= 0, self._tables[m].count[np.maximum(gram, 0)], 0).astype(np.float64)
        if m == 0:
            c_h = np.full(len(grams), float(self._unigram_total))
        else:
            ctx = self._lookup(grams[:, :m])
            c_h = np.where(ctx >= 0, self._tables[m - 1].context_total[np.maximum(ctx, 0)], 0).astype(np.float64)
        if self.smoothing == "mle":
            p = np.divide(c_hw, c_h, out=np.zeros_like(c_hw), where=c_h > 0)  # unseen context: 0, as nltk
        else:
            p = (c_hw + self.k) / (c_h + self.k * len(self.vocab))
        with np.errstate(divide="ignore"):
            return np.log10(p)


# ---------------------------------------------------------------------- helpers
def _flatten(sentences, name, reserved):
    """All tokens of all sentences in one list, and each sentence's length."""
    if isinstance(sentences, (str, bytes)):
        raise TypeError(f"{name}: expected an iterable of sentences (lists of str tokens), got a {type(sentences).__name__}")
    try:
        iterator = iter(sentences)
    except TypeError:
        raise TypeError(f"{name}: expected an iterable of sentences, got {type(sentences).__name__}") from None
    words: list[str] = []
    lengths: list[int] = []
    for i, sentence in enumerate(iterator):
        if isinstance(sentence, (str, bytes)) or not hasattr(sentence, "__iter__"):
            raise TypeError(f"{name}[{i}]: expected a list of str tokens, got {type(sentence).__name__} "
                            f"{sentence!r:.60}")
        tokens = list(sentence)
        if not all(isinstance(w, str) for w in tokens):
            bad = next(w for w in tokens if not isinstance(w, str))
            raise TypeError(f"{name}[{i}]: expected str tokens, got {type(bad).__name__} {bad!r:.60}")
        if reserved and (BOS in tokens or EOS in tokens):
            raise ValueError(f"{name}[{i}] contains {BOS if BOS in tokens else EOS!r}, "
                             "which is reserved for sentence padding")
        words.extend(tokens)
        lengths.append(len(tokens))
    return words, lengths


def _discounts(counts_of_counts, modified):
    """Chen and Goodman's discounts from n1..n4, or the fallback where they are not in (0, j]."""
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


def _fmt(x: float) -> str:
    """A float written so that it reads back exactly (repr), ARPA style for -inf."""
    x = float(x)
    if x == 0:
        return "0"
    return "-inf" if x == -math.inf else repr(x)


def _read_arpa(cls, path, max_order):
    """Parse an ARPA file into a back-off NGramLM (see NGramLM.from_arpa)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    where = str(path)
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise FileNotFoundError(f"ARPA file {where!r} cannot be opened: {error.strerror}") from None

    def fail(number, message):
        raise ValueError(f"ARPA file {where!r}, line {number}: {message}")

    declared: dict[int, int] = {}
    grams: list[list[tuple[str, ...]]] = []
    logps: list[list[float]] = []
    bows: list[list[float]] = []
    state = "preamble"  # preamble -> header -> sections -> end
    current = 0
    number = 0
    with handle:
        lines = iter(lambda: handle.readline(_MAX_ARPA_LINE + 1), b"")
        for number, raw in enumerate(lines, 1):
            if len(raw) > _MAX_ARPA_LINE:
                fail(number, f"longer than {_MAX_ARPA_LINE} bytes (is this an ARPA file?)")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                fail(number, f"not valid UTF-8 ({error.reason} at byte {error.start})")
            if state == "preamble":
                if line == "\\data\\":
                    state = "header"
                continue
            if not line:
                continue
            if state == "end":
                fail(number, f"text after \\end\\: {line!r:.60}")
            if state == "header" and line.startswith("ngram "):
                match = re.fullmatch(r"ngram\s+(\d+)\s*=\s*(\d+)", line)
                if not match:
                    fail(number, f"expected 'ngram K=COUNT', got {line!r:.60}")
                k, c = int(match.group(1)), int(match.group(2))
                if k != len(declared) + 1:
                    fail(number, f"expected the count of order {len(declared) + 1}, got order {k}")
                if k > max_order:
                    fail(number, f"order {k} is larger than max_order={max_order}")
                declared[k] = c
                continue
            section = re.fullmatch(r"\\(\d+)-grams:", line)
            if section:
                if not declared:
                    fail(number, "a section before any 'ngram K=COUNT' line in \\data\\")
                k = int(section.group(1))
                if current and len(grams[current - 1]) != declared[current]:
                    fail(number, f"the header declares {declared[current]} {current}-grams but the "
                                 f"section has {len(grams[current - 1])}")
                if k != current + 1 or k not in declared:
                    fail(number, f"expected section \\{current + 1}-grams:, got {line!r:.60}")
                current = k
                grams.append([])
                logps.append([])
                bows.append([])
                state = "sections"
                continue
            if line == "\\end\\":
                if state != "sections":
                    fail(number, "\\end\\ before any n-gram section")
                if current != len(declared):
                    fail(number, f"the header declares {len(declared)} orders but only "
                                 f"{current} sections were found")
                if len(grams[current - 1]) != declared[current]:
                    fail(number, f"the header declares {declared[current]} {current}-grams but the "
                                 f"section has {len(grams[current - 1])}")
                state = "end"
                continue
            if state != "sections":
                fail(number, f"expected 'ngram K=COUNT' or a section heading, got {line!r:.60}")
            fields = line.split()
            k = current
            if len(fields) not in (k + 1, k + 2) or (k == len(declared) and len(fields) != k + 1):
                expected = f"{k + 1}" if k == len(declared) else f"{k + 1} or {k + 2}"
                fail(number, f"a {k}-gram line needs {expected} fields (log10 P, {k} words"
                             f"{'' if k == len(declared) else ', optional back-off'}), got {len(fields)}")
            if len(grams[k - 1]) >= declared[k]:
                fail(number, f"more {k}-grams than the {declared[k]} the header declares")
            logp = _arpa_float(fields[0], "log10 probability", number, fail)
            bow = _arpa_float(fields[k + 1], "log10 back-off weight", number, fail) if len(fields) == k + 2 else 0.0
            if logp > 0:
                fail(number, f"log10 probability {fields[0]} is > 0 (a probability above 1)")
            grams[k - 1].append(tuple(fields[1:k + 1]))
            logps[k - 1].append(logp)
            bows[k - 1].append(bow)
    if state == "preamble":
        raise ValueError(f"ARPA file {where!r}: no \\data\\ line (is this an ARPA file?)")
    if state != "end":
        fail(number + 1, "the file ends without \\end\\" if grams else "the file has no n-gram sections")
    return _model_from_arpa_lists(cls, where, grams, logps, bows)


def _arpa_float(text, what, number, fail):
    try:
        value = float(text)
    except ValueError:
        fail(number, f"{what} {text!r:.40} is not a number")
    if math.isnan(value) or value == math.inf:
        fail(number, f"{what} {text!r} is not a finite number or -inf")
    return value


def _model_from_arpa_lists(cls, where, grams, logps, bows):
    order = len(grams)
    unigrams = [g[0] for g in grams[0]]
    for special in (BOS, EOS):
        if special not in unigrams:
            raise ValueError(f"ARPA file {where!r}: the 1-grams have no {special} entry")
    extra = [w for w in unigrams if w not in (UNK, BOS, EOS)]
    vocab = [UNK, BOS, EOS] + extra
    index = {w: i for i, w in enumerate(vocab)}
    if len(index) != len(vocab) or len(set(unigrams)) != len(unigrams):
        raise ValueError(f"ARPA file {where!r}: a 1-gram is listed twice")
    V = len(vocab)
    model = cls(order)
    model.smoothing = "arpa"
    model.vocab, model._index = vocab, index
    # <unk> missing from the file: KenLM gives it log10 P = -100; so do we.
    logp1 = np.full(V, -100.0)
    bow1 = np.zeros(V)
    ids1 = np.array([index[w] for w in unigrams], dtype=np.int64)
    logp1[ids1] = logps[0]
    bow1[ids1] = bows[0]
    tables = [_Table(keys=np.arange(V, dtype=np.int64), logp=logp1, bow=bow1)]
    model._tables = tables
    for k in range(2, order + 1):
        rows = grams[k - 1]
        unknown = [g for g in rows if any(w not in index for w in g)]
        if unknown:
            raise ValueError(f"ARPA file {where!r}: the {k}-gram {' '.join(unknown[0])!r} uses a word "
                             "that is not a 1-gram")
        if tables[-1].keys.size * V >= 2**62:
            raise ValueError(f"ARPA file {where!r}: too many {k - 1}-grams for a {V}-word vocabulary")
        ids = np.array([[index[w] for w in g] for g in rows], dtype=np.int64).reshape(len(rows), k)
        prefix = model._lookup(ids[:, :-1]) if len(rows) else np.zeros(0, np.int64)
        if (prefix < 0).any():
            bad = rows[int(np.flatnonzero(prefix < 0)[0])]
            raise ValueError(f"ARPA file {where!r}: the {k}-gram {' '.join(bad)!r} has no entry for its "
                             f"context {' '.join(bad[:-1])!r} among the {k - 1}-grams")
        keys = prefix * V + ids[:, -1]
        order_by = np.argsort(keys, kind="stable")
        keys = keys[order_by]
        if keys.size and (np.diff(keys) == 0).any():
            bad = rows[int(order_by[np.flatnonzero(np.diff(keys) == 0)[0]])]
            raise ValueError(f"ARPA file {where!r}: the {k}-gram {' '.join(bad)!r} is listed twice")
        tables.append(_Table(keys=keys, logp=np.asarray(logps[k - 1], dtype=np.float64)[order_by],
                             bow=np.asarray(bows[k - 1], dtype=np.float64)[order_by]))
    tables[-1].bow = np.zeros(tables[-1].keys.size)
    return model


# ---------------------------------------------------------------------- text and bits per byte
_WORD_PIECES = re.compile(r"\w+|\s+|[^\w\s]")


def text_to_sentences(text: str, level: str = "word") -> list[list[str]]:
    """Split raw text into sentences (lines) of tokens that spell it back exactly.

    level="word": runs of letters/digits, runs of whitespace and single punctuation
    marks (so "a  b." -> ["a", "  ", "b", "."]); level="byte": each UTF-8 byte as two
    hex digits. Each line is one sentence; its `</s>` stands for the newline (the last
    one for the end of the text), so the tokens determine every byte.

        >>> text_to_sentences("Hi, you.\\nok")
        [['Hi', ',', ' ', 'you', '.'], ['ok']]
        >>> text_to_sentences("é", level="byte")
        [['c3', 'a9']]
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    lines = text.split("\n")
    if level == "word":
        return [_WORD_PIECES.findall(line) for line in lines]
    if level == "byte":
        return [[f"{b:02x}" for b in line.encode("utf-8")] for line in lines]
    raise ValueError(f"level: expected 'word' or 'byte', got {level!r}")


def unknown_word_bits(token: str, level: str = "word") -> float:
    """Bits to spell out a token the model calls `<unk>`: its bytes and an end mark, uniformly.

    P(<unk>) is the mass of all unknown words together; to code the text itself the
    word must then be spelled, here with 257 equally likely symbols (256 bytes + end).
    """
    n_bytes = 1 if level == "byte" else len(token.encode("utf-8"))
    return (n_bytes + 1) * math.log2(257)


def bits_per_byte(lm: NGramLM, text: str, level: str = "word") -> float:
    """Bits the model needs per UTF-8 byte of `text` (lower is better).

    Total -log2 P over the tokens of `text_to_sentences(text, level)` (each `</s>`
    included, each `<unk>` plus the bits to spell the word out) divided by the bytes.
    Unlike perplexity, this compares models with different tokenizers.
    """
    if not isinstance(lm, NGramLM):
        raise TypeError(f"lm: expected an NGramLM, got {type(lm).__name__}")
    n_bytes = len(text.encode("utf-8")) if isinstance(text, str) else 0
    if n_bytes == 0:
        raise ValueError("text: expected a non-empty str")
    sentences = text_to_sentences(text, level)
    bits = -float(lm.logscores(sentences).sum())
    bits += sum(unknown_word_bits(w, level) for s in sentences for w in s if w not in lm._index)
    return bits / n_bytes
