"""Scoring text with an n-gram model: probabilities, perplexity, sampling.

Every model of this chapter answers one question, P(w | h) for a word w after the
n-1 tokens h before it, and everything else is built from that answer. A sentence
w_1 .. w_m is scored as the product of its words' probabilities and of the end
mark `</s>`, each given the n-1 tokens before it, with n-1 `<s>` on the left:

    log2 P(sentence) = sum_{i=1..m+1} log2 P(w_i | w_{i-n+1} .. w_{i-1}),   w_{m+1} = </s>
    perplexity       = 2 ** ( -(1/N) sum log2 P )       over all N scored tokens

This is the convention of ARPA files and KenLM (one `</s>` per sentence, scored
like a word); `nltk_compat` explains how nltk's convention differs. Here h and w are
strings; inside, every token is an integer id (`<unk>` = 0, `<s>` = 1, `</s>` = 2)
and a batch of queries is an int array [N, m+1] whose last column is the word.

    >>> from tinytransformer.ngram import NGramLM
    >>> lm = NGramLM(2, "mle").fit([["a", "b"], ["a", "c"]])
    >>> lm.score("b", ["a"]), lm.sentence_logscore(["a", "b"])   # log2(1 * 1/2 * 1)
    (0.5, -1.0)

`LanguageModel` holds these rules once; a model class only says how to compute
log10 P for a batch of queries (`_log10prob`).

Does not handle: scoring across sentence boundaries (each sentence starts afresh).
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import integer, random_generator

__all__ = ["LanguageModel", "BOS", "EOS", "UNK"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2  # every vocabulary starts [<unk>, <s>, </s>, ...]
LOG10_2 = math.log10(2.0)


class LanguageModel:
    """Scoring, perplexity and sampling for a model with `order`, `vocab` and `_log10prob`.

    A subclass sets `order` (n), `vocab` (list of str, starting `<unk>`, `<s>`, `</s>`)
    and `_index` (word -> id), and implements `_log10prob(grams)`: log10 P(last | the
    others) for every row of an int array [N, m+1], m <= n-1.
    """

    order: int
    vocab: list[str]
    _index: dict[str, int]

    def _log10prob(self, grams: np.ndarray) -> np.ndarray:
        """Abstract: each model class (MLE/add-k, Kneser-Ney, BackoffLM) defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define _log10prob(grams)")

    # ------------------------------------------------------------------ one word
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
        return float(self._to_log2(self._log10prob(ids))[0])

    def distribution(self, context=()) -> np.ndarray:
        """P(w | context) for every w in `self.vocab`, as a float64 array [|V|]."""
        self._check_fitted("distribution")
        context = self._check_context(context)
        ids = np.array([self._id(w) for w in context], dtype=np.int64)
        V = len(self.vocab)
        grams = np.concatenate([np.broadcast_to(ids, (V, len(ids))), np.arange(V)[:, None]], axis=1)  # [V, m+1]
        return 10.0 ** self._log10prob(grams)

    # ------------------------------------------------------------------ sentences
    def logscores(self, sentences) -> np.ndarray:
        """log2 P of every scored token of `sentences`: each word and one `</s>` per sentence."""
        self._check_fitted("logscores")
        return self._to_log2(self._log10prob(self._scored_ngrams(sentences)))

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

    # ------------------------------------------------------------------ sampling
    def generate(self, n_words, context=(), seed=None) -> list[str]:
        """Sample n_words tokens, each from P(. | the previous order-1 tokens).

        context: the words so far (the last order-1 are used; a shorter context is
        taken as the start of a sentence). After `</s>` a new sentence starts.
        seed: an int (or None for fresh randomness) for numpy's default_rng.
        """
        self._check_fitted("generate")
        n_words = integer(n_words, "n_words", low=0)
        if isinstance(context, str):
            raise TypeError(f"context: expected a sequence of words, got the str {context!r}")
        rng = random_generator(seed)
        width = self.order - 1
        history = [BOS] * width + [str(w) for w in context]
        out: list[str] = []
        for _ in range(int(n_words)):
            ctx = history[len(history) - width:] if width else []
            p = self.distribution(ctx)
            total = p.sum()
            if not total > 0:
                raise ValueError(f"generate: the context {ctx} was never seen in training, so the "
                                 f"distribution after it is all zeros")
            word = self.vocab[int(rng.choice(len(p), p=p / total))]
            out.append(word)
            history = history + [word] if word != EOS else [BOS] * width
        return out

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _to_log2(log10p: np.ndarray) -> np.ndarray:
        """log2 P from log10 P; a log10 P below -3e307 (P = 0 in float64 anyway) becomes -inf."""
        with np.errstate(over="ignore"):
            return log10p / LOG10_2

    def _check_fitted(self, what):
        if not self.vocab:
            raise ValueError(f"{what}: the model is not fitted; call fit(sentences) first")

    def _id(self, word) -> int:
        return self._index.get(word, UNK_ID)

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
        words, lengths = flatten_sentences(sentences, "sentences", reserved=False)
        n = self.order
        index = self._index
        ids = np.fromiter((index.get(w, UNK_ID) for w in words), dtype=np.int64, count=len(words))
        lengths = np.asarray(lengths, dtype=np.int64)
        padded = lengths + n  # n-1 <s> + words + one </s>
        starts = np.cumsum(padded) - padded
        sentence_of = np.repeat(np.arange(len(lengths)), padded)
        slot = np.arange(padded.sum()) - starts[sentence_of]
        seq = np.where(slot < n - 1, BOS_ID, EOS_ID).astype(np.int64)
        is_word = (slot >= n - 1) & (slot < n - 1 + lengths[sentence_of])
        seq[is_word] = ids
        # every slot that is not a left pad is scored, with the n-1 slots before it
        targets = np.flatnonzero(slot >= n - 1)
        return seq[targets[:, None] + np.arange(-(n - 1), 1)]  # [N, n]


def flatten_sentences(sentences, name, reserved):
    """All tokens of all sentences in one list, and each sentence's length (validated).

    reserved=True refuses `<s>` and `</s>` inside a sentence (training text: they are padding).
    """
    if isinstance(sentences, (str, bytes)):
        raise TypeError(f"{name}: expected an iterable of sentences (lists of str tokens), "
                        f"got a {type(sentences).__name__}")
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
