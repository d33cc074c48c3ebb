"""Measuring a language model: log-probabilities, loss, perplexity, bits per byte, distance to a reference.

A causal model reads tokens x_1 .. x_N and at every position t gives logits z_t [V]
for the next token; the log softmax turns them into log-probabilities. Every measure
here is built from the log-probability of the token that came next:

    log p(v | x_<=t) = z_t[v] - log sum_u exp z_t[u]                 (log_softmax, float64)
    loss             = -sum_t log p(x_{t+1} | x_<=t)                  nats, over N - 1 targets
    perplexity       = exp(loss / (N - 1))                            per token: depends on the tokenizer
    bits per byte    = loss / ln 2 / bytes of the text                does not: it compares tokenizers
    KL(p || q)       = sum_v p(v) (log p(v) - log q(v))               q against a reference p, per position
    same top         = fraction of positions where argmax q = argmax p

    >>> import numpy as np
    >>> uniform = np.zeros((3, 4))                                      # [T, V]: every token alike
    >>> np.exp(log_softmax(uniform))[0].round(2).tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> round(perplexity(3 * np.log(4), 3), 9)                          # 3 tokens at ln 4 nats each
    4.0
    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> model = TinyTransformer(TransformerConfig(vocab_size=40, d_model=64, n_layers=1, n_heads=2, d_ff=64))
    >>> windows = np.arange(24).reshape(2, 12) % 40                     # [B, T] token windows
    >>> same = compare(model, windows, reference_log_probs(model, windows))
    >>> abs(same.kl) < 1e-6, same.same_top                              # the reference is stored in float32
    (True, 1.0)

A model here is anything with `forward(ids)` -> logits (`TinyTransformer`, a loaded
GGUF model, a test's stand-in); `text_bits_per_byte` also takes the tokenizer and uses
the KV cache (`new_cache`, `hidden_states`, `logits`) when the model has one. The n-gram
models of chapter 7 have their own bits per byte (`ngram.bits_per_byte`: log2 scores,
and the bits to spell out an unknown word).

Does not handle: sequences longer than the model's context in one window (heldout_loss
slides windows; text_bits_per_byte needs a cache for full context), batches of ragged
sequences, sampling-based measures (MAUVE and the like).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import positive_int
from tinytransformer.training.objectives import IGNORE

__all__ = ["log_softmax", "target_loss", "heldout_loss", "perplexity", "heldout_bits_per_byte", "document_start",
           "text_bits_per_byte", "reference_log_probs", "Comparison", "compare"]


def log_softmax(logits) -> np.ndarray:
    """log softmax over the last axis, in float64, without overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# --- the loss of a model on tokens ---------------------------------------------------------


def target_loss(model, ids, targets, *, batch_size: int = 16) -> tuple[float, int]:
    """(sum of -log p[target], count) over rows of ids [W, T] and targets [W, T], batch_size rows at a time.

    A target equal to IGNORE (-100) is skipped (the position predicts nothing).
    """
    total, count = 0.0, 0
    for r in range(0, ids.shape[0], batch_size):
        logp = log_softmax(model.forward(ids[r:r + batch_size]))  # [b, T, V]
        t = targets[r:r + batch_size]
        keep = t != IGNORE
        total -= float(np.take_along_axis(logp, np.where(keep, t, 0)[..., None], -1)[..., 0][keep].sum())
        count += int(keep.sum())
    return total, count


