"""Speculative decoding: a cheap draft proposes k tokens, the target checks all of them in one forward.

Leviathan, Kalman and Matias, "Fast Inference from Transformers via Speculative
Decoding" (2023); Chen et al., "Accelerating Large Language Model Decoding with
Speculative Sampling" (2023). Decoding one token reads every weight of the
target once; a forward over k + 1 tokens reads them once too and costs little
more. So let a cheap draft guess k tokens and have the target score them all at
once. One round, for a text whose last token the target's cache does not hold yet:

    draft     x_1..x_k, x_i ~ q_i = q(. | text, x_<i)
    target    one forward over [last, x_1..x_k] through the KV cache -> p_1..p_{k+1}
    for i = 1..k:   accept x_i with probability min(1, p_i(x_i) / q_i(x_i))
                    at the first rejection, emit y ~ normalise(max(0, p_i - q_i)) and stop
    all accepted:   emit a bonus token y ~ p_{k+1}
    rewind the cache past the rejected tokens (`KVCache.truncate`)

The first round's forward also carries the prompt (all but its last token), so the
prefill costs no forward of its own, as in a plain decode. The round's tokens are
kept up to where the rule of every decode loop stops them (`sampling.stop_reason`). A round emits 1 to k + 1
tokens, and they are distributed exactly as tokens sampled from the target one at a
time. For one position,

    P(emit y) = q(y) min(1, p(y)/q(y)) + P(reject) normalise(max(0, p - q))(y)
              = min(p, q)(y) + (1 - sum min(p, q)) max(0, p - q)(y) / sum max(0, p - q) = p(y)

because sum max(0, p - q) = 1 - sum min(p, q). Greedy decoding is the case of
one-hot p and q: a drafted token is kept exactly when it is the target's argmax,
and the residual is that argmax, so the output is the target's greedy output.
The tests check the law exactly, by enumerating every branch of the procedure
(`exact_distribution`) on a tiny model.

Drafts have one method, propose(tokens, k, randomness, **sampling) -> (ids [m <= k], q [m, V]):

    PromptLookupDraft   copy what followed an earlier occurrence of the text's last n tokens
                        (prompt lookup decoding, Saxena 2023); q is one-hot. Free,
                        and good when the answer repeats the prompt (editing, quoting code)
    ModelDraft          a smaller model with its own KV cache, e.g. `layer_draft(model, n)`:
                        the target's first n layers with its final norm and head

    >>> from tinytransformer.generation import generate
    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> model = TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2), seed=1)
    >>> draft = PromptLookupDraft(model.config.vocab_size)
    >>> prompt = [1, 2, 3, 4, 5, 1, 2]
    >>> speculative_generate(model, draft, prompt, 8, k=3) == generate(model, prompt, 8)
    True

Does not handle: tree drafts (several candidate continuations verified at once,
SpecInfer, Medusa, EAGLE), speculation inside the batching engine, a draft
with a different tokenizer.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tinytransformer import sampling
from tinytransformer._validate import integer, positive_int, random_generator
from tinytransformer.generation import check_new_tokens, check_prompt

__all__ = ["Randomness", "accept_or_resample", "speculative_generate", "speculative_stream", "SpeculationStats",
           "PromptLookupDraft",
           "ModelDraft", "layer_draft", "exact_distribution"]


class Randomness:
    """The two random acts of speculative decoding, over a NumPy generator:

        coin(a)        True with probability a
        choice(probs)  an index drawn from the distribution probs

    Written as two named acts (not rng.random() < a) so that `exact_distribution`
    can replace them and enumerate every outcome with its probability."""

    def __init__(self, seed=None):
        self.rng = random_generator(seed)

    def coin(self, a: float) -> bool:
        return bool(self.rng.random() < a)

    def choice(self, probs) -> int:
        return int(self.rng.choice(len(probs), p=probs))


def accept_or_resample(draft_ids, p, q, randomness) -> tuple[int, int]:
    """The acceptance rule for one round: (number of drafted tokens accepted, the next token).

    draft_ids [k]; p [k+1, V]: the target's distributions at each drafted position
    and after the last; q [k, V]: the draft's distributions the ids were drawn from.
    """
    for i, x in enumerate(draft_ids):
        if randomness.coin(min(1.0, p[i, x] / q[i, x])):  # accept x_i with probability min(1, p/q)
            continue
        residual = np.maximum(p[i] - q[i], 0.0)  # max(0, p - q): where the target wants more than the draft gave
        total = residual.sum()
        # total is 0 only if p == q, when rejection has probability 0; rounding can still get here
        return i, randomness.choice(residual / total if total > 0 else p[i])
    return len(draft_ids), randomness.choice(p[len(draft_ids)])  # all accepted: a bonus token from p_{k+1}


@dataclass
class SpeculationStats:
    """Counts over a generation: rounds (target forwards), drafted and accepted tokens, emitted tokens."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.emitted / self.rounds if self.rounds else 0.0


