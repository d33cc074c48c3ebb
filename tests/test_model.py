"""The small decoder: cached decode equals full recompute, for every architecture choice."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.basics import seeds
from strategies.models import model_configs
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.generation import generate
from tinytransformer.model import TinyTransformer, TransformerConfig, init_params
from tinytransformer.serving.engine import generate_batch
from tinytransformer.testing import assert_close


@given(model_configs(), seeds(), st.data())
def test_cached_decode_equals_full_recompute_at_every_step(config, seed, data):
    model = TinyTransformer(config, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(2, 12))
    ids = rng.integers(0, config.vocab_size, size=(2, T))
    full = model.forward(ids)
    prefill = data.draw(st.integers(1, T - 1))
    cache = model.new_cache(batch=2)
    steps = [model.forward(ids[:, :prefill], cache)]
    for t in range(prefill, T):
        steps.append(model.forward(ids[:, t:t + 1], cache))
        assert cache.length == t + 1
    assert_close(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-5)


@given(model_configs(), seeds())
def test_forward_on_a_prefix_equals_the_first_rows(config, seed):
    model = TinyTransformer(config, seed=1)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(1, 10))
    assert_close(model.forward(ids[:, :4]), model.forward(ids)[:, :4], rtol=1e-4, atol=1e-5)


@given(model_configs(), seeds(), st.sampled_from([0.0, 0.7, 1.5]))
def test_cached_generation_equals_uncached_generation(config, seed, temperature):
    model = TinyTransformer(config, seed=2)
    prompt = np.random.default_rng(seed).integers(0, config.vocab_size, size=3).tolist()
    kwargs = dict(temperature=temperature, top_k=5, top_p=0.9, seed=seed)
    cached = generate(model, prompt, 6, **kwargs)
    assert len(cached) == 6
    assert cached == generate(model, prompt, 6, use_cache=False, **kwargs)


def test_gqa_model_with_repeated_kv_weights_equals_the_mha_model():
    gqa_config = TransformerConfig(vocab_size=13, d_model=12, n_layers=2, n_heads=6, n_kv_heads=2)
    mha_config = TransformerConfig(vocab_size=13, d_model=12, n_layers=2, n_heads=6, n_kv_heads=6)
    gqa = TinyTransformer(gqa_config, seed=3)
    params = dict(gqa.params)
    for i in range(2):  # repeat each KV head's rows [out = Hkv*D, in] for the 3 query heads of its group
        for w in ("attn_k", "attn_v"):
            name = f"blk.{i}.{w}.weight"
            params[name] = gqa.params[name].reshape(2, 1, 2, 12).repeat(3, axis=1).reshape(12, 12)
    ids = np.arange(10).reshape(1, 10) % 13
    assert_close(TinyTransformer(mha_config, params).forward(ids), gqa.forward(ids))


def test_same_seed_same_model_and_different_seed_different_model():
    config = TransformerConfig(vocab_size=7, d_model=8, n_layers=1, n_heads=2)
    ids = np.array([[1, 2, 3]])
    assert np.array_equal(TinyTransformer(config, seed=5).forward(ids), TinyTransformer(config, seed=5).forward(ids))
    assert not np.array_equal(TinyTransformer(config, seed=5).forward(ids), TinyTransformer(config, seed=6).forward(ids))


@pytest.mark.parametrize("call, message", [
    (lambda: TransformerConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=4, n_kv_heads=3), "n_kv_heads: expected a divisor"),
    (lambda: TransformerConfig(vocab_size=5, d_model=10, n_layers=1, n_heads=4), "d_model: expected a multiple"),
    (lambda: TransformerConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, norm="batch"), "norm: expected one of"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2)).forward(np.array([[5]])), r"ids: expected values in \[0, vocab_size=5\)"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2, max_seq_len=4)).forward(np.zeros((1, 5), int)), "exceed max_seq_len=4"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2)).forward(np.array([[1.0, 2.0]])), r"ids: expected a non-empty integer array \[B, T\]"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2)).forward(np.zeros((1, 0), int)), r"ids: expected a non-empty integer array"),
    (lambda: generate(TinyTransformer(TransformerConfig(5, 8, 1, 2)), "12", 3), "prompt_ids: expected a sequence of token ids, got a str"),
    (lambda: generate(TinyTransformer(TransformerConfig(5, 8, 1, 2)), [1.7, 3], 3), "prompt_ids: expected a non-empty sequence of integer token ids"),
    (lambda: generate(TinyTransformer(TransformerConfig(5, 8, 1, 2)), [True], 3), "prompt_ids: expected a non-empty sequence of integer token ids"),
    (lambda: generate(TinyTransformer(TransformerConfig(5, 8, 1, 2)), [1], True), "max_new_tokens: expected an integer >= 0"),
    (lambda: generate(TinyTransformer(TransformerConfig(5, 8, 1, 2)), [1], 2, temperature=True), "temperature: expected a finite number"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2)).forward(np.array([[1, 2]]) + 0j), r"ids: expected a non-empty integer array"),
    (lambda: generate(TinyTransformer(TransformerConfig(5, 8, 1, 2, max_seq_len=4)), [1, 2], 3), "exceed the context length max_seq_len=4"),
    (lambda: generate_batch(TinyTransformer(TransformerConfig(5, 8, 1, 2)), [[1], [9]], 3), r"prompts\[1\]: expected"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2), attention="fast"), "attention: expected one of"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2), {"token_embd.weight": np.zeros((5, 8))}), "params: expected a tensor"),
    (lambda: TransformerConfig(5, 8, 1, 2, eos_id=5), r"eos_id: expected None or a token id in \[0, 5\)"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_one_dimensional_ids_are_one_sequence():
    model = TinyTransformer(TransformerConfig(11, 8, 1, 2), seed=4)
    assert_close(model.forward(np.array([1, 2, 3])), model.forward(np.array([[1, 2, 3]]))[0])


def test_cache_overflow_during_decode_raises():
    model = TinyTransformer(TransformerConfig(5, 8, 1, 2, max_seq_len=16))
    cache = model.new_cache(1, max_seq_len=3)
    model.forward(np.array([[1, 2, 3]]), cache)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model.forward(np.array([[4]]), cache)


# --- one decoder, swappable parts: caches, attention, batching -------------------------------------


def _step_logits(model, prompts, steps, cache_kind, block_size):
    """Logits of every step of a ragged batch: each prompt prefilled alone, then `steps` decode steps in
    one batch feeding tokens[b][t]. cache_kind: "none" (recompute), "contiguous" (one KVCache per
    sequence), or "paged" (one PagedKVCache, the whole batch per step)."""
    rng = np.random.default_rng(len(prompts))
    tokens = rng.integers(0, model.config.vocab_size, size=(len(prompts), steps))
    rows = []
    if cache_kind == "none":
        for b, p in enumerate(prompts):
            seq = list(p) + tokens[b].tolist()
            rows.append(model.forward(np.array([seq]))[0, len(p) - 1:])  # [steps + 1, V]
        return rows
    if cache_kind == "contiguous":
        for b, p in enumerate(prompts):
            cache = model.new_cache(1)
            out = [model.forward(np.array([p]), cache)[0, -1]]
            out += [model.forward(tokens[b:b + 1, t:t + 1], cache)[0, -1] for t in range(steps)]
            rows.append(np.stack(out))
        return rows
    cache = model.new_paged_cache(n_blocks=sum(-(-(len(p) + steps) // block_size) for p in prompts),
                                  block_size=block_size)
    seqs = [cache.add_sequence() for _ in prompts]
    out = []
    for p, s in zip(prompts, seqs):
        cache.allocate(s, len(p))  # blocks first: a view only writes into the blocks a sequence holds
        out.append([model.forward(np.array([p]), cache.view([s]))[0, -1]])
    batch = cache.view(seqs)
    for t in range(steps):
        for s in seqs:
            cache.allocate(s, 1)
        logits = model.forward(tokens[:, t:t + 1], batch)[:, -1]  # [B, V]
        for b in range(len(prompts)):
            out[b].append(logits[b])
    return [np.stack(o) for o in out]


@given(model_configs(), st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(1, 5),
       st.integers(1, 7))
def test_uncached_equals_contiguous_cache_equals_paged_cache_at_every_step(config, lengths, steps, block_size):
    model = TinyTransformer(config, seed=sum(lengths))
    rng = np.random.default_rng(block_size)
    prompts = [rng.integers(0, config.vocab_size, size=n).tolist() for n in lengths]
    none, contiguous, paged = (_step_logits(model, prompts, steps, kind, block_size)
                               for kind in ("none", "contiguous", "paged"))
    for b in range(len(prompts)):
        assert_close(contiguous[b], none[b], rtol=1e-4, atol=1e-5)
        assert_close(paged[b], none[b], rtol=1e-4, atol=1e-5)


@given(model_configs(), st.lists(st.integers(1, 9), min_size=2, max_size=4), st.integers(1, 4),
       st.integers(1, 5))
def test_the_fast_decode_path_gives_the_reference_logits(config, lengths, steps, block_size):
    """attention="sdpa-inlined" on the BLAS fast path (fast_linear: column-major matrices, rows of the
    projections padded) gives the logits of the reference attention with the plain products, at every
    step of a ragged paged batch."""
    rng = np.random.default_rng(block_size)
    prompts = [rng.integers(0, config.vocab_size, size=n).tolist() for n in lengths]
    reference = _step_logits(TinyTransformer(config, seed=1), prompts, steps, "paged", block_size)
    fast = _step_logits(TinyTransformer(config, seed=1, attention="sdpa-inlined", fast_linear=True), prompts, steps,
                        "paged", block_size)
    for b in range(len(prompts)):
        assert_close(fast[b], reference[b], rtol=1e-4, atol=1e-5)


def test_the_fast_path_keeps_its_matrices_column_major_and_the_callers_dict_as_it_was():
    config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2)
    params = init_params(config, seed=3)
    model = TinyTransformer(config, params, fast_linear=True)
    for name, w in model.params.items():
        np.testing.assert_array_equal(w, params[name])
        assert w.flags.f_contiguous, name
    assert all(p.flags.c_contiguous for p in params.values())  # the caller's arrays are not changed
    draft = TinyTransformer(config, model.params, fast_linear=True)
    assert all(draft.params[n] is w for n, w in model.params.items())  # already column-major: shared, not copied
    reference = TinyTransformer(config, params)  # the reference path: the checkpoint's arrays, as they are
    assert all(reference.params[n] is w for n, w in params.items()) and reference.params is not params


@given(model_configs(), st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5), st.integers(1, 3)), min_size=1,
                                  max_size=4), st.integers(1, 5),
       st.sampled_from(["sdpa", "sdpa-padded", "sdpa-inlined", "flash"]))
def test_a_packed_step_gives_each_sequence_what_its_own_forward_gives(config, sequences, block_size, attention):
    """Sequences holding 0..6 cached tokens bring different numbers of new tokens (a prefill
    beside decodes), packed into one row of one forward, for two steps; each sequence's rows
    equal the uncached forward of that sequence alone."""
    model = TinyTransformer(config, seed=len(sequences), attention=attention)
    rng = np.random.default_rng(block_size)
    texts = [rng.integers(0, config.vocab_size, size=held + n1 + n2).tolist() for held, n1, n2 in sequences]
    cache = model.new_paged_cache(n_blocks=sum(-(-len(t) // block_size) for t in texts), block_size=block_size)
    seqs = [cache.add_sequence() for _ in texts]
    for s, t, (held, _, _) in zip(seqs, texts, sequences):
        if held:
            cache.allocate(s, held)
            model.hidden_states(np.array([t[:held]]), cache.view([s]))
    done = [held for held, _, _ in sequences]
    for step in (1, 2):
        counts = [n1 if step == 1 else n2 for _, n1, n2 in sequences]
        for s, n in zip(seqs, counts):  # the blocks first, as the serving scheduler allocates them
            cache.allocate(s, n)
        view = cache.packed_view(seqs, counts)
        ids = [tok for t, d, n in zip(texts, done, counts) for tok in t[d:d + n]]
        hidden = model.hidden_states(np.array([ids]), view)  # [1, N, C]
        assert hidden.shape == (1, sum(counts), config.d_model)
        assert view.row_ends.tolist() == (np.cumsum(counts) - 1).tolist()
        for b, (t, d, n) in enumerate(zip(texts, done, counts)):
            alone = model.hidden_states(np.array([t[:d + n]]))[0, d:]  # [n, C]
            rows = hidden[0, view.row_ends[b] + 1 - n:view.row_ends[b] + 1]
            assert_close(rows, alone, rtol=1e-4, atol=1e-5)
            assert cache.length(seqs[b]) == d + n
        done = [d + n for d, n in zip(done, counts)]


@given(model_configs(), st.lists(st.integers(1, 8), min_size=1, max_size=4), st.integers(0, 6), seeds(),
       st.sampled_from([0.0, 1.0]), st.sampled_from([1, 2, 5, 16]))
def test_generate_batch_gives_what_separate_generate_calls_give(config, lengths, n_new, seed, temperature,
                                                                block_size):
    model = TinyTransformer(config, seed=seed % 97)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, config.vocab_size, size=n).tolist() for n in lengths]
    kwargs = dict(temperature=temperature, seed=seed)
    assert generate_batch(model, prompts, n_new, block_size=block_size, **kwargs) == \
        [generate(model, p, n_new, **kwargs) for p in prompts]


def test_generate_batch_stops_each_sequence_at_its_own_end_and_frees_its_blocks_at_once():
    config = TransformerConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, max_seq_len=64, tie_embeddings=False)
    params = {name: w if "norm" in name else 30 * w for name, w in init_params(config, seed=9).items()}
    free_running = TinyTransformer(config, params)  # large weights: peaked, varied greedy continuations
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    kwargs = dict(temperature=0.0)
    outputs = generate_batch(free_running, prompts, 12, stop_at_eos=False, **kwargs)
    # an end-of-sequence id that ends the second sequence early and never shows up in the others
    eos = next(t for t in outputs[1][1:6] if t not in outputs[0] + outputs[2])
    model = TinyTransformer(dataclasses.replace(config, eos_id=int(eos)), free_running.params)
    live, caches = [], set()  # after each step: (sequences holding blocks, blocks in use); the cache used

    def watch(c):
        caches.add(c)
        live.append((len(c.sequences()), c.n_blocks - c.n_free_blocks))

    stopped = generate_batch(model, prompts, 12, block_size=2, **kwargs, on_step=watch)
    (cache,) = caches
    assert stopped[1] == outputs[1][:outputs[1].index(eos) + 1] and stopped[0] == outputs[0] \
        and stopped[2] == outputs[2]
    assert cache.n_free_blocks == cache.n_blocks and not cache.sequences()  # every block came back
    counts = [n for n, _ in live]
    assert counts[0] == 3 and counts == sorted(counts, reverse=True) and counts[-1] == 0
    step = counts.index(2)  # the second sequence ended early: its blocks left the pool while the others went on
    assert live[step][1] < live[step - 1][1]


@given(model_configs(), seeds())
def test_flash_attention_gives_the_logits_of_sdpa(config, seed):
    sdpa = TinyTransformer(config, seed=seed % 89)
    flash = TinyTransformer(config, sdpa.params, attention="flash")
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(2, 11))
    assert_close(flash.forward(ids), sdpa.forward(ids), rtol=1e-4, atol=1e-5)
    cache = flash.new_paged_cache(n_blocks=8, block_size=4)  # flash over the paged cache too
    s = cache.add_sequence()
    cache.allocate(s, ids.shape[1])
    assert_close(flash.forward(ids[:1], cache.view([s])), sdpa.forward(ids[:1]), rtol=1e-4, atol=1e-5)


def test_any_function_with_the_attention_signature_can_be_the_models_attention():
    calls = []

    def counting_sdpa(q, k, v, *, causal=False, scale=None, alibi_slopes=None):
        calls.append(q.shape)
        return scaled_dot_product_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)

    config = TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, position="alibi")
    model = TinyTransformer(config, seed=1)
    ids = np.array([[1, 2, 3, 4]])
    assert_close(TinyTransformer(config, model.params, attention=counting_sdpa).forward(ids), model.forward(ids))
    assert calls == [(1, 2, 4, 4)] * 2


def test_long_prefill_in_query_blocks_equals_one_attention_call():
    config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=400)
    model = TinyTransformer(config, seed=2)
    ids = np.random.default_rng(0).integers(0, 11, size=(1, 300))  # over QUERY_BLOCK = 128 rows (ModelAttention)
    unblocked = TinyTransformer(config, model.params)
    unblocked._attention.query_block = None
    assert_close(model.forward(ids), unblocked.forward(ids))


def test_printing_the_model_shows_its_structure():
    text = repr(TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=3, n_heads=2, n_kv_heads=1,
                                                  norm="layer", ffn="gelu", position="learned")))
    assert "3 x pre-norm block" in text and "kv_heads 1" in text and "LayerNorm(8" in text
    assert "(position_embd): Embedding(256, 8)" in text and "GELU" in text


# --- the training hook and encoders (used by tinytransformer.training) -----------------------------


@given(model_configs(), seeds())
def test_the_training_hook_saves_what_ran_and_changes_nothing(config, seed):
    model = TinyTransformer(config, seed=seed % 1000)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(2, 5))
    saved = {}
    hidden = model.hidden_states(ids, saved=saved)
    assert_close(hidden, model.hidden_states(ids))
    assert np.array_equal(saved["positions"], np.broadcast_to(np.arange(5), (2, 5)))
    x = saved["blk.0"]
    for i in range(config.n_layers):  # each block, rerun from its saved input, gives the next one's input
        inside = {}
        x = model.block(saved[f"blk.{i}"], i, saved["positions"], saved=inside)
        assert_close(x, saved[f"blk.{i + 1}"] if i + 1 < config.n_layers else saved["output_norm"])
        q, k, v = (inside[f"blk.{i}.{name}"] for name in "qkv")
        assert q.shape == (2, config.n_heads, 5, config.head_dim) and k.shape == v.shape
        assert_close(inside[f"blk.{i}.out"], scaled_dot_product_attention(
            q, k, v, causal=True, alibi_slopes=model._attention.alibi_slopes))
        for name in ("attn_norm", "attn", "ffn_norm", "ffn"):
            assert_close(inside[f"blk.{i}.{name}"], saved[f"blk.{i}.{name}"])


def test_an_encoder_sees_the_future_and_refuses_to_generate():
    config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, causal=False)
    encoder = TinyTransformer(config, seed=0)
    decoder = TinyTransformer(dataclasses.replace(config, causal=True), encoder.params)
    ids = np.array([[1, 2, 3, 4]])
    changed = np.array([[1, 2, 3, 9]])  # only the last token differs
    assert not np.allclose(encoder.forward(ids)[0, 0], encoder.forward(changed)[0, 0])
    assert_close(decoder.forward(ids)[0, :3], decoder.forward(changed)[0, :3])
    assert_close(encoder.forward(ids)[0, -1], decoder.forward(ids)[0, -1])  # with one block, the last row sees all keys either way
    with pytest.raises(ValueError, match="an encoder .* cannot generate"):
        generate(encoder, [1, 2], 3)
    with pytest.raises(ValueError, match="cache: an encoder"):
        encoder.forward(ids, encoder.new_cache(1))
    with pytest.raises(ValueError, match="causal: expected a bool"):
        TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, causal="no")


@given(model_configs(), seeds(), st.integers(1, 12))
def test_the_fast_path_gives_the_reference_paths_logits(config, seed, T):
    """The fast path (fast_linear=True: column-major matrices, rows of every projection padded to
    a multiple of 4, layers.linear_in_row_blocks) computes the plain x W^T of the reference path
    (layers.linear on the checkpoint's arrays). Same logits, cached or not."""
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(1, T))
    prefix = ids[:, :1]

    def run(model):
        cache = model.new_cache(batch=1)
        model.forward(prefix, cache)
        return model.forward(ids, None), model.forward(ids[:, 1:] if T > 1 else ids, cache)

    params = init_params(config, seed=seed % 1000)
    padded = run(TinyTransformer(config, params, fast_linear=True))
    plain = run(TinyTransformer(config, params))
    for a, b in zip(padded, plain):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