def heldout_loss(model, tokens, *, context: int, batch_size: int = 16) -> tuple[float, int]:
    """(total nats, tokens predicted) of a causal model on tokens[1:], each given its past.

    Windows of `context` tokens advance by context // 2: every token after the
    first window is predicted with at least half a context of history, and each
    is scored exactly once. Bits per byte = total / ln 2 / bytes of text.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if positive_int(context, "context") < 2:
        raise ValueError(f"context: expected at least 2 tokens (one to see, one to predict), got {context}")
    if tokens.ndim != 1 or tokens.size < 2:
        raise ValueError(f"tokens: expected a 1-D array of at least 2 tokens, got shape {tokens.shape}")
    stride = max(1, context // 2)
    starts = list(range(0, max(tokens.size - context, 0) + 1, stride))
    if starts[-1] + context < tokens.size:
        starts.append(tokens.size - context)
    length = min(context, tokens.size)
    ids = np.stack([tokens[s:s + length] for s in starts])  # [W, T]
    targets = np.full(ids.shape, IGNORE, dtype=np.int64)
    scored_up_to = 0  # tokens[1 : scored_up_to + 1] are already scored
    for w, s in enumerate(starts):
        first = max(scored_up_to, s)  # predict tokens[first + 1 .. s + length - 1]
        targets[w, first - s:length - 1] = tokens[first + 1:s + length]
        scored_up_to = s + length - 1
    return target_loss(model, ids, targets, batch_size=batch_size)


def perplexity(total_nats: float, count: int) -> float:
    """exp(total_nats / count): the number of equally likely tokens that would cost as much."""
    return float(np.exp(total_nats / count))


# --- bits per byte ---------------------------------------------------------------------------


def heldout_bits_per_byte(model, heldout_tokens, n_bytes: int, context: int) -> float:
    """Bits per byte of byte-level tokens: total -log2 p of the held-out bytes (each given up to
    `context` tokens of past, heldout_loss's windows) / bytes. heldout_tokens is one token per
    byte after a first document-start token, so that every byte is predicted once."""
    total, count = heldout_loss(model, heldout_tokens, context=context)
    if count != n_bytes:  # one token per byte, every byte predicted once
        raise ValueError(f"heldout_tokens: expected one token per byte after the first, {n_bytes} in all; "
                         f"{count} were scored")
    return total / math.log(2) / n_bytes


def document_start(model, tokenizer):
    """The id that precedes a document: <|endoftext|> if the tokenizer has it, else BOS, else None."""
    added = getattr(tokenizer, "added_tokens", None) or {}
    if "<|endoftext|>" in added:
        return int(added["<|endoftext|>"])
    bos = getattr(getattr(model, "config", None), "bos_id", None)
    return None if bos is None else int(bos)


def text_bits_per_byte(model, tokenizer, text: str, *, chunk: int = 256) -> dict:
    """Bits per UTF-8 byte of `text` under a model (`.forward`) and its tokenizer (`.encode`).

    The text is tokenized once; each token is scored given every token before it (a KV cache
    carries the context across chunks of `chunk` tokens when the model has one, else each
    window of `chunk` tokens restarts). The first token is conditioned on the document-start
    token, or costs log2(vocab) bits when there is none.
    Returns {"bpb", "tokens", "bytes", "seconds"}.
    """
    start = time.perf_counter()
    ids = [int(i) for i in tokenizer.encode(text)]
    first = document_start(model, tokenizer)
    sequence = ([first] if first is not None else []) + ids
    bits = 0.0
    use_cache = all(hasattr(model, name) for name in ("new_cache", "hidden_states", "logits"))
    cache = model.new_cache(max_seq_len=len(sequence)) if use_cache else None
    for begin in range(0, len(sequence) - 1, chunk):
        window = np.array(sequence[begin:begin + chunk + 1])  # predicts window[1:] from window[:-1]
        inputs = window[:-1]
        if use_cache:
            logits = model.logits(model.hidden_states(inputs, cache))
        else:
            logits = model.forward(inputs)  # [T, vocab]
        target = window[1:]
        bits -= float(log_softmax(logits)[np.arange(len(target)), target].sum()) / math.log(2)
    if first is None:
        bits += math.log2(model.config.vocab_size)  # the first token, uniformly
    n_bytes = len(text.encode("utf-8"))
    return {"bpb": bits / n_bytes, "tokens": len(ids), "bytes": n_bytes,
            "seconds": time.perf_counter() - start}


# --- a model against a reference (a quantised model against the one it came from) ----------


def reference_log_probs(model, windows) -> np.ndarray:
    """The reference model's log-probabilities for every window and position: [B, T, V] float32."""
    return np.stack([log_softmax(model.forward(ids)).astype(np.float32) for ids in np.asarray(windows)])


@dataclass(frozen=True)
class Comparison:
    perplexity: float
    kl: float  # mean KL(reference || model), nats per token
    same_top: float  # fraction of positions whose most likely next token agrees with the reference's
    n_tokens: int


def compare(model, windows, reference: np.ndarray) -> Comparison:
    """Perplexity on the windows' next tokens, and agreement with the reference log-probabilities."""
    windows = np.asarray(windows)
    nll, kl, same, n = 0.0, 0.0, 0, 0
    for ids, ref in zip(windows, reference):
        logq = log_softmax(model.forward(ids))[:-1]  # [T-1, V]: position t predicts token t+1
        logp = ref[:-1].astype(np.float64)
        nll -= logq[np.arange(len(ids) - 1), ids[1:]].sum()
        kl += np.sum(np.exp(logp) * (logp - logq))
        same += int(np.sum(logq.argmax(-1) == logp.argmax(-1)))
        n += len(ids) - 1
    return Comparison(perplexity(nll, n), float(kl / n), same / n, n)
