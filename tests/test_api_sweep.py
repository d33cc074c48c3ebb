"""A sweep of bad calls to the public functions of gguf, layers, sampling, testing, every function
that takes a seed, and the softmax, masks and non-finite scores of attention and flash.

Each case is a call, written as the text a user would type, and what must come of it:
either a ValueError (GGUFError is one) whose message matches a pattern naming the
argument or file, or a documented result that a check accepts. Every case runs through
`fuzzing.run_bounded`, so a hang or a memory blow-up is caught rather than suffered.
Outcomes: "clean error", "documented result", "unclear error" (another exception, or
a message that does not say what was expected), "accepted silently" (a bad call that
returned), "hang", "memory", "crash". The tally per module:

    python tests/test_api_sweep.py
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script, too

from api_sweep_cases import CASES  # noqa: E402
from fuzzing import run_bounded  # noqa: E402

from tinytransformer import gguf  # noqa: E402
from tinytransformer.attention import causal_mask, scaled_dot_product_attention, sliding_window_mask  # noqa: E402
from tinytransformer.attention import masked_softmax  # noqa: E402
from tinytransformer.flash import flash_attention  # noqa: E402
from tinytransformer.gguf import GGUFFile, dequantize, quantize, write_gguf  # noqa: E402
from tinytransformer.layers import embedding, ffn, gelu, layer_norm, linear, rms_norm, silu, swiglu  # noqa: E402
from tinytransformer.sampling import filter_top_k, filter_top_p, generate, greedy, sample_next  # noqa: E402
from tinytransformer.testing import assert_close, tolerance  # noqa: E402


class AcceptedSilently(Exception):
    """A call that should have been refused returned a value."""


def namespace(folder: str) -> dict:
    """The names the case texts use."""
    good = os.path.join(folder, "good.gguf")
    write_gguf(good, {"general.name": "x", "numbers": np.arange(3, dtype=np.int32)}, {"w": np.ones(4, np.float32)})
    fifo = os.path.join(folder, "fifo.gguf")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    rng = np.random.default_rng(0)
    return dict(np=np, os=os, gguf=gguf, good=good, fifo=fifo, folder=folder, out=os.path.join(folder, "out.gguf"),
                x=rng.standard_normal((2, 3)), w=np.ones(3), b=np.zeros(3), x16=np.full((2, 3), 300, np.float16),
                w16=np.ones(3, np.float16), b16=np.zeros(3, np.float16), w1=np.ones((4, 3)), b1=np.zeros(4),
                w2=np.ones((3, 4)), q=rng.standard_normal((1, 2, 3, 4)), kv=rng.standard_normal((1, 1, 3, 4)),
                big=np.full((1, 1, 2, 4), 1e20, np.float32), inf=np.inf, nan=np.nan, z=np.array([1.0, 2.0, 3.0]),
                **{f.__name__: f for f in (GGUFFile, dequantize, quantize, write_gguf, rms_norm, layer_norm, gelu, linear, embedding,
                                           silu, ffn, swiglu, greedy, filter_top_k, filter_top_p, sample_next,
                                           generate, assert_close, tolerance, masked_softmax, causal_mask,
                                           sliding_window_mask, scaled_dot_product_attention, flash_attention)},
                step=lambda ids: np.array([0.0, 1.0, 0.5]), q8=quantize(np.ones((1, 32), np.float32), gguf.Q8_0),
                **_seeded(rng), **_attention_names(rng))


def _attention_names(rng) -> dict:
    """The names the multi-head and paged attention cases use."""
    from tinytransformer import cuda
    from tinytransformer.attention import multi_head_attention
    from tinytransformer.paged_attention import (paged_decode_attention, paged_decode_attention_batched,
                                                 paged_decode_attention_fast)

    projections = {"wq": np.ones((8, 8)), "wk": np.ones((4, 8)), "wv": np.ones((4, 8)), "wo": np.ones((8, 8))}
    return dict(x8=rng.standard_normal((1, 3, 8)), projections=projections, cuda=cuda,
                multi_head_attention=multi_head_attention, paged_decode_attention=paged_decode_attention,
                paged_decode_attention_batched=paged_decode_attention_batched,
                paged_decode_attention_fast=paged_decode_attention_fast, q1=rng.standard_normal((1, 2, 1, 4)),
                pool=rng.standard_normal((4, 1, 2, 4)), tables=np.array([[0, 1]]), lens=np.array([3]))


def _seeded(rng) -> dict:
    """The names the seed cases use: every public function or class that takes a seed."""
    from tinytransformer import generation
    from tinytransformer.model import TinyTransformer, TransformerConfig, init_params
    from tinytransformer.ngram import NGramLM
    from tinytransformer.serving.engine import generate_batch
    from tinytransformer.positional import learned_position_table
    from tinytransformer.serving.scheduler import Request
    from tinytransformer.serving.simulate import poisson_arrivals, skewed_workload
    from tinytransformer.serving.speculative import Randomness
    from tinytransformer.training.data import random_batches
    from tinytransformer.training.loop import TrainingConfig

    config = TransformerConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)
    return dict(config=config, model=TinyTransformer(config, seed=0), lm=NGramLM(2, "laplace").fit([list("abc")]),
                rng=rng, generation=generation, **{f.__name__: f for f in (
                    TinyTransformer, init_params, learned_position_table, Request, poisson_arrivals, skewed_workload,
                    Randomness, random_batches, TrainingConfig, generate_batch)})


def run_case(text: str, expected, names: dict):
    """(kind, detail) of one case, run bounded."""
    def case():
        warnings.simplefilter("error", RuntimeWarning)  # as in the suite: our modules must not warn
        result = eval(text, names)  # noqa: S307 (the case texts are ours)
        if isinstance(expected, str) or isinstance(expected, type):
            raise AcceptedSilently(f"returned {result!r}"[:200])
        expected(result)

    if isinstance(expected, type):
        clean = (expected,)
    else:
        clean = (ValueError,) if isinstance(expected, str) else ()
    outcome = run_bounded(case, clean=clean, seconds=10, megabytes=512)
    if outcome.kind == "ok":
        return "documented result", ""
    if outcome.kind == "clean error" and isinstance(expected, str) and not re.search(expected, outcome.detail):
        return "unclear error", f"message does not match {expected!r}: {outcome.detail}"
    if outcome.kind == "unclear error" and outcome.detail.startswith("AcceptedSilently"):
        return "accepted silently", outcome.detail
    return outcome.kind, outcome.detail


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return namespace(str(tmp_path_factory.mktemp("sweep")))


@pytest.mark.parametrize("module", sorted(CASES))
def test_every_bad_call_gets_a_clear_error_or_a_documented_result(names, module):
    bad = []
    for text, expected in CASES[module]:
        kind, detail = run_case(text, expected, names)
        if kind not in ("clean error", "documented result"):
            bad.append(f"{text}: {kind} ({detail})")
    assert not bad, f"{len(bad)} of {len(CASES[module])} calls:\n" + "\n".join(bad)


if __name__ == "__main__":  # the tally for the closing notes
    from collections import Counter

    with tempfile.TemporaryDirectory() as tmp:
        names = namespace(tmp)
        total = Counter()
        for module, cases in CASES.items():
            results = [(text,) + run_case(text, expected, names) for text, expected in cases]
            counts = Counter(kind for _, kind, _ in results)
            total += counts
            print(f"{module:10s} {len(cases):4d} calls  {dict(counts)}")
            for text, kind, detail in results:
                if kind not in ("clean error", "documented result"):
                    print(f"    {kind}: {text}: {detail[:160]}")
        print(f"{'all':10s} {sum(total.values()):4d} calls  {dict(total)}")
