"""Data for training: tokens from the corpus, seeded random batches, and the tokenizer in GGUF form.

A language model trains on windows of its training text. As in nanoGPT, a
batch is B windows of T + 1 consecutive tokens starting at random offsets:
the first T are the input and the last T the next-token targets. The offsets
come from a seeded generator, so a run is reproducible, and two trainers given
the same seed see the same batches.

    >>> tokens = np.arange(100)
    >>> batch = next(random_batches(tokens, batch_size=2, context=4, seed=0))
    >>> batch.shape, bool(np.all(np.diff(batch, axis=1) == 1))     # 2 windows of 5 consecutive tokens
    ((2, 5), True)

`byte_corpus` is chapter 7's split of the built-in corpus as byte tokens, the data of
chapter 11 and of `python -m tinytransformer.bench train`.

The tokenizer is ours (`tokenizers.bpe.BPETokenizer`): with no merges it is
byte-level, one token per UTF-8 byte, so that the loss in nats per token
divided by ln 2 is bits per byte, the measure of chapter 7. A checkpoint
carries its tokenizer as GGUF metadata in the GPT-2 byte-level form that
`ByteLevelBPETokenizer.from_gguf` (and llama.cpp) read: `tokenizer_metadata`.

Does not handle: datasets larger than memory, document boundaries inside a
window, shuffling without replacement (epochs).
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import positive_int, random_generator
from tinytransformer.corpus import split_corpus
from tinytransformer.tokenizers.bpe import BPETokenizer
from tinytransformer.tokenizers.byte_level import bytes_to_unicode
from tinytransformer.tokenizers.unicode_regex import GPT2_PATTERN

__all__ = ["byte_tokenizer", "encode", "byte_corpus", "random_batches", "tokenizer_metadata"]

END_OF_TEXT = "<|endoftext|>"
MASK = "<|mask|>"


def byte_tokenizer(special_tokens=(END_OF_TEXT,)) -> BPETokenizer:
    """A byte-level tokenizer: ids 0..255 are the bytes, then the special tokens (256, 257, ...)."""
    return BPETokenizer([], special_tokens={s: 256 + i for i, s in enumerate(special_tokens)})


def encode(tokenizer, text: str) -> np.ndarray:
    """The token ids of text as an int32 array [N] (the whole corpus fits: 4 bytes a token)."""
    return np.asarray(tokenizer.encode(text), dtype=np.int32)


def byte_corpus(*, max_train_bytes: int | None = None, max_heldout_chars: int | None = None):
    """(tokenizer, train tokens, held-out tokens, held-out bytes): the built-in corpus split as in
    chapter 7 (`corpus.split_corpus`), one token per byte; the held-out tokens start with
    <|endoftext|> so that the first byte is predicted too. The two limits make a quick run:
    the last max_train_bytes of the training text, the first max_heldout_chars of the held-out."""
    train, heldout = split_corpus(max_train_bytes=max_train_bytes)
    if max_heldout_chars is not None:
        heldout = heldout[:max_heldout_chars]
    tokenizer = byte_tokenizer()
    eot = tokenizer.special_tokens[END_OF_TEXT]
    return (tokenizer, encode(tokenizer, train), np.concatenate([[eot], encode(tokenizer, heldout)]),
            len(heldout.encode("utf-8")))


def random_batches(tokens, *, batch_size: int, context: int, seed):
    """Endless batches ids [batch_size, context + 1] of consecutive tokens at seeded random offsets.

    Every offset in [0, N - context - 1] is equally likely (nanoGPT's get_batch).
    The arguments are checked here, at the call, not at the first batch.
    """
    tokens = np.asarray(tokens)
    batch_size, context = positive_int(batch_size, "batch_size"), positive_int(context, "context")
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens: expected a 1-D integer array, got dtype {tokens.dtype} shape {tokens.shape}")
    if tokens.size < context + 1:
        raise ValueError(f"tokens: expected at least context + 1 = {context + 1} tokens, got {tokens.size}")
    return _batches(tokens, batch_size, context, random_generator(seed))


def _batches(tokens, batch_size, context, rng):
    """The endless stream of random_batches, its arguments already checked."""
    window = np.arange(context + 1)  # [T + 1]
    while True:
        starts = rng.integers(0, tokens.size - context, size=batch_size)  # [B]
        yield tokens[starts[:, None] + window[None, :]].astype(np.int64)  # [B, T + 1]


def tokenizer_metadata(tokenizer: BPETokenizer) -> dict:
    """GGUF `tokenizer.ggml.*` metadata for our BPETokenizer, in GPT-2's byte-level form.

    Token i < 256 is byte i written as GPT-2's printable character for it;
    merge t is token 256 + t, the characters of its bytes; special tokens are
    CONTROL tokens (type 3) matched in the text. The pre-tokenizer is GPT-2's
    regex, which a tokenizer trained with `pattern=GPT2_PATTERN` (or one with no
    merges, where it changes nothing) shares.
    """
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"tokenizer: expected a BPETokenizer, got {type(tokenizer).__name__}")
    if tokenizer.merges and tokenizer.pattern != GPT2_PATTERN:
        raise ValueError("tokenizer: a GGUF byte-level tokenizer splits text with GPT-2's regex; expected a "
                         "tokenizer trained with pattern=GPT2_PATTERN (or one with no merges)")
    chars = bytes_to_unicode()
    names = ["".join(chars[b] for b in piece) for piece in tokenizer.vocab]  # [256 + merges]
    if len(set(names)) != len(names):
        raise ValueError("tokenizer: two merges spell the same bytes, which a GGUF vocabulary cannot hold")
    special = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": names + [s for s, _ in special],
        "tokenizer.ggml.token_type": np.array([1] * len(names) + [3] * len(special), dtype=np.int32),
        "tokenizer.ggml.merges": [f"{names[a]} {names[b]}" for a, b in tokenizer.merges],
        "tokenizer.ggml.add_bos_token": False,
    }