def speculative_generate(target, draft, prompt_ids, max_new_tokens: int, *, k: int = 4, temperature: float = 0.0,
                         top_k: int | None = None, top_p: float | None = None, seed=None, randomness=None,
                         stop_at_eos: bool = True, stats: SpeculationStats | None = None) -> list[int]:
    """New ids from target (a TinyTransformer), with tokens proposed by draft, k at most per round.

    The ids are distributed as generation.generate(target, prompt_ids, max_new_tokens,
    temperature=..., top_k=..., top_p=...) would draw them, and equal them exactly when
    temperature is 0.
    randomness: a Randomness (default: one seeded with seed). stats: a SpeculationStats to fill.
    """
    out = []
    for emitted in speculative_stream(target, draft, prompt_ids, max_new_tokens, k=k, temperature=temperature,
                                      top_k=top_k, top_p=top_p, seed=seed, randomness=randomness,
                                      stop_at_eos=stop_at_eos, stats=stats):
        out += emitted
    return out


def speculative_stream(target, draft, prompt_ids, max_new_tokens: int, *, k: int = 4, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed=None, randomness=None,
                       stop_at_eos: bool = True, stats: SpeculationStats | None = None):
    """As speculative_generate, yielding each round's new ids (a list of 1 to k + 1 ids)."""
    c = target.config
    prompt = check_prompt(prompt_ids, c.vocab_size)  # ids in [0, V)
    k = positive_int(k, "k")
    max_new_tokens = check_new_tokens(max_new_tokens, len(prompt), c.max_seq_len)
    temperature, top_k, top_p = sampling.check_options(temperature, top_k, top_p)  # before any work
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    randomness = randomness if randomness is not None else Randomness(seed)
    stats = stats if stats is not None else SpeculationStats()
    eos = c.eos_id if stop_at_eos else None
    if max_new_tokens == 0:
        return
    cache = target.new_cache(1, len(prompt) + max_new_tokens)
    tokens = list(prompt)
    uncached = tokens[:-1]  # the first round also prefills the prompt: one forward, as a plain decode's first
    new_ids: list[int] = []  # every token emitted so far
    while sampling.stop_reason(new_ids, max_new_tokens, eos) is None:
        m = min(k, max_new_tokens - len(new_ids) - 1)  # the round emits at most m + 1 tokens
        draft_ids, q = draft.propose(tokens, m, randomness, **options) if m > 0 else ([], None)
        draft_ids = [int(t) for t in draft_ids][:m]
        ids = np.array([uncached + [tokens[-1]] + draft_ids])  # [1, n + 1 + m']
        hidden = target.hidden_states(ids, cache)[0, len(uncached):]  # [1 + m', C]: the last token on
        logits = target.logits(hidden)  # [1 + m', V]: one forward for all
        uncached = []
        if temperature == 0:  # the rule with one-hot p and q: keep drafts while each is the target's argmax
            best = [sampling.greedy(row) for row in logits]  # [1 + m']
            n_accepted = next((i for i, x in enumerate(draft_ids) if x != best[i]), len(draft_ids))
            next_token = best[n_accepted]  # the residual at a rejection is the argmax; so is the bonus token
        else:
            p = np.stack([sampling.probabilities(row, **options) for row in logits])  # [1 + m', V]
            n_accepted, next_token = accept_or_resample(draft_ids, p, q, randomness)
        cache.truncate(len(tokens) + n_accepted)  # keep the last token and the accepted drafts
        emitted = []
        for token in draft_ids[:n_accepted] + [next_token]:  # up to the end-of-sequence id, if it came
            emitted.append(token)
            new_ids.append(token)
            if sampling.stop_reason(new_ids, max_new_tokens, eos) is not None:
                break
        stats.rounds += 1
        stats.drafted += len(draft_ids)
        stats.accepted += n_accepted
        stats.emitted += len(emitted)
        tokens += emitted
        yield emitted


