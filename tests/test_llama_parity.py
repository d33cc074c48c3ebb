"""Our SmolLM2-135M-Instruct equals Hugging Face transformers' reading of the same GGUF file.

The oracle is `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=float32)`:
transformers dequantises the file with the gguf package, undoes llama.cpp's Q/K row
permutation, and runs its own Llama (rotate-half RoPE). Both models are loaded once per
session (transformers' GGUF import alone takes tens of seconds on two cores).

Token ids come from our tokenizer and are fed to both models; that our tokenizer equals the
model's real one is the tokenizer chapter's test (tests/test_tokenizer_byte_level.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import require

from tinytransformer.corpus import load_corpus
from tinytransformer.chat import chat_prompt
from tinytransformer.generation import generate
from tinytransformer.llama import load_model
from tinytransformer.model import TinyTransformer
from tinytransformer.testing import assert_close, tolerance

pytestmark = [pytest.mark.model, pytest.mark.slow]

PROMPTS = {
    "short": "The capital city of Korea is",
    "non_english": "Der schnelle braune Fuchs springt über den faulen Hund. 東京は日本の首都です。"
                   " Москва — столица России. ¿Dónde está la biblioteca?",
    "chat": chat_prompt([{"role": "user", "content": "What is gravity? Answer in one sentence."}]),
}


@pytest.fixture(scope="session")
def ours_file(smollm2_path):
    return load_model(smollm2_path)


@pytest.fixture(scope="session")
def ours(ours_file):
    return ours_file.model


@pytest.fixture(scope="session")
def tokenizer(ours_file):
    return ours_file.tokenizer


@pytest.fixture(scope="session")
def theirs(smollm2_path):
    torch = require("torch", "the Hugging Face oracle runs on PyTorch")
    transformers = require("transformers", "the Hugging Face oracle")
    require("gguf", "transformers reads GGUF files with it")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32).eval()


def _their_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _prompt_ids(tokenizer, name):
    if name == "long":  # a few hundred tokens of English prose and code
        ids = tokenizer.encode(load_corpus()[:1500])
        assert len(ids) >= 256
        return ids[:256]
    return tokenizer.encode(PROMPTS[name])


@pytest.mark.parametrize("name", ["long", "non_english"])
def test_logits_equal_transformers(tokenizer, ours, theirs, name):
    ids = _prompt_ids(tokenizer, name)
    assert_close(ours.forward(ids), _their_logits(theirs, ids), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", ["short", "chat"])
def test_greedy_continuation_of_32_tokens_and_its_logits_equal_transformers(tokenizer, ours, theirs, name):
    # Greedy decoding gives the same 32 tokens iff at every step the other model's argmax,
    # given the same prefix, is the token we chose: one teacher-forced forward pass of
    # transformers over prompt + our continuation checks all 32 steps at once.
    ids = _prompt_ids(tokenizer, name)
    new = generate(ours, ids, 32, stop_at_eos=False)
    logits = _their_logits(theirs, ids + new)  # [T + 32, V]
    assert logits[len(ids) - 1:-1].argmax(-1).tolist() == new
    assert_close(ours.forward(ids + new), logits, rtol=0, atol=1e-3)


def test_smollm2_knows_the_capital_of_korea(tokenizer, ours):
    new = generate(ours, tokenizer.encode(PROMPTS["short"]), 4)
    assert "Seoul" in tokenizer.decode(new)


def test_cached_generation_equals_uncached_on_smollm2(tokenizer, ours):
    ids = tokenizer.encode(PROMPTS["chat"])
    assert generate(ours, ids, 8, use_cache=True) == generate(ours, ids, 8, use_cache=False)


def test_forward_on_a_prefix_equals_the_first_rows_on_smollm2(tokenizer, ours):
    ids = tokenizer.encode(PROMPTS["non_english"])
    full = ours.forward(ids)
    # 10 rows and 40 go through different product kernels, whose float32 roundings add up over
    # 30 layers: the table's float32 rtol taken relative to the largest logit (34 here; measured
    # differences up to 1.1e-4, run to run, against an allowance of 3.4e-4)
    scale = tolerance(np.float32)[0] * float(np.abs(full).max())
    assert_close(ours.forward(ids[:10]), full[:10], rtol=0, atol=scale)
    assert np.array_equal(full.argmax(-1)[:10], ours.forward(ids[:10]).argmax(-1))


def test_rotate_half_pairing_on_gguf_rows_does_not_match_transformers(tokenizer, ours, theirs):
    ids = _prompt_ids(tokenizer, "chat")
    wrong = TinyTransformer(dataclasses.replace(ours.config, rope_interleaved=False), ours.params).forward(ids)
    assert np.abs(wrong - _their_logits(theirs, ids)).max() > 1.0
