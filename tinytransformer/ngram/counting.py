"""Counting n-grams, and the two estimators that read the counts directly: MLE and add-k.

Count how often each n-gram occurred in training text, each sentence padded with n-1
`<s>` on the left and n-1 `</s>` on the right (one `</s>` for n = 1), every k-gram
(k = 1..n) counted. MLE divides; add-k first adds a pseudo-count k to every count:

    P_mle(w | h) = c(h w) / c(h .)          P_add-k(w | h) = (c(h w) + k) / (c(h .) + k |V|)

c(h .) = sum over w of c(h w); |V| is the vocabulary: `<unk>`, `<s>`, `</s>` and the
words seen at least `min_count` times (rarer ones are counted as `<unk>`).

    >>> corpus = [["I", "am", "Sam"], ["Sam", "I", "am"]]
    >>> counts, vocab = count_ngrams(corpus, order=2), vocabulary(corpus)
    >>> counts[("I", "am")], counts[("<s>", "Sam")], counts[("am",)], len(vocab)
    (2, 1, 2, 6)
    >>> add_k_probability(counts, vocab, "am", ["I"], k=0)      # MLE: c(I am) / c(I .) = 2 / 2
    1.0
    >>> add_k_probability(counts, vocab, "Sam", ["I"], k=1)     # Laplace: (0 + 1) / (2 + 6)
    0.125

The reference first (`count_ngrams`, a Counter of tuples; `add_k_probability`), then
the fast path, tested equal: `NGramCounts` (sorted integer arrays) and `AddKLM`.

Does not handle: interpolating lower orders for MLE or add-k (nltk does not either),
count pruning, counts that do not fit in memory.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tinytransformer.ngram.scoring import (
    BOS, BOS_ID, EOS, EOS_ID, UNK, UNK_ID, LanguageModel, flatten_sentences,
)

__all__ = ["pad", "vocabulary", "count_ngrams", "add_k_probability", "NGramCounts", "AddKLM", "lookup"]


# ---------------------------------------------------------------------- the reference
def pad(sentence, order: int) -> list[str]:
    """A training sentence as it is counted: n-1 `<s>`, the words, max(n-1, 1) `</s>`.

    As nltk's `padded_everygram_pipeline` pads for n >= 2; for n = 1 nltk pads nothing,
    and we add one `</s>` so that a unigram model can end a sentence.
    """
    return [BOS] * (order - 1) + list(sentence) + [EOS] * max(order - 1, 1)


def vocabulary(sentences, min_count: int = 1) -> list[str]:
    """`<unk>`, `<s>`, `</s>`, then the words seen >= min_count times, sorted."""
    seen = Counter(w for sentence in sentences for w in sentence)
    return [UNK, BOS, EOS] + sorted(w for w, c in seen.items() if c >= min_count and w != UNK)


def count_ngrams(sentences, order: int, min_count: int = 1) -> Counter:
    """Counter {n-gram tuple: count} of every k-gram (k = 1..order) of the padded sentences.

    The reference for `NGramCounts`: plain Python, one tuple per n-gram.
    """
    sentences = [list(s) for s in sentences]
    known = set(vocabulary(sentences, min_count))
    counts: Counter = Counter()
    for sentence in sentences:
        tokens = pad([w if w in known else UNK for w in sentence], order)
        for k in range(1, order + 1):
            counts.update(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))
    return counts


def add_k_probability(counts: Counter, vocab, word: str, context=(), k: float = 1.0) -> float:
    """P(word | context) = (c(h w) + k) / (c(h .) + k |V|), read from a Counter of `count_ngrams`.

    vocab: the list `vocabulary` gives (words outside it are `<unk>`). k = 0 is MLE, which
    gives 0 after a context never seen. The reference for `AddKLM`.
    """
    known = set(vocab)
    h = tuple(w if w in known else UNK for w in context)
    w = word if word in known else UNK
    c_h = sum(c for g, c in counts.items() if len(g) == len(h) + 1 and g[:-1] == h)  # c(h .)
    if c_h + k * len(known) == 0:
        return 0.0
    return (counts[h + (w,)] + k) / (c_h + k * len(known))


# ---------------------------------------------------------------------- the fast path
@dataclass
class CountTable:
    """The distinct k-grams of one order, sorted by key = prefix index * |V| + last word id."""

    keys: np.ndarray  # int64 [M]
    count: np.ndarray  # int64 [M] c(g), the raw count of each k-gram g
    context_total: np.ndarray  # int64 [M] c(g .): sum of the counts of the (k+1)-grams g w


def lookup(keys_by_order, grams: np.ndarray, vocab_size: int) -> np.ndarray:
    """Index of each row of grams [N, k] in the order-k table, or -1 where it is absent.

    keys_by_order[j] holds the sorted keys of the (j+1)-grams; a (j+1)-gram's key is the
    index of its j-gram prefix * |V| + its last word id, so the lookup walks the orders.
    """
    index = grams[:, 0].copy()  # [N] a 1-gram's index is its word id
    for j in range(1, grams.shape[1]):
        keys = keys_by_order[j]
        if keys.size == 0:
            return np.full_like(index, -1)
        key = index * vocab_size + grams[:, j]
        pos = np.minimum(np.searchsorted(keys, key), keys.size - 1)
        index = np.where((index >= 0) & (keys[pos] == key), pos, -1)
    return index


class NGramCounts:
    """The counts of `count_ngrams`, in sorted arrays: one `CountTable` per order.

    The key of a k-gram is the index of its (k-1)-gram prefix * |V| + the id of its
    last word, so the keys of one order sort into one int64 array and an n-gram is
    found with `np.searchsorted`, one order at a time (`lookup`). Built by `NGramCounts.from_sentences(sentences, order, min_count)`. Besides the
    tables it keeps, for every k-gram, the index of its (k-1)-gram prefix (`prefixes[k]`)
    and of its (k-1)-gram suffix (`suffixes[k]`), which Kneser-Ney needs.
    """

    def __init__(self, order, vocab, tables, prefixes, suffixes):
        self.order = order
        self.vocab: list[str] = vocab
        self.index: dict[str, int] = {w: i for i, w in enumerate(vocab)}
        self.tables: list[CountTable] = tables
        self.prefixes: list[np.ndarray | None] = prefixes  # indexed by order; None for 0 and 1
        self.suffixes: list[np.ndarray | None] = suffixes
        self.total = int(tables[0].count.sum())  # c(.), the number of counted tokens

    def __repr__(self) -> str:
        sizes = ", ".join(f"{t.keys.size} {k}-grams" for k, t in enumerate(self.tables, 1))
        return f"NGramCounts(order={self.order}, |V|={len(self.vocab)}: {sizes})"

    @classmethod
    def from_sentences(cls, sentences, order: int, min_count: int = 1) -> "NGramCounts":
        """Count every k-gram (k = 1..order) of the padded sentences, vectorized."""
        words, lengths = flatten_sentences(sentences, "sentences", reserved=True)
        if not lengths:
            raise ValueError("sentences: expected at least one sentence to train on, got none")
        n = order

        # Vocabulary: specials first, then words seen >= min_count times, sorted.
        first_seen: dict[str, int] = {}
        raw = np.fromiter((first_seen.setdefault(w, len(first_seen)) for w in words),
                          dtype=np.int64, count=len(words))
        freq = np.bincount(raw, minlength=len(first_seen))
        kept = sorted(w for w, f in zip(first_seen, freq) if f >= min_count and w != UNK)
        vocab = [UNK, BOS, EOS] + kept
        index = {w: i for i, w in enumerate(vocab)}
        to_id = np.array([index.get(w, UNK_ID) for w in first_seen], dtype=np.int64)
        word_ids = to_id[raw] if words else np.zeros(0, np.int64)  # rare words -> <unk>
        V = len(vocab)

        # Padded sequence: n-1 <s>, the words, max(n-1, 1) </s> per sentence.
        left, right = n - 1, max(n - 1, 1)
        lengths = np.asarray(lengths, dtype=np.int64)
        padded = lengths + left + right
        starts = np.cumsum(padded) - padded
        sentence_of = np.repeat(np.arange(len(lengths)), padded)  # [L] which sentence each slot is in
        slot = np.arange(padded.sum()) - starts[sentence_of]  # position inside its padded sentence
        word_start = np.cumsum(lengths) - lengths
        is_word = (slot >= left) & (slot < left + lengths[sentence_of])
        seq = np.where(slot < left, BOS_ID, EOS_ID).astype(np.int64)
        seq[is_word] = word_ids[(word_start[sentence_of] + slot - left)[is_word]]
        L = len(seq)

        # Order 1: the table is the whole vocabulary (index = word id).
        unigram_counts = np.bincount(seq, minlength=V).astype(np.int64)
        keys_1 = np.arange(V, dtype=np.int64)
        tables = [(keys_1, unigram_counts)]
        prefixes, suffixes = [None, None], [None, None]  # indexed by order
        gram_at = seq.copy()  # [L] index of the k-gram that starts at each slot (-1: none)
        for k in range(2, n + 1):
            if tables[-1][0].size * V >= 2**62:
                raise ValueError(f"sentences: too many distinct {k - 1}-grams for a {V}-word vocabulary")
            start = np.arange(L - k + 1)
            valid = sentence_of[start] == sentence_of[start + k - 1]  # k-gram inside one sentence
            start = start[valid]
            key = gram_at[start] * V + seq[start + k - 1]  # (k-1)-gram prefix index, last word
            keys, first, inverse_k, count_k = np.unique(key, return_index=True, return_inverse=True,
                                                        return_counts=True)
            suffixes.append(gram_at[start[first] + 1])  # index of the last k-1 words, order k-1
            prefixes.append(keys // V)
            tables.append((keys, count_k.astype(np.int64)))
            next_at = np.full(L, -1, dtype=np.int64)
            next_at[start] = inverse_k.reshape(-1)
            gram_at = next_at
        # c(h .) for every h of order k-1 = sum of the counts of the k-grams that extend it.
        context_totals = [np.bincount(prefixes[k], weights=tables[k - 1][1], minlength=tables[k - 2][0].size)
                          .astype(np.int64) for k in range(2, n + 1)]
        context_totals.append(np.zeros(tables[n - 1][0].size, dtype=np.int64))
        tables = [CountTable(keys, count, total) for (keys, count), total in zip(tables, context_totals)]
        return cls(n, vocab, tables, prefixes, suffixes)

    # ------------------------------------------------------------------ reading the counts
    def lookup(self, grams: np.ndarray) -> np.ndarray:
        """Index of each row of grams [N, k] (word ids) in the order-k table, or -1 where absent."""
        return lookup([t.keys for t in self.tables], grams, len(self.vocab))

    def ids(self, words) -> list[int]:
        return [self.index.get(w, UNK_ID) for w in words]

    def ngrams(self, k: int) -> np.ndarray:
        """The word ids of every stored k-gram, in table order: int64 [M_k, k]."""
        V = len(self.vocab)
        words = np.arange(V, dtype=np.int64)[:, None]  # [M_1, 1]
        for j in range(2, k + 1):
            keys = self.tables[j - 1].keys
            words = np.concatenate([words[keys // V], (keys % V)[:, None]], axis=1)  # [M_j, j]
        return words

    def as_counter(self) -> Counter:
        """The same counts as a Counter of tuples (what `count_ngrams` returns)."""
        out: Counter = Counter()
        vocab = np.array(self.vocab, dtype=object)
        for k, table in enumerate(self.tables, 1):
            seen = table.count > 0
            for gram, c in zip(vocab[self.ngrams(k)[seen]], table.count[seen]):
                out[tuple(gram)] = int(c)
        return out


class AddKLM(LanguageModel):
    """MLE (k = 0) or add-k from `NGramCounts`: P(w | h) = (c(h w) + k) / (c(h .) + k |V|).

    A query shorter than the order uses the lower-order counts (a unigram query reads
    c(w) / c(.)); MLE after a context never seen gives 0, as nltk does.
    """

    def __init__(self, counts: NGramCounts, k: float = 0.0):
        self.counts = counts
        self.order, self.vocab, self._index = counts.order, counts.vocab, counts.index
        self.k = float(k)

    def __repr__(self) -> str:
        return f"AddKLM(order={self.order}, k={self.k}, |V|={len(self.vocab)})"

    def _log10prob(self, grams) -> np.ndarray:
        m = grams.shape[1] - 1
        tables = self.counts.tables
        gram = self.counts.lookup(grams)
        c_hw = np.where(gram >= 0, tables[m].count[np.maximum(gram, 0)], 0).astype(np.float64)  # c(h w)
        if m == 0:
            c_h = np.full(len(grams), float(self.counts.total))  # c(.)
        else:
            ctx = self.counts.lookup(grams[:, :m])
            c_h = np.where(ctx >= 0, tables[m - 1].context_total[np.maximum(ctx, 0)], 0).astype(np.float64)
        if self.k == 0:
            p = np.divide(c_hw, c_h, out=np.zeros_like(c_hw), where=c_h > 0)  # unseen context: 0, as nltk
        else:
            p = (c_hw + self.k) / (c_h + self.k * len(self.vocab))
        with np.errstate(divide="ignore"):
            return np.log10(p)
