"""Bits per byte: a score that compares models with different tokenizers.

Perplexity is per token, so it depends on what a token is: a byte-level model
predicts many easy tokens, a word-level model fewer, harder ones, and a transformer
its own subword pieces. The number of bits a model needs to encode a text, divided
by the text's UTF-8 bytes, does not depend on the tokenizer:

    bits per byte = ( -sum_i log2 P(token_i | before it) + bits to spell out the <unk>s ) / bytes

A word the model calls `<unk>` costs P(<unk>) (the mass of all unknown words
together) and then the bits to spell it: each byte and an end mark, 257 equally
likely symbols, log2 257 bits each. Eight bits per byte is no model at all.

    >>> from tinytransformer.ngram import NGramLM
    >>> text = "the cat sat.\\nthe cat ran.\\n"
    >>> lm = NGramLM(3, "kneser-ney").fit(text_to_sentences(text))
    >>> 0 < bits_per_byte(lm, "the cat sat.\\n") < bits_per_byte(lm, "a dog ran.\\n") < 8
    True

`text_to_sentences` splits text into tokens that spell it back exactly (each line a
sentence, its `</s>` standing for the newline), at the word or the byte level.

Does not handle: scoring across lines (each line starts afresh after `<s>`).
"""
from __future__ import annotations

import math
import re

from tinytransformer.ngram.scoring import LanguageModel

__all__ = ["text_to_sentences", "unknown_word_bits", "bits_per_byte"]

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


def bits_per_byte(lm: LanguageModel, text: str, level: str = "word") -> float:
    """Bits the model needs per UTF-8 byte of `text` (lower is better).

    Total -log2 P over the tokens of `text_to_sentences(text, level)` (each `</s>`
    included, each `<unk>` plus the bits to spell the word out) divided by the bytes.
    Unlike perplexity, this compares models with different tokenizers.
    """
    if not isinstance(lm, LanguageModel):
        raise TypeError(f"lm: expected an n-gram model (NGramLM, BackoffLM, ...), got {type(lm).__name__}")
    n_bytes = len(text.encode("utf-8")) if isinstance(text, str) else 0
    if n_bytes == 0:
        raise ValueError("text: expected a non-empty str")
    sentences = text_to_sentences(text, level)
    bits = -float(lm.logscores(sentences).sum())
    bits += sum(unknown_word_bits(w, level) for s in sentences for w in s if w not in lm._index)
    return bits / n_bytes
