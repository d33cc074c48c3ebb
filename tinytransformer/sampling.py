"""Decoding: turning the next-token logits into a token, and the generate loop.

Given logits z over the vocabulary for the next position:

    greedy       argmax_i z_i (ties go to the lowest id)
    temperature  p = softmax(z / tau): tau < 1 sharpens, tau > 1 flattens, tau -> 0 is greedy
    top-k        keep the k largest logits, renormalise (Fan et al., 2018)
    top-p        keep the smallest set of most likely tokens whose mass reaches p
                 (nucleus sampling, Holtzman et al., 2020)

Filters apply in the order temperature, top-k, top-p (as Hugging Face does),
then one draw from the seeded generator. `generate` runs a model step by step
with its KV cache: the prompt is processed once (prefill), then each step feeds
only the newest token (decode).

    >>> import numpy as np
    >>> sample_next(np.array([0.1, 2.0, 0.3]))            # temperature 0: greedy
    1
    >>> filter_top_k(np.array([1.0, 3.0, 2.0]), 2).tolist()
    [-inf, 3.0, 2.0]

Does not handle: beam search, repetition/frequency penalties, min-p, typical
sampling, constrained (grammar) decoding.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from tinytransformer._validate import positive_int
from tinytransformer.attention import softmax

__all__ = ["greedy", "filter_top_k", "filter_top_p", "probabilities", "sample_next", "generate"]


def greedy(logits) -> int:
    """The id with the largest logit (the first one on ties)."""
    return int(np.argmax(_logits(logits)))


def filter_top_k(logits, k: int) -> np.ndarray:
    """Logits with all but the k largest set to -inf (ties broken towards lower ids)."""
    logits = _logits(logits)
    k = positive_int(k, "top_k")
    if k >= logits.size:
        return logits.copy()
    keep = np.argsort(-logits, kind="stable")[:k]  # descending; stable: equal logits keep id order
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def filter_top_p(logits, p: float) -> np.ndarray:
    """Logits outside the nucleus set to -inf: the smallest prefix of tokens, most
    likely first, whose probability mass reaches p (always at least one token)."""
    logits = _logits(logits)
    if not isinstance(p, (int, float, np.floating)) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p: expected a number in (0, 1], got {p!r}")
    order = np.argsort(-logits, kind="stable")  # most likely first
    probs = softmax(logits.astype(np.float64))[order]
    mass_before = np.cumsum(probs) - probs  # mass of the tokens ranked above each one
    keep = order[mass_before < p]  # a token is needed while the mass before it is short of p
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def probabilities(logits, *, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """The distribution [V] (float64) that `sample_next` draws from: temperature, then top-k,
    then top-p, then softmax. Temperature 0 is greedy: all the mass on the argmax."""
    logits = _logits(logits)
    if not isinstance(temperature, (int, float, np.floating)) or not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if temperature == 0:
        probs = np.zeros(logits.size)
        probs[greedy(logits)] = 1.0
        return probs
    z = logits.astype(np.float64) / temperature  # z / tau
    if top_k is not None:
        z = filter_top_k(z, top_k)
    if top_p is not None:
        z = filter_top_p(z, top_p)
    return softmax(z)


def sample_next(logits, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                rng=None) -> int:
    """One token id from next-token logits [V]. temperature 0 (the default) is greedy.

    rng: a numpy Generator, an int seed, or None (a fresh unseeded generator).
    """
    probs = probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return int(np.argmax(probs))  # no draw: greedy leaves the generator untouched
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return int(rng.choice(probs.size, p=probs))


def generate(step: Callable[[list[int]], np.ndarray], prompt_ids, max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed=None, eos_id: int | None = None) -> Iterator[int]:
    """Yield up to max_new_tokens new ids, stopping after eos_id.

    step(new_ids) must return the logits [V] for the position after new_ids,
    remembering what it was given before (a model with a KV cache): it is called
    once with the whole prompt (prefill), then with one token at a time (decode).
    """
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise ValueError("prompt_ids: expected at least one token id, got an empty prompt")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
    rng = np.random.default_rng(seed)
    new = prompt_ids
    for _ in range(max_new_tokens):
        token = sample_next(step(new), temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
        yield token
        if token == eos_id:
            return
        new = [token]


def _logits(logits) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0 or logits.dtype.kind not in "fiu":
        raise ValueError(f"logits: expected a non-empty 1-D numeric array [V], got dtype {logits.dtype} "
                         f"shape {logits.shape}")
    return logits if logits.dtype.kind == "f" else logits.astype(np.float64)
