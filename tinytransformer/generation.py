"""Generating text with a model: prefill the prompt into a KV cache, then one token per step.

A decoder predicts the next token; generation is that prediction in a loop:

    logits = model(prompt, cache)[-1]        prefill: the whole prompt in one forward
    repeat:  token = sample(logits)          (`sampling`: greedy, temperature, top-k, top-p)
             stop at the end-of-sequence id or after max_new_tokens
             logits = model([token], cache)[-1]   decode: only the new token, attending over the cache

`stream` yields the tokens as they come and `generate` returns them as a list; the
loop itself is `sampling.generate` (sample, append, check the end), with the model
as its step. Without a cache (use_cache=False) each step recomputes the whole
sequence, quadratic, to show what the cache saves; the tokens are the same.

Many prompts at once (a ragged batch through a paged cache) are the serving
engine's work: `serving.engine.generate_batch`.

    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> model = TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2), seed=0)
    >>> new = generate(model, [1, 2, 3], 4)                 # greedy: temperature 0
    >>> len(new), new == generate(model, [1, 2, 3], 4, use_cache=False)
    (4, True)

Does not handle: beam search, stop strings (the server's `TextStream` does those),
batched generation (see above).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from tinytransformer import sampling
from tinytransformer._validate import is_integer, nonnegative_int
from tinytransformer.kv_cache import KVCache

__all__ = ["stream", "generate", "check_prompt", "check_new_tokens"]


def check_prompt(prompt_ids, vocab_size: int, name: str = "prompt_ids") -> list[int]:
    """A prompt as a list of token ids, refusing strings, floats, bools and ids outside [0, vocab_size)."""
    if isinstance(prompt_ids, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of token ids, got a {type(prompt_ids).__name__}; "
                         "encode text with the tokenizer first")
    items = list(prompt_ids) if not isinstance(prompt_ids, np.ndarray) or prompt_ids.ndim == 1 else None
    if not items or any(not is_integer(t) or not 0 <= t < vocab_size for t in items):
        raise ValueError(f"{name}: expected a non-empty sequence of integer token ids in [0, {vocab_size}), "
                         f"got {_short(prompt_ids)}")
    return [int(t) for t in items]


def check_new_tokens(max_new_tokens, n_prompt: int, max_seq_len: int, *, held: int = 0,
                     name: str = "max_new_tokens") -> int:
    """max_new_tokens as an int, or ValueError unless it is an integer >= 0 and the held (cached)
    positions, the prompt and the new tokens fit in the context length max_seq_len."""
    max_new_tokens = nonnegative_int(max_new_tokens, "max_new_tokens")
    if held + n_prompt + max_new_tokens > max_seq_len:
        cached = f"{held} cached + " if held else ""
        raise ValueError(f"{name}: {cached}{n_prompt} prompt + {max_new_tokens} new tokens exceed the context "
                         f"length max_seq_len={max_seq_len}")
    return max_new_tokens


def stream(model, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, seed=None, stop_at_eos: bool = True, use_cache: bool = True,
           cache: KVCache | None = None) -> Iterator[int]:
    """Yield the new token ids of `model` (a TinyTransformer) one at a time; temperature 0 is greedy.

    use_cache=True: prefill the prompt into a KV cache, then feed one token per step.
    use_cache=False: recompute the whole sequence every step. Both give the same tokens.
    cache: continue an existing one-sequence KVCache (a conversation): the prompt ids
    are appended after what it holds. Generation stops after max_new_tokens, or after
    the end-of-sequence id (yielded) when stop_at_eos. Every argument is checked here,
    before the first step.
    """
    c = model.config
    if not c.causal:
        raise ValueError("generate: an encoder (config.causal=False) cannot generate text left to right")
    prompt = check_prompt(prompt_ids, c.vocab_size)
    if cache is not None and (not use_cache or not isinstance(cache, KVCache) or cache.batch != 1):
        raise ValueError(f"cache: expected a one-sequence KVCache with use_cache=True, got {cache!r}")
    held = 0 if cache is None else cache.length
    max_new_tokens = check_new_tokens(max_new_tokens, len(prompt), c.max_seq_len, held=held)
    if use_cache:
        cache = cache if cache is not None else model.new_cache(1, len(prompt) + max_new_tokens)

        def step(new_ids):  # the new ids -> logits [V] of the last position
            return model.logits(model.hidden_states(np.array([new_ids]), cache)[0, -1])
    else:
        seen: list[int] = []

        def step(new_ids):  # recompute the whole sequence
            seen.extend(new_ids)
            return model.logits(model.hidden_states(np.array([seen]))[0, -1])

    eos = c.eos_id if stop_at_eos else None
    return sampling.generate(step, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             seed=seed, eos_id=eos)


def generate(model, prompt_ids, max_new_tokens: int, *, on_token: Callable[[int], None] | None = None,
             **options) -> list[int]:
    """The new ids (the end-of-sequence id included if it ended the text), as a list.

    Options as in `stream`; on_token(id) is called as each token is produced.
    """
    out = []
    for token in stream(model, prompt_ids, max_new_tokens, **options):
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
