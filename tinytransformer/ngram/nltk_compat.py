"""nltk's n-gram API and conventions, next to ours: the same sentence scored both ways.

nltk (`nltk.lm`) trains on `padded_everygram_pipeline(n, text)`, each sentence padded
with n-1 `<s>` and n-1 `</s>` (nothing for n = 1), and scores the n-grams it is given,
usually those of the sentence padded the same way. Ours (`NGramLM`, `BackoffLM`)
follows ARPA files and KenLM: each word and exactly one `</s>`, after n-1 `<s>`. For
n >= 2 the counts agree, so every probability does; only the scored n-grams differ:

    nltk scores n-1 `</s>` per sentence (none for n = 1), ours scores one

    >>> from tinytransformer.ngram import NGramLM
    >>> corpus = [["I", "am", "Sam"], ["Sam", "I", "am"], ["I", "like", "ham"]]
    >>> ours = NGramLM(3, "mle").fit(corpus)                        # I, am, Sam, </s>
    >>> theirs = MLE(3)
    >>> theirs.fit(*padded_everygram_pipeline(3, corpus))
    >>> grams = list(ngrams(pad_both_ends(["I", "am", "Sam"], n=3), 3))  # ... and (Sam, </s>, </s>)
    >>> round(ours.perplexity([["I", "am", "Sam"]]), 3), round(theirs.perplexity(grams), 3)
    (1.565, 1.431)

These classes follow nltk's signatures (`MLE(order)`, `Lidstone(gamma, order)`,
`fit(text, vocabulary_text)`, `perplexity(text_ngrams)`, `generate(num_words,
text_seed, random_seed)`); the tests hold them equal to nltk for every order.
docs/07_ngrams.md works the same sentence through token by token, unigrams included.

Does not handle: nltk's other models (WittenBell, AbsoluteDiscounting, StupidBackoff),
its `counter=` argument, pickling.
"""
from __future__ import annotations

import math
import random
from bisect import bisect
from collections import Counter, defaultdict
from itertools import accumulate, chain

from tinytransformer._validate import integer, is_real

__all__ = [
    "MLE", "Lidstone", "Laplace", "KneserNeyInterpolated", "Vocabulary",
    "padded_everygram_pipeline", "pad_both_ends", "ngrams", "everygrams",
]

UNK_LABEL = "<UNK>"


# ---------------------------------------------------------------------- preprocessing
def pad_both_ends(sentence, n: int) -> list[str]:
    """n-1 `<s>` + the sentence + n-1 `</s>` (nltk.lm.preprocessing.pad_both_ends)."""
    return ["<s>"] * (n - 1) + list(sentence) + ["</s>"] * (n - 1)


def ngrams(sequence, n: int) -> list[tuple]:
    """Every run of n consecutive tokens, as tuples (nltk.util.ngrams)."""
    sequence = list(sequence)
    return [tuple(sequence[i:i + n]) for i in range(len(sequence) - n + 1)]


def everygrams(sequence, max_len: int) -> list[tuple]:
    """Every run of 1..max_len consecutive tokens (nltk.util.everygrams)."""
    sequence = list(sequence)
    return [tuple(sequence[i:i + k]) for i in range(len(sequence)) for k in range(1, max_len + 1)
            if i + k <= len(sequence)]


def padded_everygram_pipeline(order: int, text):
    """(everygrams of each padded sentence, the padded words in one stream), as nltk's is."""
    text = [list(sentence) for sentence in text]
    return ((everygrams(pad_both_ends(s, order), order) for s in text),
            chain.from_iterable(pad_both_ends(s, order) for s in text))


class Vocabulary:
    """Words seen at least `unk_cutoff` times, and `<UNK>` for the rest (nltk.lm.Vocabulary)."""

    def __init__(self, counts=None, unk_cutoff: int = 1, unk_label: str = UNK_LABEL):
        unk_cutoff = integer(unk_cutoff, "unk_cutoff", low=1)
        self.unk_label, self.cutoff = unk_label, unk_cutoff
        self.counts: Counter = Counter()
        self.update(counts if counts is not None else [])

    def update(self, words) -> None:
        self.counts.update(words)
        # nltk counts <UNK> once more if the text itself contains it; so do we, to match |V|
        self._len = sum(1 for w in self.counts if w in self) + (1 if self.counts else 0)

    def __contains__(self, word) -> bool:
        return (self.cutoff if word == self.unk_label else self.counts[word]) >= self.cutoff

    def __iter__(self):
        return chain((w for w in self.counts if w in self), [self.unk_label] if self.counts else [])

    def __len__(self) -> int:
        return self._len

    def lookup(self, words):
        """A word, or `<UNK>` where it is out of the vocabulary; a tuple for a sequence of words."""
        if isinstance(words, str):
            return words if words in self else self.unk_label
        return tuple(self.lookup(w) for w in words)


