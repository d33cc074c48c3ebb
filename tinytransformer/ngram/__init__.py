"""n-gram language models: counting, smoothing, Kneser-Ney, ARPA files, bits per byte.

Before attention there was counting. An n-gram model predicts a word w from the n-1
tokens h before it, P(w | h), estimated from how often each n-gram occurred in
training text. The maximum-likelihood estimate gives 0 to every n-gram it never saw,
so smoothing moves some probability to the unseen; Kneser-Ney does it best, by
discounting every seen count and interpolating with lower orders:

    P_mle(w | h) = c(h w) / c(h .)
    P_kn(w | h)  = max(a(h w) - D, 0) / a(h .)  +  gamma(h) P_kn(w | h')

    >>> lm = NGramLM(3, "kneser-ney").fit([["the", "cat", "sat"], ["the", "dog", "sat"]])
    >>> lm.score("sat", ["the", "cat"]) > lm.score("sat", ["the", "the"]) > 0
    True

One file per step of the lesson: counting (padding, counts, MLE, add-k), scoring
(sentence scores, perplexity, sampling), kneser_ney, backoff (what Kneser-Ney
produces and ARPA stores), arpa (files), bits (bits per byte), lm (`NGramLM`, one
front door by name), comparison (every estimator and order in bits per byte) and
nltk_compat (nltk's classes and convention, next to ours); docs/07_ngrams.md has the table.

Does not handle: pruning, Katz or Witten-Bell smoothing, gzip-compressed or binary
(KenLM) model files, class-based and cache models.
"""
from tinytransformer.ngram.arpa import read_arpa, write_arpa
from tinytransformer.ngram.backoff import BackoffLM, BackoffTable
from tinytransformer.ngram.bits import bits_per_byte, text_to_sentences, unknown_word_bits
from tinytransformer.ngram.comparison import best_by_level, bits_per_byte_table
from tinytransformer.ngram.counting import AddKLM, NGramCounts, add_k_probability, count_ngrams, pad, vocabulary
from tinytransformer.ngram.kneser_ney import (
    FALLBACK_DISCOUNT, FALLBACK_MODIFIED_DISCOUNTS, KneserNeyReference, chen_goodman_discounts, kneser_ney_model,
    kneser_ney_counts, kneser_ney_discounts,
)
from tinytransformer.ngram.lm import SMOOTHINGS, NGramLM
from tinytransformer.ngram.nltk_compat import (
    MLE, KneserNeyInterpolated, Laplace, Lidstone, Vocabulary, padded_everygram_pipeline,
)
from tinytransformer.ngram.scoring import BOS, EOS, UNK, LanguageModel

__all__ = [
    # our API (ARPA/KenLM convention)
    "NGramLM", "SMOOTHINGS", "BOS", "EOS", "UNK", "LanguageModel",
    "pad", "vocabulary", "count_ngrams", "add_k_probability", "NGramCounts", "AddKLM",
    "KneserNeyReference", "kneser_ney_counts", "kneser_ney_discounts", "kneser_ney_model", "chen_goodman_discounts",
    "FALLBACK_DISCOUNT", "FALLBACK_MODIFIED_DISCOUNTS",
    "BackoffLM", "BackoffTable", "read_arpa", "write_arpa",
    "text_to_sentences", "unknown_word_bits", "bits_per_byte", "bits_per_byte_table", "best_by_level",
    # nltk's API and convention
    "MLE", "Lidstone", "Laplace", "KneserNeyInterpolated", "Vocabulary", "padded_everygram_pipeline",
]
