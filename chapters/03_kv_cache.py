# %% [markdown]
# # Chapter 3: the KV cache
# Why decoding stores keys and values, what it costs in memory, and how GQA and MQA shrink it.
# Modules: `tinytransformer/kv_cache.py`, `tinytransformer/model.py`. Run: `python chapters/03_kv_cache.py [--quick]`

# %%
import time

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.kv_cache import kv_cache_bytes
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.threads import blas_description, blas_threads

CHAPTER = "03_kv_cache"

# %% [markdown]
# ## 1. The size of the cache
# bytes = 2 (K and V) x layers x KV heads x head dim x positions x batch x bytes per element.
# SmolLM2-135M: 30 layers, 9 query heads of dim 64, 3 KV heads (GQA), context up to 8,192.

# %%
heading("KV cache size for a SmolLM2-135M-shaped model, fp16")
layers, head_dim = 30, 64
print(f"{'attention':8s} {'KV heads':>8s} {'per token':>11s} {'8k context':>11s} {'8k x batch 32':>14s}")
for name, kv_heads in (("MHA", 9), ("GQA", 3), ("MQA", 1)):
    per_token = kv_cache_bytes(layers, kv_heads, head_dim, 1)
    full = kv_cache_bytes(layers, kv_heads, head_dim, 8192)
    batch = kv_cache_bytes(layers, kv_heads, head_dim, 8192, batch=32)
    print(f"{name:8s} {kv_heads:8d} {per_token / 1024:9.1f}KiB {full / 2**20:9.1f}MiB {batch / 2**30:12.2f}GiB")
    assert full == 2 * layers * kv_heads * head_dim * 8192 * 2  # K and V, fp16: 2 bytes each

lengths = np.linspace(1, 8192, 64).astype(int)
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, kv_heads in (("MHA (9 KV heads)", 9), ("GQA (3)", 3), ("MQA (1)", 1)):
    ax.plot(lengths, [kv_cache_bytes(layers, kv_heads, head_dim, n, batch=32) / 2**30 for n in lengths], label=name)
ax.set_xlabel("context length (tokens)")
ax.set_ylabel("GiB (batch 32, fp16)")
ax.set_title("KV cache memory grows linearly; GQA divides it by the group size")
ax.legend()
save(fig, CHAPTER, "cache_bytes")

# %% [markdown]
# ## 2. Cached decode computes the same logits
# A random model, a prompt, then one token at a time with the cache, against recomputing everything.

# %%
heading("cached decode == full recompute")
config = TransformerConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, max_seq_len=512)
model = TinyTransformer(config, seed=0)
ids = np.random.default_rng(0).integers(0, 100, size=(1, 12))
full = model.forward(ids)
cache = model.new_cache()
steps = [model.forward(ids[:, :4], cache)] + [model.forward(ids[:, t:t + 1], cache) for t in range(4, 12)]
print(cache)
error = np.abs(np.concatenate(steps, 1) - full).max()
print(f"max |cached - full| over all 12 positions: {error:.2e} (float32 rounding, nothing more)")
assert error < 1e-4, "cached decode must give the logits of the full recompute"

# %% [markdown]
# ## 3. Time per token, with and without the cache
# Without a cache, step t reprocesses all t tokens: the time per token grows with position.
# Decoding is a chain of small matrix-vector products, so we run it on one BLAS thread (more threads
# mostly wait for each other), repeat it, and keep each position's fastest time: the minimum is the
# measurement least disturbed by whatever else the machine is doing.

# %%
heading("time per generated token")
n_tokens, repeats = (96, 5) if QUICK else (160, 5)
config = TransformerConfig(vocab_size=1000, d_model=128, n_layers=4, n_heads=8, n_kv_heads=2, max_seq_len=n_tokens + 8)
model = TinyTransformer(config, seed=1)


def decode_times(use_cache: bool) -> np.ndarray:
    """Seconds taken by each of n_tokens greedy decode steps, with or without the KV cache."""
    cache = model.new_cache()
    history = [1]
    step_times = []
    for _ in range(n_tokens):
        t0 = time.perf_counter()
        if use_cache:
            logits = model.forward(np.array([history[-1:]]), cache)  # one new token, [1, 1] -> [1, 1, V]
        else:
            logits = model.forward(np.array([history]))  # the whole prefix again, [1, t] -> [1, t, V]
        history.append(int(np.argmax(logits[0, -1])))
        step_times.append(time.perf_counter() - t0)
    return np.array(step_times)


with blas_threads(1):
    print(f"BLAS: {blas_description()}; each position's fastest of {repeats} runs")
    runs = {True: [], False: []}
    for _ in range(repeats):  # alternate, so that a slow spell of the machine hits both alike
        for use_cache in (True, False):
            runs[use_cache].append(decode_times(use_cache))
times = {use_cache: np.min(runs[use_cache], axis=0) * 1e3 for use_cache in runs}  # [n_tokens] ms
for use_cache, label in ((True, "with the cache"), (False, "no cache")):
    print(f"{label:15s}: {times[use_cache].sum():7.1f} ms for {n_tokens} tokens, "
          f"{times[use_cache][-8:].mean():6.2f} ms per token at the end")
late = slice(n_tokens // 2, None)  # the second half, where the prefix is long
speedup = times[False][late].sum() / times[True][late].sum()
print(f"second half of the positions: the cache is {speedup:.1f}x faster")
assert speedup > 2, f"the cache should be clearly faster than recomputing the prefix, measured {speedup:.2f}x"

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(times[False], label="no cache: recompute the prefix")
ax.plot(times[True], label="with the KV cache")
ax.set_xlabel("position of the generated token")
ax.set_ylabel("ms per token")
ax.set_ylim(bottom=0)
ax.set_title(f"time per generated token (fastest of {repeats} runs, 1 BLAS thread)")
ax.legend()
save(fig, CHAPTER, "time_per_token")