# ---------------------------------------------------------------------- the models
class _NltkStyleModel:
    """What nltk.lm.api.LanguageModel does: fit on n-gram sentences, score, perplexity, generate."""

    def __init__(self, order, vocabulary=None):
        order = integer(order, "order", low=1)
        self.order = order
        self.vocab = Vocabulary() if vocabulary is None else vocabulary
        self._counts: dict[int, dict[tuple, Counter]] = defaultdict(lambda: defaultdict(Counter))

    def fit(self, text, vocabulary_text=None) -> None:
        """Count the n-grams of `text`: sentences, each a sequence of n-gram tuples (masked by the vocabulary)."""
        if not len(self.vocab):
            if vocabulary_text is None:
                raise ValueError("vocabulary_text: expected the words to build the vocabulary from, got None "
                                 "(the model has no vocabulary yet)")
            self.vocab.update(vocabulary_text)
        for i, sentence in enumerate(text):
            if isinstance(sentence, (str, bytes)):
                raise TypeError(f"text[{i}]: expected a sequence of n-gram tuples, got a {type(sentence).__name__}")
            for gram in sentence:
                if not isinstance(gram, tuple) or not gram or not all(isinstance(w, str) for w in gram):
                    raise TypeError(f"text[{i}]: expected n-grams as non-empty tuples of str, got {gram!r:.60}")
                gram = self.vocab.lookup(gram)
                self._counts[len(gram)][gram[:-1]][gram[-1]] += 1
        self._after_fit()

    def _after_fit(self) -> None:
        pass

    def context_counts(self, context) -> Counter:
        """Counter of the words seen after `context` (a tuple of looked-up words; () for unigrams)."""
        context = tuple(context) if context else ()
        return self._counts.get(len(context) + 1, {}).get(context, Counter())

    def unmasked_score(self, word, context=None) -> float:
        """Abstract, as in nltk: MLE, Lidstone, Laplace and KneserNeyInterpolated each define it."""
        raise NotImplementedError(f"{type(self).__name__} must define unmasked_score(word, context)")

    def score(self, word, context=None) -> float:
        """P(word | context), with out-of-vocabulary words read as `<UNK>`."""
        if isinstance(context, str):
            raise TypeError(f"context: expected a sequence of words, got the str {context!r}")
        return self.unmasked_score(self.vocab.lookup(word), self.vocab.lookup(context) if context else None)

    def logscore(self, word, context=None) -> float:
        """log2 P(word | context), -inf for 0 (computed as nltk does: math.log(p, 2))."""
        p = self.score(word, context)
        return -math.inf if p == 0.0 else math.log(p, 2)

    def entropy(self, text_ngrams) -> float:
        """-mean log2 P(last | the others) over `text_ngrams` (tuples)."""
        scores = [self.logscore(g[-1], g[:-1]) for g in text_ngrams]
        if not scores:
            raise ValueError("text_ngrams: expected at least one n-gram to score, got none")
        return -1 * (math.fsum(scores) / len(scores))

    def perplexity(self, text_ngrams) -> float:
        """2 ** entropy(text_ngrams)."""
        return pow(2.0, self.entropy(text_ngrams))

    def generate(self, num_words=1, text_seed=None, random_seed=None):
        """Sample words (one str for num_words=1, else a list), as nltk does, seed for seed.

        Each word is drawn among those seen after the longest context that has any,
        weighted by `score`; random_seed is an int or a `random.Random`.
        """
        num_words = integer(num_words, "num_words", low=0)
        text_seed = [] if text_seed is None else list(text_seed)
        rng = random_seed if isinstance(random_seed, random.Random) else random.Random(random_seed)
        if num_words == 1:
            context = text_seed[-self.order + 1:] if len(text_seed) >= self.order else text_seed
            samples = self.context_counts(self.vocab.lookup(context))
            while context and not samples:
                context = context[1:] if len(context) > 1 else []
                samples = self.context_counts(self.vocab.lookup(context))
            population = sorted(samples)
            if not population:
                raise ValueError("generate: the model has seen no words (fit it first)")
            weights = [self.score(w, context) for w in population]
            threshold = math.fsum(weights) * rng.random()
            return population[bisect(list(accumulate(weights)), threshold)]
        generated: list[str] = []
        for _ in range(num_words):
            generated.append(self.generate(1, text_seed + generated, rng))
        return generated


