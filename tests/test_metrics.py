"""Laws of the model metrics (tinytransformer.metrics): log-probabilities, held-out loss, perplexity,
bits per byte of byte tokens and of a text under a model's own tokenizer, and the comparison with a reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.basics import seeds
import tinytransformer
from tinytransformer.metrics import (compare, heldout_bits_per_byte, heldout_loss, log_softmax, perplexity,
                                     reference_log_probs, target_loss, text_bits_per_byte)
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.testing import assert_close
from tinytransformer.training.objectives import IGNORE


@given(seed=seeds(), shift=st.floats(-1e4, 1e4))
def test_log_softmax_is_a_distribution_and_ignores_a_shift_of_the_logits(seed, shift):
    logits = np.random.default_rng(seed).standard_normal((3, 5, 11)) * 30  # [B, T, V]
    logp = log_softmax(logits)
    assert logp.dtype == np.float64 and logp.shape == logits.shape
    assert_close(np.exp(logp).sum(-1), np.ones((3, 5)))
    assert_close(log_softmax(logits + shift), logp, atol=1e-9)
    assert np.all(np.isfinite(log_softmax(np.array([1e308, 0.0]))))  # no overflow


def test_perplexity_of_equally_likely_tokens_is_their_number():
    assert_close(perplexity(7 * math.log(13), 7), 13.0)


class ByteTokenizer:
    added_tokens: dict = {}

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8")


class UniformModel:
    """A 'transformer' whose logits are all equal: every token costs log2(vocab) bits."""

    def __init__(self, vocab_size=256, bos_id=None):
        self.tokenizer = ByteTokenizer()
        self.config = type("Config", (), {"vocab_size": vocab_size, "bos_id": bos_id})()
        self.calls = []

    def forward(self, ids):
        ids = np.asarray(ids)
        self.calls.append(len(ids))
        return np.zeros((len(ids), self.config.vocab_size), dtype=np.float32)


class CountingModel(UniformModel):
    """Puts log-odds 3 on the token that the bytes of `text` say comes next (a perfect-ish oracle)."""

    def forward(self, ids):
        logits = super().forward(ids)
        logits[np.arange(len(ids) - 1), np.asarray(ids)[1:]] = 3.0  # only the positions it can see
        return logits


@given(text=st.text(alphabet=st.sampled_from("ab c\né"), min_size=1, max_size=60),
       chunk=st.integers(1, 9), bos=st.sampled_from([None, 0]))
def test_a_uniform_model_costs_log2_vocab_bits_per_token(text, chunk, bos):
    model = UniformModel(bos_id=bos)
    result = text_bits_per_byte(model, model.tokenizer, text, chunk=chunk)
    n_bytes = len(text.encode("utf-8"))
    # every byte-token is scored once; with no document-start id the first one is charged uniformly
    assert_close(result["bpb"], math.log2(256), rtol=1e-12, atol=0)
    assert result["tokens"] == n_bytes and result["bytes"] == n_bytes
    assert max(model.calls, default=0) <= chunk and sum(model.calls) == n_bytes - (bos is None)


def test_windows_without_a_cache_restart_their_context():
    text = "abcabcabc"
    model = CountingModel(bos_id=0)
    result = text_bits_per_byte(model, model.tokenizer, text, chunk=4)
    # inside a window, the logit of the true next token is 3 exactly when the true token was fed
    # at the following input position; at the last position of each window it is not visible
    p_hit = math.exp(3) / (math.exp(3) + 255)
    windows = [list(range(i, min(i + 4, 9))) for i in range(0, 9, 4)]  # targets of each window
    bits = sum(-math.log2(p_hit) * (len(w) - 1) + math.log2(256) for w in windows)
    assert_close(result["bpb"], bits / 9, rtol=1e-9, atol=0)


def test_heldout_loss_scores_every_token_but_the_first_exactly_once():
    class Counter:  # a "model" that records which positions it was asked about
        config = TransformerConfig(vocab_size=50, d_model=2, n_layers=1, n_heads=1)

        def forward(self, ids):
            return np.zeros(ids.shape + (50,))  # uniform: each scored token costs log 50

    for n, context in ((50, 8), (7, 8), (2, 3), (33, 33), (34, 33), (100, 2)):
        total, count = heldout_loss(Counter(), np.arange(n) % 50, context=context)
        assert count == n - 1, (n, context)
        assert_close(total, (n - 1) * math.log(50))


def test_heldout_loss_gives_each_token_its_past():
    config = TransformerConfig(vocab_size=20, d_model=8, n_layers=1, n_heads=2, max_seq_len=32)
    model = TinyTransformer(config, seed=1)
    tokens = np.random.default_rng(0).integers(0, 20, size=30)
    total, count = heldout_loss(model, tokens, context=30)  # one window: the plain definition
    logits = model.forward(tokens[None])[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert count == 29
    assert_close(total, -logp[np.arange(29), tokens[1:]].sum(), rtol=1e-6)


@pytest.mark.model
def test_smollm2_scores_a_sentence_in_a_sensible_number_of_bits(smollm2_path):
    loaded = tinytransformer.load_model(smollm2_path)
    result = text_bits_per_byte(loaded.model, loaded.tokenizer, "The quick brown fox jumps over the lazy dog.\n")
    assert 0.3 < result["bpb"] < 4.0  # English under a real model: far below 8 bits per byte


def test_target_loss_skips_the_ignored_targets():
    config = TransformerConfig(vocab_size=20, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)
    model = TinyTransformer(config, seed=2)
    ids = np.random.default_rng(1).integers(0, 20, size=(3, 10))
    targets = np.roll(ids, -1, axis=1)
    targets[:, -1] = IGNORE
    targets[1, :4] = IGNORE
    total, count = target_loss(model, ids, targets, batch_size=2)
    logp = log_softmax(model.forward(ids))
    keep = targets != IGNORE
    assert count == int(keep.sum()) == 3 * 9 - 4
    expected = -np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], -1)[..., 0][keep].sum()
    assert_close(total, expected, dtype="float32")  # float32 logits: a batch of 2 rounds unlike one of 3


def test_heldout_bits_per_byte_is_the_heldout_loss_in_bits_over_the_bytes():
    config = TransformerConfig(vocab_size=257, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)
    model = TinyTransformer(config, seed=0)
    tokens = np.concatenate([[256], np.frombuffer(b"a few bytes of text, scored", dtype=np.uint8)])
    total, count = heldout_loss(model, tokens, context=16)
    assert_close(heldout_bits_per_byte(model, tokens, count, 16), total / math.log(2) / count)
    with pytest.raises(ValueError, match="expected one token per byte after the first"):
        heldout_bits_per_byte(model, tokens, count + 1, 16)


def test_a_model_compared_with_itself_has_no_divergence_and_its_own_perplexity():
    config = TransformerConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    model = TinyTransformer(config, seed=3)
    windows = np.random.default_rng(0).integers(0, 40, size=(2, 12))
    reference = reference_log_probs(model, windows)
    assert reference.shape == (2, 12, 40) and reference.dtype == np.float32
    same = compare(model, windows, reference)
    assert abs(same.kl) < 1e-6 and same.same_top == 1.0 and same.n_tokens == 2 * 11
    nll = -sum(log_softmax(model.forward(w))[np.arange(11), w[1:]].sum() for w in windows)
    assert_close(same.perplexity, perplexity(nll, 22))
    other = compare(TinyTransformer(config, seed=4), windows, reference)
    assert other.kl > 0 and 0 <= other.same_top <= 1
