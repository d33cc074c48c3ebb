"""Decoding: turning the next-token logits into a token, and the generate loop.

Given logits z over the vocabulary for the next position:

    greedy       argmax_i z_i (ties go to the lowest id)
    temperature  p = softmax(z / tau): tau < 1 sharpens, tau > 1 flattens, tau -> 0 is greedy
    top-k        keep the k largest logits, renormalise (Fan et al., 2018)
    top-p        keep the smallest set of most likely tokens whose mass reaches p
                 (nucleus sampling, Holtzman et al., 2020)

Filters apply in the order temperature, top-k, top-p (as Hugging Face does),
then one draw from the seeded generator. Non-finite logits: -inf means never
(a filtered-out token); +inf tokens share all the probability equally; a NaN
logit, or logits that are all -inf, raise ValueError. `generate` runs a model
step by step with its KV cache: the prompt is processed once (prefill), then
each step feeds only the newest token (decode). Every decode loop of the house
(this one, the serving engine's, speculative decoding's) draws with `sample_next`
and stops by one rule, `stop_reason`: at the end-of-sequence id, or at the limit.

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

from tinytransformer._validate import is_integer, is_real, nonnegative_float, nonnegative_int, positive_int, \
    random_generator
from tinytransformer.attention import masked_softmax

__all__ = ["greedy", "filter_top_k", "filter_top_p", "probabilities", "check_options", "sample_next",
           "stop_reason", "generate"]


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
    likely first, whose probability mass (summed in float64) reaches p; always at
    least one token. p = 1 keeps every token, as Hugging Face does, whatever the
    rounding of the running sum."""
    logits = _logits(logits)
    p = _top_p(p)
    if p == 1.0:
        return logits.copy()
    order = np.argsort(-logits, kind="stable")  # most likely first
    probs = masked_softmax(logits.astype(np.float64))[order]
    mass_before = np.cumsum(probs) - probs  # mass of the tokens ranked above each one
    keep = order[mass_before < p]  # a token is needed while the mass before it is short of p
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def probabilities(logits, *, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """The distribution [V] (float64) that `sample_next` draws from: temperature, then top-k,
    then top-p, then softmax. Temperature 0 is greedy: all the mass on the argmax.

    The logits are shifted by their maximum before dividing by the temperature (softmax
    does not change), so a tiny temperature gives -inf, never NaN, for all but the top ones.
    """
    logits = _logits(logits)
    temperature, top_k, top_p = check_options(temperature, top_k, top_p)
    if temperature == 0:
        probs = np.zeros(logits.size)
        probs[greedy(logits)] = 1.0
        return probs
    z = logits.astype(np.float64)
    top = z.max()
    if top == np.inf:  # +inf logits take all the probability, shared equally (softmax's limit)
        z = np.where(z == np.inf, 0.0, -np.inf)
    else:
        with np.errstate(over="ignore"):  # -1e308 - 1e308, or / 1e-300: -inf, which is right
            z = (z - top) / temperature  # (z - max) / tau <= 0
    if top_k is not None:
        z = filter_top_k(z, top_k)
    if top_p is not None:
        z = filter_top_p(z, top_p)
    return masked_softmax(z)


def check_options(temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None) -> tuple[float, int | None, float | None]:
    """The sampling options, checked: (temperature, top_k, top_p), or ValueError naming the bad one.

    temperature: a finite number >= 0 (not a bool); top_k: None or an integer >= 1;
    top_p: None or a number in (0, 1].
    """
    temperature = nonnegative_float(temperature, "temperature")
    top_k = None if top_k is None else positive_int(top_k, "top_k")
    top_p = None if top_p is None else _top_p(top_p)
    return temperature, top_k, top_p


def stop_reason(new_ids, max_new_tokens: int, eos_id: int | None = None) -> str | None:
    """Why a sequence whose new tokens so far are new_ids stops: "stop" (its last token is
    eos_id), "length" (it has max_new_tokens of them), or None (it goes on).

    >>> stop_reason([5, 2], 10, eos_id=2), stop_reason([5, 7], 2), stop_reason([5], 2)
    ('stop', 'length', None)
    """
    if new_ids and eos_id is not None and new_ids[-1] == eos_id:
        return "stop"
    return "length" if len(new_ids) >= max_new_tokens else None


def sample_next(logits, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                rng=None) -> int:
    """One token id from next-token logits [V], drawn from `probabilities`. temperature 0
    (the default) is greedy and leaves the generator untouched.

    temperature: a finite number >= 0 (not a bool). rng: a numpy Generator, an
    integer seed >= 0, or None (a fresh unseeded generator).
    """
    rng = random_generator(rng, "rng")
    probs = probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return int(np.argmax(probs))  # no draw
    return int(rng.choice(probs.size, p=probs))


def generate(step: Callable[[list[int]], np.ndarray], prompt_ids, max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed=None, eos_id: int | None = None) -> Iterator[int]:
    """An iterator over up to max_new_tokens new ids, stopping after eos_id.

    step(new_ids) must return the logits [V] for the position after new_ids,
    remembering what it was given before (a model with a KV cache): it is called
    once with the whole prompt (prefill), then with one token at a time (decode).
    Every argument is checked here, before the first step runs.
    """
    if not callable(step):
        raise ValueError(f"step: expected a function new_ids -> logits [V], got {step!r}")
    prompt_ids = _token_ids(prompt_ids)
    max_new_tokens = nonnegative_int(max_new_tokens, "max_new_tokens")
    temperature, top_k, top_p = check_options(temperature, top_k, top_p)
    rng = random_generator(seed, "seed")
    if eos_id is not None and not is_integer(eos_id):
        raise ValueError(f"eos_id: expected an integer token id or None, got {eos_id!r}")
    return _decode(step, prompt_ids, max_new_tokens, dict(temperature=temperature, top_k=top_k, top_p=top_p),
                   rng, eos_id)


def _decode(step, prompt_ids, max_new_tokens, options, rng, eos_id) -> Iterator[int]:
    """The loop of `generate`: prefill with the prompt, then one token at a time, until stop_reason."""
    new_ids: list[int] = []
    fed = prompt_ids
    while stop_reason(new_ids, max_new_tokens, eos_id) is None:
        token = sample_next(step(fed), rng=rng, **options)
        new_ids.append(token)
        yield token
        fed = [token]


# --- validation helpers (the public boundary) ---------------------------------------


def _logits(logits) -> np.ndarray:
    """logits as a 1-D float array with at least one token that can be chosen."""
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0 or logits.dtype.kind not in "fiu":
        raise ValueError(f"logits: expected a non-empty 1-D real-valued array [V], got dtype {logits.dtype} "
                         f"shape {logits.shape}")
    logits = logits if logits.dtype.kind == "f" else logits.astype(np.float64)
    nan = np.flatnonzero(np.isnan(logits))
    if nan.size:
        raise ValueError(f"logits: expected numbers, got NaN at id {nan[0]} ({nan.size} NaN in all)")
    if np.all(logits == -np.inf):
        raise ValueError(f"logits: every one of the {logits.size} logits is -inf, so no token can be chosen")
    return logits


def _top_p(p) -> float:
    if not is_real(p) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p: expected a number in (0, 1], got {p!r}")
    return float(p)


def _token_ids(ids) -> list[int]:
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"prompt_ids: expected a sequence of integer token ids, got {type(ids).__name__}")
    ids = list(ids)
    if not ids:
        raise ValueError("prompt_ids: expected at least one token id, got an empty prompt")
    for i, token in enumerate(ids):
        if not is_integer(token) or token < 0:
            raise ValueError(f"prompt_ids[{i}]: expected an integer token id >= 0, got {token!r}")
    return [int(token) for token in ids]
