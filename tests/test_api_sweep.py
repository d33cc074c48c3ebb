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


class WrongResult(Exception):
    """A documented result did not hold."""


def is_array(shape=None, dtype=None, finite=True, equal=None):
    """A check of a returned array: its shape, dtype, finiteness, or exact values."""
    def check(result):
        result = np.asarray(result)
        if shape is not None and result.shape != shape:
            raise WrongResult(f"shape {result.shape}, expected {shape}")
        if dtype is not None and result.dtype != dtype:
            raise WrongResult(f"dtype {result.dtype}, expected {np.dtype(dtype)}")
        if finite and not np.all(np.isfinite(result)):
            raise WrongResult(f"not finite: {result}")
        if equal is not None and not np.array_equal(result, equal):
            raise WrongResult(f"{result.tolist()}, expected {np.asarray(equal).tolist()}")
    return check


def is_value(expected):
    def check(result):
        if result != expected:
            raise WrongResult(f"{result!r}, expected {expected!r}")
    return check


def returns_none(result):
    if result is not None:
        raise WrongResult(f"{result!r}")


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


E = "expected"  # shorthand: a ValueError whose message says what was expected
CASES = {  # module -> [(call text, a regex the ValueError must match | a result check | AssertionError)]
    "gguf": [
        ("GGUFFile(fifo)", "fifo.gguf: expected a regular file, got a FIFO"),
        ("GGUFFile(folder)", "expected a regular file, got a directory"),
        ("GGUFFile(os.path.join(folder, 'missing.gguf'))", "missing.gguf cannot be opened"),
        ("GGUFFile(good).metadata['numbers']", is_array(dtype=np.int32, equal=[0, 1, 2])),
        ("GGUFFile(good).tensor('nope')", KeyError),  # a lookup by name, as in a dict
        ("write_gguf(out, {}, {}, alignment=0)", "alignment: expected"),
        ("write_gguf(out, {}, {}, alignment=1.5)", "alignment: expected"),
        ("write_gguf(out, {}, {}, alignment=3)", "alignment: expected"),
        ("write_gguf(out, {}, {}, alignment=True)", "alignment: expected"),
        ("write_gguf(out, {}, {}, alignment=2**40)", "alignment: expected"),
        ("write_gguf(out, {}, {}, version=1)", "version: expected"),
        ("write_gguf(out, {}, {}, version=True)", "version: expected"),
        ("write_gguf(out, {}, {}, version='3')", "version: expected"),
        ("write_gguf(out, {'n': 2**70}, {})", "metadata 'n': expected an integer"),
        ("write_gguf(out, {'n': -2**64}, {})", "metadata 'n': expected an integer"),
        ("write_gguf(out, {'x': 1e300}, {})", "metadata 'x': .* does not fit"),
        ("write_gguf(out, {5: 'x'}, {})", "metadata key 5: expected a str"),
        ("write_gguf(out, {'s': '\\ud800'}, {})", "metadata 's': cannot be written as UTF-8"),
        ("write_gguf(out, {'a': None}, {})", "metadata 'a': expected a str"),
        ("write_gguf(out, {'a': {}}, {})", "metadata 'a': expected a str"),
        ("write_gguf(out, {'a': np.ones((2, 2))}, {})", "metadata 'a': expected a 1-D array"),
        ("write_gguf(out, {'a': np.ones(2, complex)}, {})", "metadata 'a': expected one of the GGUF dtypes"),
        ("write_gguf(out, {'a': np.array(['x'])}, {})", "metadata 'a': expected one of the GGUF dtypes"),
        ("write_gguf(out, {'a': [1, 'x']}, {})", "metadata 'a': expected array elements of one type"),
        ("write_gguf(out, {'a': [[[[[[[[[1]]]]]]]]]}, {})", "nest more than 8 deep"),
        ("write_gguf(out, None, {})", "metadata: expected a dict"),
        ("write_gguf(out, {}, [])", "tensors: expected a dict"),
        ("write_gguf(out, {}, {'w': [1.0, 2.0]})", "tensor 'w': expected a float32 or float16 array"),
        ("write_gguf(out, {}, {'w': np.ones(2, complex)})", "tensor 'w': expected a float32 or float16"),
        ("write_gguf(out, {}, {'w': np.ones((0, 2), np.float32)})", "tensor 'w': expected 1 to 4 dims, each >= 1"),
        ("write_gguf(out, {}, {'w': np.ones((1,) * 5, np.float32)})", "tensor 'w': expected 1 to 4 dims"),
        ("write_gguf(out, {}, {'w': (q8, gguf.Q8_0, (2, 32))})", "tensor 'w': shape .* takes 68 bytes, got 34"),
        ("write_gguf(out, {}, {'w': (q8, 99, (1, 32))})", "tensor 'w': expected a ggml type id"),
        ("write_gguf(out, {}, {'w': (q8, True, (1, 32))})", "tensor 'w': expected a ggml type id"),
        ("write_gguf(out, {}, {'w': (q8, gguf.Q8_0, 'abc')})", "tensor 'w': expected a shape of integers"),
        ("write_gguf(out, {}, {'w': (q8, gguf.Q8_0, (1.0, 32))})", "tensor 'w': expected a shape of integers"),
        ("write_gguf(out, {}, {'w': (q8.astype(float), gguf.Q8_0, (1, 32))})", "tensor 'w': expected raw bytes"),
        ("write_gguf(out, {}, {'w': (q8, gguf.Q8_0)})", "tensor 'w': expected \\(raw"),
        ("write_gguf(out, {}, {3: np.ones(2, np.float32)})", "tensor name 3: expected a str"),
        ("write_gguf(out, {'general.alignment': 'x'}, {})", "metadata 'general.alignment' is 'x'"),
        ("write_gguf(out, {'n': 2**63, 'm': [0, 2**64 - 1]}, {})", returns_none),
        ("dequantize(np.zeros(33, np.uint8), gguf.Q8_0)", "not a whole number of 34-byte blocks"),
        ("dequantize(np.zeros(34, np.uint8), 99)", "kind: expected a ggml type id"),
        ("dequantize(np.zeros(34, np.uint8), gguf.Q8_0, (3,))", "shape: expected a shape of 32 values"),
        ("dequantize(np.zeros(34, np.uint8), True)", "kind: expected a ggml type id"),
        ("dequantize(np.zeros(4, np.float64), gguf.F32)", "raw: expected"),
        ("dequantize('abcd', gguf.F32)", "raw: expected"),
        ("quantize(np.ones(32) * 1j, gguf.Q8_0)", "x: expected a real-valued array"),
        ("quantize(np.ones(31), gguf.Q8_0)", "x: expected a last axis that is a multiple of 32"),
        ("quantize(np.ones(32), 99)", "kind: expected a ggml type"),
        ("quantize(np.ones(32), True)", "kind: expected a ggml type"),
        ("quantize('abc', gguf.F32)", "x: expected a real-valued array"),
    ],
    "layers": [
        ("rms_norm(x16, w16)", is_array(dtype=np.float16)),
        ("layer_norm(x16 * np.arange(3, dtype=np.float16), w16, b16)", is_array(dtype=np.float16)),
        ("rms_norm(x, w, eps=-1.0)", "eps: expected a finite number >= 0"),
        ("rms_norm(x, w, eps=nan)", "eps: expected a finite number >= 0"),
        ("rms_norm(x, w, eps=inf)", "eps: expected a finite number >= 0"),
        ("rms_norm(x, w, eps=None)", "eps: expected a finite number >= 0"),
        ("rms_norm(x, w, eps=True)", "eps: expected a finite number >= 0"),
        ("layer_norm(x, w, b, eps=-1.0)", "eps: expected a finite number >= 0"),
        ("layer_norm(x, w, b, eps='1e-5')", "eps: expected a finite number >= 0"),
        ("layer_norm(x, w, b, eps=None)", "eps: expected a finite number >= 0"),
        ("rms_norm(x * 1j, w)", "x: expected a floating-point array"),
        ("rms_norm(x, w * 1j)", "weight: expected a real-valued array"),
        ("rms_norm(x, np.ones(3, bool))", "weight: expected a real-valued array"),
        ("rms_norm(x, np.ones(4))", "weight: expected shape \\[3\\]"),
        ("rms_norm(x, np.ones((1, 3)))", "weight: expected shape \\[3\\]"),
        ("rms_norm(x, None)", "weight: expected a real-valued array"),
        ("rms_norm(np.float64(1.0), np.ones(1))", "x: expected an array \\[..., C\\]"),
        ("rms_norm(np.ones((2, 0)), np.ones(0))", "x: expected an array \\[..., C\\] with C >= 1"),
        ("rms_norm(np.ones((0, 3)), w)", is_array(shape=(0, 3))),
        ("rms_norm('abc', w)", "x: expected a floating-point array"),
        ("rms_norm(np.ones(3, int), w)", "x: expected a floating-point array"),
        ("layer_norm(x, w, b * 1j)", "bias: expected a real-valued array"),
        ("layer_norm(x, w, np.ones(2))", "bias: expected shape \\[3\\]"),
        ("layer_norm(x, w, None)", "bias: expected a real-valued array"),
        ("gelu(x * 1j)", "x: expected a floating-point array"),
        ("gelu(x, approximate='fast')", "approximate: expected 'none' or 'tanh'"),
        ("gelu(x, approximate=None)", "approximate: expected 'none' or 'tanh'"),
        ("silu(np.ones(2, int))", "x: expected a floating-point array"),
        ("silu(np.array([1e300, -1e300, inf, -inf]))", is_array(finite=False, equal=[1e300, -0.0, np.inf, -0.0])),
        ("gelu(np.array([-inf, inf]), approximate='tanh')", is_array(finite=False, equal=[-0.0, np.inf])),
        ("ffn(x, np.ones((5, 4)), np.ones(5), np.ones((3, 5)), b)", "w_up: expected shape \\[F, 3\\]"),
        ("ffn(x, w1, np.ones(3), w2, b)", "b_up: expected shape \\[4\\]"),
        ("ffn(x, w1, b1, np.ones((2, 4)), b)", "w_down: expected shape \\[3, 4\\]"),
        ("ffn(x, w1, b1, w2, np.ones(2))", "b_down: expected shape \\[3\\]"),
        ("ffn(x, w1 * 1j, b1, w2, b)", "w_up: expected a real-valued array"),
        ("ffn(x, w1, None, w2, None)", is_array(shape=(2, 3))),
        ("ffn(x, w1, b1, w2, b, activation=None)", "activation: expected a function"),
        ("ffn(x * 1j, w1, b1, w2, b)", "x: expected a floating-point array"),
        ("swiglu(x, w1, np.ones((5, 3)), w2)", "w_up: expected shape \\[4, 3\\]"),
        ("swiglu(x, w1, w1, np.ones((3, 5)))", "w_down: expected shape \\[3, 4\\]"),
        ("swiglu(x, np.ones(3), w1, w2)", "w_gate: expected shape \\[F, 3\\]"),
        ("swiglu(x, w1, w1, w2 * 1j)", "w_down: expected a real-valued array"),
        ("swiglu(np.float64(1.0), w1, w1, w2)", "x: expected an array \\[..., C\\]"),
        ("linear(x, w1)", is_array(shape=(2, 4))),
        ("linear(x, w2)", "weight: expected shape \\[out, 3\\]"),
        ("linear(x, np.ones(3))", "weight: expected shape \\[out, 3\\]"),
        ("linear(x, w1, np.ones(3))", "bias: expected shape \\[4\\]"),
        ("linear(x, w1 * 1j)", "weight: expected a real-valued array"),
        ("linear(x * 1j, w1)", "x: expected a floating-point array"),
        ("embedding(np.array([0, 2]), w1)", is_array(shape=(2, 3))),
        ("embedding(np.array([0, 4]), w1)", "ids: expected token ids in \\[0, 4\\)"),
        ("embedding(np.array([-1]), w1)", "ids: expected token ids in \\[0, 4\\)"),
        ("embedding(np.array([0.5]), w1)", "ids: expected integer token ids"),
        ("embedding(np.array([True]), w1)", "ids: expected integer token ids"),
    ],
    "sampling": [
        ("greedy([0.0, nan, 5.0])", "logits: expected numbers, got NaN at id 1"),
        ("greedy([-inf, -inf])", "logits: every one of the 2 logits is -inf"),
        ("greedy([0.0, inf, 5.0])", is_value(1)),
        ("greedy([])", "logits: expected a non-empty 1-D"),
        ("greedy(np.ones((2, 2)))", "logits: expected a non-empty 1-D"),
        ("greedy([1 + 1j, 2])", "logits: expected a non-empty 1-D real-valued array"),
        ("greedy([True, False])", "logits: expected a non-empty 1-D real-valued array"),
        ("greedy('abc')", "logits: expected a non-empty 1-D"),
        ("greedy(None)", "logits: expected a non-empty 1-D"),
        ("sample_next([inf, 0.0, 0.0], temperature=1.0, rng=0)", is_value(0)),
        ("sample_next([1e10, 0.0, 5.0], temperature=1e-300, rng=0)", is_value(0)),
        ("sample_next([-inf, -inf, -inf], temperature=1.0)", "every one of the 3 logits is -inf"),
        ("sample_next([0.0, nan], temperature=1.0)", "logits: expected numbers, got NaN"),
        ("sample_next(z, temperature=True)", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature=-1.0)", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature=nan)", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature=inf)", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature='1')", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature=1j)", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature=None)", "temperature: expected a finite number >= 0"),
        ("sample_next(z, temperature=1.0, top_k=0)", "top_k: expected an integer >= 1"),
        ("sample_next(z, temperature=1.0, top_k=True)", "top_k: expected an integer >= 1"),
        ("sample_next(z, temperature=1.0, top_k=1.5)", "top_k: expected an integer >= 1"),
        ("sample_next(z, temperature=0.0, top_k=-1)", "top_k: expected an integer >= 1"),
        ("sample_next(z, temperature=1.0, top_p=0.0)", "top_p: expected a number in \\(0, 1\\]"),
        ("sample_next(z, temperature=1.0, top_p=True)", "top_p: expected a number in \\(0, 1\\]"),
        ("sample_next(z, temperature=1.0, top_p=nan)", "top_p: expected a number in \\(0, 1\\]"),
        ("sample_next(z, temperature=1.0, top_p='0.5')", "top_p: expected a number in \\(0, 1\\]"),
        ("sample_next(z, temperature=1.0, rng='seed')", "rng: expected a numpy Generator"),
        ("sample_next(z, temperature=1.0, rng=-1)", "rng: expected a numpy Generator"),
        ("sample_next(z, temperature=1.0, rng=1.5)", "rng: expected a numpy Generator"),
        ("sample_next(z, temperature=1.0, rng=True)", "rng: expected a numpy Generator"),
        ("filter_top_k(z, 0)", "top_k: expected an integer >= 1"),
        ("filter_top_k(z, 2**70)", is_array(equal=[1.0, 2.0, 3.0])),
        ("filter_top_p(z, 1.0)", is_array(equal=[1.0, 2.0, 3.0])),
        ("filter_top_p([0.0, -40.0], 1.0)", is_array(equal=[0.0, -40.0])),
        ("filter_top_p(z, 1.5)", "top_p: expected a number in \\(0, 1\\]"),
        ("filter_top_p(z, -0.5)", "top_p: expected a number in \\(0, 1\\]"),
        ("list(generate(step, [1.7, '3', -5], 3))", "prompt_ids\\[0\\]: expected an integer token id"),
        ("list(generate(step, '12', 3))", "prompt_ids: expected a sequence of integer token ids"),
        ("list(generate(step, 5, 3))", "prompt_ids: expected a sequence of integer token ids"),
        ("list(generate(step, [], 3))", "prompt_ids: expected at least one token id"),
        ("list(generate(step, [True], 3))", "prompt_ids\\[0\\]: expected an integer token id"),
        ("list(generate(step, [1], True))", "max_new_tokens: expected an integer >= 0"),
        ("list(generate(step, [1], -1))", "max_new_tokens: expected an integer >= 0"),
        ("list(generate(step, [1], 2.5))", "max_new_tokens: expected an integer >= 0"),
        ("list(generate(step, [1], 2, seed='x'))", "seed: expected a numpy Generator"),
        ("list(generate(step, [1], 2, seed=-3))", "seed: expected a numpy Generator"),
        ("list(generate(step, [1], 2, eos_id='2'))", "eos_id: expected an integer token id"),
        ("list(generate(step, [1], 2, temperature=True))", "temperature: expected a finite number"),
        ("list(generate(None, [1], 2))", "step: expected a function"),
        ("list(generate(step, [1], 2))", is_value([1, 1])),
        ("list(generate(lambda ids: np.array([0.0, nan]), [1], 2))", "logits: expected numbers, got NaN"),
    ],
    "testing": [
        ("assert_close(1 + 1j, 1 + 9j)", AssertionError),
        ("assert_close(np.array([1 + 1j], np.complex64), np.array([1 - 1j], np.complex64))", AssertionError),
        ("assert_close(nan, nan)", AssertionError),
        ("assert_close(np.array([nan, 1.0]), np.array([1.0, nan]), equal_nan=True)", AssertionError),
        ("assert_close(np.array([nan, 1.0]), np.array([nan, 1.0]), equal_nan=True)", returns_none),
        ("assert_close(inf, -inf)", AssertionError),
        ("assert_close(inf, inf)", returns_none),
        ("assert_close(np.ones(3), np.ones((1, 3)))", AssertionError),
        ("assert_close(np.ones(3), 1.0)", returns_none),
        ("assert_close(np.float32(1.0), np.float32(1.001))", AssertionError),
        ("assert_close(np.float16(1.0), np.float16(1.001))", returns_none),
        ("assert_close(np.array(['a']), np.array(['a']))", "actual: expected a numeric array"),
        ("assert_close(1.0, None)", "expected: expected a numeric array"),
        ("assert_close(1.0, 1.0, rtol=-1.0)", "rtol: expected a finite number >= 0"),
        ("assert_close(1.0, 1.0, atol=nan)", "atol: expected a finite number >= 0"),
        ("assert_close(1.0, 1.0, rtol=True)", "rtol: expected a finite number >= 0"),
        ("assert_close(1.0, 1.0, dtype='int8')", "dtype: expected one of"),
        ("tolerance('float8')", "dtype: expected one of"),
        ("tolerance(True)", "dtype: expected one of"),
        ("tolerance(np.complex64)", is_value((1e-5, 1e-6))),
    ],
    "attention": [
        ("masked_softmax([inf, 0.0, 0.0])", is_array(equal=[1.0, 0.0, 0.0])),
        ("masked_softmax([inf, inf, 0.0])", is_array(equal=[0.5, 0.5, 0.0])),
        ("masked_softmax([-inf, -inf])", is_array(equal=[0.0, 0.0])),
        ("masked_softmax([nan, 0.0])", is_array(finite=False)),
        ("masked_softmax([1e308, -1e308])", is_array(equal=[1.0, 0.0])),
        ("masked_softmax([1 + 1j, 0.0])", "x: expected a real-valued array"),
        ("masked_softmax([True, False])", "x: expected a real-valued array"),
        ("masked_softmax('abc')", "x: expected a real-valued array"),
        ("masked_softmax(None)", "x: expected a real-valued array"),
        ("masked_softmax([])", is_array(shape=(0,))),
        ("masked_softmax(np.zeros((2, 0)))", is_array(shape=(2, 0))),
        ("masked_softmax(z, mask=np.ones(3))", "mask: expected a boolean array"),
        ("causal_mask(2**63, 5)", "T, S: a \\[T, S\\] mask"),
        ("causal_mask(5, 2**63)", "T, S: a \\[T, S\\] mask"),
        ("causal_mask(0, 5)", "T: expected an integer >= 1"),
        ("causal_mask(True, 5)", "T: expected an integer >= 1"),
        ("causal_mask(2.0, 5)", "T: expected an integer >= 1"),
        ("causal_mask(3, 2)", is_array(shape=(3, 2), equal=[[False, False], [True, False], [True, True]])),
        ("sliding_window_mask(2**40, 2**40, 3)", "T, S: a \\[T, S\\] mask"),
        ("sliding_window_mask(2, 3, 0)", "window: expected an integer >= 1"),
        ("scaled_dot_product_attention(big, big, big)", "q, k: the scores q k\\^T \\* scale overflow float32"),
        ("scaled_dot_product_attention(q * nan, kv, kv)", "q: expected finite values"),
        ("scaled_dot_product_attention(q, kv * inf, kv)", "k: expected finite values"),
        ("scaled_dot_product_attention(q, kv, kv, bias=np.ones((3, 3)) * 1j)", "bias: expected a real-valued array"),
        ("scaled_dot_product_attention(q, kv, kv, bias=np.full((3, 3), -inf))", is_array(equal=np.zeros((1, 2, 3, 4)))),
        ("scaled_dot_product_attention(q, kv, kv * nan)", is_array(finite=False)),
        ("scaled_dot_product_attention(q, kv[:, :0], kv[:, :0])", "k: expected a number of KV heads that divides"),
        ("scaled_dot_product_attention(q, kv[:, :, :0], kv[:, :, :0])", is_array(equal=np.zeros((1, 2, 3, 4)))),
        ("scaled_dot_product_attention(q, kv, kv[0])", "v: expected rank 4"),
        ("scaled_dot_product_attention(q, kv, kv, scale=inf)", "scale: expected a finite"),
        ("scaled_dot_product_attention(q, kv, kv, scale=True)", "scale: expected a finite"),
        ("multi_head_attention(x8, projections, 2, 0)", "n_heads: expected an integer >= 1"),
        ("multi_head_attention(x8, {**projections, 'wk': np.ones((3, 8))}, 2, 1)", "k: expected head dim 4"),
        ("multi_head_attention(x8, {**projections, 'wq': np.ones((8, 5))}, 2, 1)", "weight: expected shape"),
        ("multi_head_attention(x8, {**projections, 'wo': np.ones((8, 3))}, 2, 1)", "weight: expected shape"),
        ("multi_head_attention(x8[0], projections, 2, 1)", "x: expected rank 3"),
        ("multi_head_attention(x8 * 1j, projections, 2, 1)", "x: expected a floating-point array"),
        ("paged_decode_attention(q1, pool, pool, tables, lens, scale=nan)", "scale: expected a finite"),
        ("paged_decode_attention(q1, pool, pool, tables, lens, scale=True)", "scale: expected a finite"),
        ("paged_decode_attention_batched(q1, pool, pool, tables, lens, scale=inf)", "scale: expected a finite"),
        ("paged_decode_attention_fast(q1, pool, pool, tables, lens, scale=inf)", "scale: expected a finite"),
        ("paged_decode_attention_fast(q1 * 1j, pool, pool, tables, lens)", "q: expected a floating-point array"),
        ("paged_decode_attention_fast(q1, pool.astype(int), pool, tables, lens)", "k_pool: expected a floating-point"),
        ("paged_decode_attention_fast(q1[:0], pool, pool, tables[:0], lens[:0])", is_array(shape=(0, 2, 1, 4))),
        ("paged_decode_attention(q1, pool[:, :0], pool[:, :0], tables, lens)", "expected a number of KV heads"),
        ("paged_decode_attention(q1 * 1j, pool, pool, tables, lens)", "q: expected a floating-point array"),
        ("paged_decode_attention(q1[:0], pool, pool, tables[:0], lens[:0])", is_array(shape=(0, 2, 1, 4))),
        ("cuda.paged_decode_attention(q1, pool, pool, tables, lens, scale=nan, backend='numpy')",
         "scale: expected a finite"),
        ("cuda.paged_decode_attention(q1[:0], pool, pool, tables[:0], lens[:0], backend='numpy')",
         is_array(shape=(0, 2, 1, 4))),
    ],
    "seeds": [(call.format(seed), "seed: expected a numpy Generator, an integer seed >= 0") for call in (
        "init_params(config, seed={})", "TinyTransformer(config, seed={})",
        "generation.generate(model, [1], 2, temperature=1.0, seed={})",
        "generate_batch(model, [[1]], 2, temperature=1.0, seed={})",
        "lm.generate(3, seed={})", "learned_position_table(4, 4, seed={})",
        "next(random_batches(np.arange(100), batch_size=2, context=4, seed={}))", "skewed_workload(3, seed={})",
        "poisson_arrivals(3, 1.0, seed={})", "Request([1], 2, seed={})", "Randomness({})")
        for seed in ("'x'", "1.5", "-1", "True")] + [
        ("TrainingConfig(seed=None)", "seed: expected an integer seed >= 0"),
        ("TrainingConfig(seed=1.5)", "seed: expected"),
        ("init_params(config, seed=rng)['token_embd.weight'].shape", is_value((10, 8))),
        ("len(generate_batch(model, [[1]], 2, temperature=1.0, seed=np.int64(3))[0])", is_value(2)),
    ],
    "flash": [
        ("flash_attention(big, big, big)", "q, k: the scores q k\\^T \\* scale overflow float32"),
        ("flash_attention(big, big, big, causal=True)", "q, k: the scores q k\\^T \\* scale overflow float32"),
        ("flash_attention(q * nan, kv, kv)", "q: expected finite values"),
        ("flash_attention(q, kv * inf, kv, block_q=1, block_k=1)", "k: expected finite values"),
        ("flash_attention(q * 1j, kv, kv)", "q: expected a floating-point array"),
        ("flash_attention(q, kv, kv, block_q=0)", "block_q: expected an integer >= 1"),
        ("flash_attention(q, kv, kv, block_k=True)", "block_k: expected an integer >= 1"),
        ("flash_attention(q, kv, kv, scale=nan)", "scale: expected a finite"),
        ("flash_attention(q, kv, kv, alibi_slopes=np.ones(2) * 1j)", "alibi_slopes: expected a floating-point"),
        ("flash_attention(q, kv, kv * nan)", is_array(finite=False)),
        ("flash_attention(q, kv[:, :0], kv[:, :0])", "k: expected a number of KV heads that divides"),
        ("flash_attention(q, kv[:, :, :0], kv[:, :, :0])", is_array(equal=np.zeros((1, 2, 3, 4)))),
        ("flash_attention(q, kv, kv[0])", "v: expected rank 4"),
        ("flash_attention(q, kv, kv, scale=inf)", "scale: expected a finite"),
        ("cuda.flash_attention(q, kv, kv, scale=True, backend='numpy')", "scale: expected a finite"),
        ("cuda.flash_attention(q[:0], kv[:0], kv[:0], backend='numpy')", is_array(shape=(0, 2, 3, 4))),
    ],
}


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