class MLE(_NltkStyleModel):
    """P(w | h) = c(h w) / c(h .), 0 after a context never seen (nltk.lm.MLE)."""

    def unmasked_score(self, word, context=None) -> float:
        counts = self.context_counts(context)
        total = sum(counts.values())
        return counts[word] / total if total else 0


class Lidstone(_NltkStyleModel):
    """P(w | h) = (c(h w) + gamma) / (c(h .) + gamma |V|) (nltk.lm.Lidstone)."""

    def __init__(self, gamma, order, vocabulary=None):
        if not is_real(gamma) or not gamma > 0 or not math.isfinite(gamma):
            raise ValueError(f"gamma: expected a finite number > 0, got {gamma!r}")
        super().__init__(order, vocabulary)
        self.gamma = gamma

    def unmasked_score(self, word, context=None) -> float:
        counts = self.context_counts(context)
        return (counts[word] + self.gamma) / (sum(counts.values()) + len(self.vocab) * self.gamma)


class Laplace(Lidstone):
    """Lidstone with gamma = 1 (nltk.lm.Laplace)."""

    def __init__(self, order, vocabulary=None):
        super().__init__(1, order, vocabulary)


class KneserNeyInterpolated(_NltkStyleModel):
    """nltk's interpolated Kneser-Ney: one fixed discount, continuation counts below the top order.

    It differs from ours (`kneser_ney.kneser_ney_model`): one discount d for every order instead of
    discounts estimated per order, and no uniform floor under the unigrams, so a word
    never seen after another word gets P = 0; an order-1 model divides 0 by 0
    (ZeroDivisionError, as in nltk). The continuation counts are counted once at `fit`
    (nltk scans every n-gram for each query).

        P(w | h) = max(a(h w) - d, 0) / a(h .) + d N1+(h .) / a(h .) P(w | h')
        P(w)     = N1+(. w) / N1+(. .)

    a = raw counts at the top order, continuation counts N1+(. h w) below it; a
    context with no counts passes everything down (alpha = 0, gamma = 1).
    """

    def __init__(self, order, discount=0.1, vocabulary=None):
        if not is_real(discount) or not 0 <= discount <= 1:
            raise ValueError(f"discount: expected a number in [0, 1], got {discount!r}")
        super().__init__(order, vocabulary)
        self.discount = discount

    def _after_fit(self) -> None:
        # continuation counts: for every context c and word w, how many x have x c w seen
        self._continuations: dict[tuple, Counter] = defaultdict(Counter)  # c -> {w: N1+(. c w)}
        self._continuation_total: Counter = Counter()  # c -> N1+(. c .)
        for k, by_context in self._counts.items():
            if k < 2:
                continue
            for context, followers in by_context.items():
                for w, c in followers.items():
                    if c > 0:
                        self._continuations[context[1:]][w] += 1
                        self._continuation_total[context[1:]] += 1

    def _continuation(self, word, context):
        total = self._continuation_total[context]
        if total == 0:
            raise ZeroDivisionError(
                f"KneserNeyInterpolated: no {len(context) + 2}-gram ends in the context {context!r}, so the "
                f"continuation probability N1+(. h w) / N1+(. h .) is 0/0 (nltk raises ZeroDivisionError too; "
                "an order-1 model always does)")
        return self._continuations[context][word], total

    def unmasked_score(self, word, context=None) -> float:
        if context:
            context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        if not context:
            count, total = self._continuation(word, ())
            return count / total
        prefix_counts = self.context_counts(context)
        if not prefix_counts:  # no data for this context: alpha = 0, gamma = 1
            return self.unmasked_score(word, context[1:])
        if len(context) + 1 == self.order:
            count, total = prefix_counts[word], sum(prefix_counts.values())
        else:
            count, total = self._continuation(word, context)
        alpha = max(count - self.discount, 0.0) / total
        gamma = self.discount * sum(1 for c in prefix_counts.values() if c > 0) / total
        return alpha + gamma * self.unmasked_score(word, context[1:])