class PromptLookupDraft:
    """Propose what followed an earlier occurrence of the text's last n tokens, trying
    n = max_ngram down to min_ngram. q is one-hot: the draft is certain of its copy.

    Of the occurrences, the most recent one that is followed by k tokens: a copy
    being written repeats its own short n-grams, and the latest of those is often
    just behind the end of the text, with fewer than k tokens after it. If no
    occurrence has k tokens after it, the one with the most (the earliest).
    On chapter 12's code-copying prompts with k = 15 this takes SmolLM2 through 96
    tokens in 7 target forwards, where always taking the latest took 10.

    A single token seen before (n = 1) is weak evidence of a copy, so by default
    the tail must match at least 2 tokens (min_ngram=None: 2, or 1 if max_ngram is 1). On those prompts the n = 1 drafts were
    all rejected (the answer's first tokens, where nothing is being copied yet),
    and on a prompt that copies nothing they made every round's forward k rows longer.
    """

    def __init__(self, vocab_size: int, *, max_ngram: int = 3, min_ngram: int | None = None):
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.max_ngram = positive_int(max_ngram, "max_ngram")
        self.min_ngram = min(2, self.max_ngram) if min_ngram is None else positive_int(min_ngram, "min_ngram")
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram: expected at most max_ngram={max_ngram}, got {min_ngram}")

    def lookup(self, tokens, k: int) -> list[int]:
        """Up to k ids copied from the context (none if its tail occurred nowhere before)."""
        text = np.asarray(tokens)
        for n in range(min(self.max_ngram, len(text) - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(text[:-1], n)  # [len - n, n]: earlier n-grams
            starts = np.flatnonzero((windows == text[-n:]).all(axis=1)) + n  # what followed each occurrence
            if starts.size:
                full = starts[starts + k <= len(text)]  # followed by k tokens
                start = int(full[-1]) if full.size else int(starts[0])  # the latest of those, or the earliest
                return text[start:start + k].tolist()
        return []

    def propose(self, tokens, k: int, randomness=None, **sampling_options):
        ids = self.lookup(tokens, k)
        q = np.zeros((len(ids), self.vocab_size))
        q[np.arange(len(ids)), ids] = 1.0
        return ids, q


class ModelDraft:
    """Propose by sampling k tokens from a smaller model (with the target's sampling options),
    keeping its own KV cache in step with the text: after a round, it rewinds to the longest
    prefix it shares with the text and feeds only what is new."""

    def __init__(self, model):
        self.model = model
        self.cache = model.new_cache(1)
        self.seen: list[int] = []  # the ids whose keys and values the cache holds

    def propose(self, tokens, k: int, randomness, **sampling_options):
        shared = 0
        limit = min(len(self.seen), len(tokens) - 1)
        while shared < limit and self.seen[shared] == tokens[shared]:
            shared += 1
        self.cache.truncate(shared)
        del self.seen[shared:]
        k = min(k, self.model.config.max_seq_len - len(tokens))
        if k <= 0:
            return [], None
        ids, qs = [], []
        new = list(tokens[shared:])
        for i in range(k):
            hidden = self.model.hidden_states(np.array([new]), self.cache)  # [1, n, C]
            self.seen += new
            q = sampling.probabilities(self.model.logits(hidden[0, -1]), **sampling_options)  # [V]
            ids.append(randomness.choice(q))
            qs.append(q)
            new = [ids[-1]]
        return ids, np.stack(qs)


def layer_draft(model, n_layers: int):
    """A draft made from the target for free: its first n_layers blocks, then its own final norm
    and output head (an early exit, untrained). Shares the target's weight arrays."""
    from tinytransformer.model import TinyTransformer

    c = model.config
    n_layers = integer(n_layers, "n_layers", low=1, high=c.n_layers)
    dropped = tuple(f"blk.{i}." for i in range(n_layers, c.n_layers))
    params = {name: w for name, w in model.params.items() if not name.startswith(dropped)}
    config = dataclasses.replace(c, n_layers=n_layers, name=f"{c.name or 'model'}, first {n_layers} layers")
    return TinyTransformer(config, params, attention=model.attention, fast_linear=model.fast_linear)


# --- the law, exactly: enumerate every branch ------------------------------------------------


class _Branch(Exception):
    def __init__(self, options):
        self.options = options


class _Replay:
    """Randomness that plays back a fixed list of outcomes and, at the first act past its end,
    stops the run and reports that act's possible outcomes with their probabilities."""

    def __init__(self, script):
        self.script, self.position = script, 0

    def _next(self, options):
        if self.position == len(self.script):
            raise _Branch(options)
        self.position += 1
        return self.script[self.position - 1]

    def coin(self, a: float) -> bool:
        a = min(max(float(a), 0.0), 1.0)
        return self._next([(True, a), (False, 1.0 - a)])

    def choice(self, probs) -> int:
        return self._next([(i, float(p)) for i, p in enumerate(probs) if p > 0])


def exact_distribution(run) -> dict:
    """The exact distribution of run(randomness)'s result, where run draws only through
    randomness.coin and randomness.choice: every branch is followed, with its probability.

    >>> def two_coins(r):
    ...     return r.coin(0.5) + r.coin(0.25)
    >>> exact_distribution(two_coins) == {0: 0.375, 1: 0.5, 2: 0.125}
    True
    """
    distribution: dict = defaultdict(float)
    stack = [((), 1.0)]
    while stack:
        script, probability = stack.pop()
        try:
            outcome = run(_Replay(script))
        except _Branch as branch:
            stack += [(script + (value,), probability * p) for value, p in branch.options if p > 0]
            continue
        distribution[outcome] += probability
    return dict(distribution)
