# %% [markdown]
# # Chapter 11: training a transformer, with gradients written by hand
# A model learns by following the gradient of its loss. This chapter computes every
# gradient by hand (no autograd), checks them, optimises with AdamW, and trains the
# decoder of chapter 5 on the built-in corpus, byte by byte, next to chapter 7's n-grams.
# Then the two tricks of memory (accumulation, checkpointing), BERT's masked objective,
# and a checkpoint that the model loader runs.
# Modules: `tinytransformer/training/`. Run: `python chapters/11_training.py [--quick]`

# %%
import math
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.corpus import split_corpus
from tinytransformer.flash import flash_attention_with_lse
from tinytransformer.generation import generate
from tinytransformer.layers import rms_norm
from tinytransformer.llama import load_model
from tinytransformer.metrics import heldout_bits_per_byte
from tinytransformer.model import TinyTransformer, TransformerConfig, init_params
from tinytransformer.ngram.comparison import bits_per_byte_table
from tinytransformer.testing import numerical_gradient
from tinytransformer.training.backward import attention_backward, rms_norm_backward
from tinytransformer.training.data import byte_corpus, byte_tokenizer, encode
from tinytransformer.training.flash_backward import flash_attention_backward
from tinytransformer.training.gradients import loss_and_gradients
from tinytransformer.training.loop import Trainer, TrainingConfig, train_step
from tinytransformer.training.objectives import IGNORE, cross_entropy, mask_tokens, next_token_targets
from tinytransformer.training.optim import AdamW, warmup_cosine

CHAPTER = "11_training"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A backward pass is the chain rule, one layer at a time
# Each layer gets dL/d(output) and returns dL/d(input) and dL/d(parameters). For RMSNorm,
# y = x r w with r = 1/sqrt(mean(x^2) + eps): dx = r (g - xhat mean(g xhat)), g = dy w.
# A central finite difference (L(x + h) - L(x - h)) / 2h checks it, one coordinate at a time.

# %%
heading("RMSNorm backward against a finite difference")
x, w, dy = rng.standard_normal((3, 8)), rng.standard_normal(8), rng.standard_normal((3, 8))
dx, dw = rms_norm_backward(dy, x, w)
for which, name, grad in ((0, "x[1, 2]", dx[1, 2]), (1, "w[5]   ", dw[5])):
    index = (1, 2) if which == 0 else (5,)
    numeric = numerical_gradient(lambda a: float(np.sum(rms_norm(a[0], a[1]) * dy)), [x, w], which, index)
    print(f"dL/d{name}: by hand {grad:+.10f}   finite difference {numeric:+.10f}")
    assert abs(grad - numeric) < 1e-7 * max(1.0, abs(numeric))

# %% [markdown]
# ## 2. The whole model: the model's own forward, every backward in reverse
# `loss_and_gradients` runs `TinyTransformer.hidden_states` with its training hook (a dict that
# keeps each block's activations), then walks back: cross-entropy, output head, final norm,
# each block's FFN, norm, attention (Wo, softmax, RoPE rotated back, Wq/Wk/Wv), norm, residuals,
# and the embedding. One gradient per parameter, checked against finite differences.

# %%
heading("every parameter's gradient, checked on random coordinates")
config = TransformerConfig(vocab_size=20, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16, max_seq_len=16)
model = TinyTransformer(config, {n: a.astype(np.float64) + 0.1 * rng.standard_normal(a.shape)
                                 for n, a in init_params(config, 0).items()})
ids = rng.integers(0, 20, size=(2, 10))
targets = next_token_targets(ids)
loss, n_targets, grads = loss_and_gradients(model, ids, targets)
print(f"loss {loss:.4f} nats over {n_targets} targets (log 20 = {math.log(20):.4f}: a fresh model is near chance)")
worst = 0.0
for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_gate.weight", "blk.1.attn_norm.weight"):
    array = model.params[name]
    index = tuple(int(rng.integers(s)) for s in array.shape)
    numeric = numerical_gradient(lambda _: loss_and_gradients(model, ids, targets)[0], [array], 0, index)
    worst = max(worst, abs(grads[name][index] - numeric) / max(abs(numeric), 1e-6))
    print(f"  {name:24s}{str(index):10s} by hand {grads[name][index]:+.8f}   finite difference {numeric:+.8f}")
assert worst < 1e-5, worst
print("(tests/test_training_*.py check every layer and the whole model against PyTorch's autograd to 1e-10)")

# %% [markdown]
# ## 3. Softmax and cross-entropy fused; attention's backward without the T x S matrix
# The gradient of the loss with respect to the logits is (softmax - onehot) / N: the
# probabilities the loss computed anyway. Flash attention's backward recomputes the
# attention weights tile by tile from the saved log-sum-exp and D = rowsum(dO * O).

# %%
heading("dL/dlogits = (p - onehot) / N")
loss, dlogits = cross_entropy(np.array([[2.0, 0.0, -1.0]]), np.array([0]))
print(f"logits [2, 0, -1], target 0: loss {loss:.4f}, dlogits {dlogits.round(4).tolist()[0]} (sums to 0)")
assert abs(dlogits.sum()) < 1e-12 and dlogits[0, 0] < 0

heading("flash attention backward: same gradients, tiles instead of the T x S matrix")
T = 128 if QUICK else 512
q, k, v, dout = (rng.standard_normal((1, 2, T, 16)) for _ in range(4))
out, lse = flash_attention_with_lse(q, k, v, causal=True)
peaks, results = {}, {}
for name, fn in (("plain", lambda: attention_backward(dout, q, k, v, causal=True)),
                 ("flash", lambda: flash_attention_backward(q, k, v, out, lse, dout, causal=True,
                                                            block_q=32, block_k=32))):
    tracemalloc.start()
    results[name] = fn()
    peaks[name] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
difference = max(float(np.abs(a - b).max()) for a, b in zip(results["plain"], results["flash"]))
print(f"T = S = {T}: largest difference {difference:.1e}; peak memory plain {peaks['plain'] / 2**20:.1f} MiB, "
      f"flash {peaks['flash'] / 2**20:.2f} MiB (tiles of 32 x 32)")
assert difference < 1e-10 and peaks["flash"] < peaks["plain"] / 3

# %% [markdown]
# ## 4. The optimiser: AdamW and the learning-rate schedule
# Adam divides each parameter's step by a running RMS of its gradients, so every parameter
# moves at about the learning rate; AdamW shrinks weights directly (decoupled decay). The
# rate warms up linearly, then follows half a cosine.

# %%
heading("warm-up then cosine")
steps = np.arange(2000)
rates = [warmup_cosine(int(s), max_lr=1e-3, warmup_steps=100, total_steps=2000, min_lr=1e-4) for s in steps]
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.plot(steps, rates)
ax.set(xlabel="step", ylabel="learning rate", title="linear warm-up (100 steps), cosine decay to min_lr")
save(fig, CHAPTER, "schedule")
params = {"w": np.array([[1.0, 1.0]])}
AdamW(params, lr=0.01, weight_decay=0.0).step({"w": np.array([[1e-4, 1e4]])})
print(f"one AdamW step on gradients 1e-4 and 1e4: both weights move by {(1 - params['w'][0]).round(6).tolist()}")
assert np.allclose(1 - params["w"], 0.01, rtol=1e-3)

# %% [markdown]
# ## 5. Training a byte-level decoder on the built-in corpus
# One token per byte (256 bytes + `<|endoftext|>`), chapter 7's split of the Python
# documentation, and chapter 5's decoder (RMSNorm, SwiGLU, RoPE). We measure held-out
# bits per byte (loss in nats / ln 2), the unit of chapter 7's n-gram table.

# %%
heading("training")
CORPUS = dict(max_train_bytes=60_000, max_heldout_chars=4000) if QUICK else {}  # --quick: a smaller split
tokenizer, train_tokens, heldout_tokens, heldout_bytes = byte_corpus(**CORPUS)
sizes = (dict(d_model=32, n_layers=1, n_heads=2, max_seq_len=32) if QUICK
         else dict(d_model=128, n_layers=4, n_heads=4, max_seq_len=128))
steps = 60 if QUICK else 1500
training = TrainingConfig(batch_size=8, context=sizes["max_seq_len"], total_steps=steps, warmup_steps=steps // 20,
                          max_lr=3e-3, min_lr=3e-4, weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0)
config = TransformerConfig(vocab_size=tokenizer.vocab_size, eos_id=256, name="chapter 11 byte decoder", **sizes)
trainer = Trainer(TinyTransformer(config, seed=0), train_tokens, training, tokenizer=tokenizer)
eval_tokens = heldout_tokens[:(2001 if QUICK else 10001)]  # the first held-out bytes, for the curve
eval_bytes = len(eval_tokens) - 1
print(f"{trainer.model.n_parameters:,} parameters; {len(train_tokens):,} training bytes; "
      f"batch {training.batch_size} x {training.context} bytes; {steps} steps")
curve = {"step": [], "train": [], "heldout": []}
prompt = encode(tokenizer, "The ").tolist()
n_sample = min(60, config.max_seq_len - len(prompt))  # samples stay within the context
start = time.perf_counter()
every = steps // 6
for step in range(steps):
    record = trainer.step()
    if (step + 1) % every == 0 or step == 0:
        curve["step"].append(step + 1)
        curve["train"].append(np.mean([r["loss"] for r in trainer.history[-every:]]) / math.log(2))
        curve["heldout"].append(heldout_bits_per_byte(trainer.model, eval_tokens, eval_bytes, training.context))
        sample = tokenizer.decode(generate(trainer.model, prompt, n_sample, temperature=0.8, top_k=20, seed=0))
        print(f"step {step + 1:5d} ({time.perf_counter() - start:5.0f} s): training {curve['train'][-1]:.3f}, "
              f"held-out {curve['heldout'][-1]:.3f} bits/byte   sample: {('The ' + sample)!r}")
train_text, heldout_text = split_corpus(max_train_bytes=CORPUS.get("max_train_bytes"))  # the same split, as text
heldout_text = heldout_text[:CORPUS.get("max_heldout_chars")]
ngram = bits_per_byte_table(train_text, heldout_text, orders=(3 if QUICK else 5,), smoothings=("modified-kneser-ney",),
                            levels=("byte",))[0]  # the best n-gram of chapter 7: byte-level, modified Kneser-Ney
scope = "first 4,000 held-out characters (--quick)" if QUICK else "whole held-out text"
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.plot(curve["step"], curve["train"], "o-", label="training batches")
ax.plot(curve["step"], curve["heldout"], "s-", label=f"held-out (first {eval_bytes:,} bytes)")
ax.axhline(ngram["bpb"], color="k", linestyle="--", label=f"byte {ngram['order']}-gram, {scope}")
ax.axhline(8, color="grey", linestyle=":", label="8 bits: no model")
ax.set(xlabel="optimiser step", ylabel="bits per byte", title="a small decoder learning the corpus")
ax.legend()
save(fig, CHAPTER, "loss_curves")
print(f"byte {ngram['order']}-gram (modified Kneser-Ney): {ngram['bpb']:.3f} bits/byte on the {scope}; "
      f"the training benchmark (bench/train.py) trains for 15 minutes and scores it on the same bytes")
assert curve["heldout"][-1] < curve["heldout"][0] - (0.5 if QUICK else 2.0)  # it learns

# %% [markdown]
# ## 6. Memory: gradient accumulation and activation checkpointing
# Accumulating k micro-batches (each weighted by its share of the targets) gives exactly the
# step of one batch k times larger, at the memory of one micro-batch. Checkpointing keeps only
# each block's input during the forward and recomputes the block in the backward.

# %%
heading("k micro-batches == one batch k times larger")
small = TransformerConfig(vocab_size=257, d_model=16, n_layers=2, n_heads=2, max_seq_len=16)
window = train_tokens[:4 * 17].reshape(4, 17).astype(np.int64)
after = []
for batches in ([(window[i:i + 1, :-1], window[i:i + 1, 1:]) for i in range(4)], [(window[:, :-1], window[:, 1:])]):
    m = TinyTransformer(small, {n: a.astype(np.float64) for n, a in init_params(small, 0).items()})
    train_step(m, AdamW(m.params, lr=1e-2), batches, lr=1e-2, grad_clip=1.0)
    after.append(m.params)
gap = max(float(np.abs(after[0][n] - after[1][n]).max()) for n in after[0])
print(f"4 micro-batches of 1 vs 1 batch of 4: largest parameter difference after the step {gap:.1e}")
assert gap < 1e-12

heading("activation checkpointing: the same gradients, less memory")
deep = TransformerConfig(vocab_size=257, d_model=32, n_layers=8, n_heads=2, d_ff=32, max_seq_len=64)
m = TinyTransformer(deep, seed=0)
ids = train_tokens[:8 * 65].reshape(8, 65).astype(np.int64)
results, peaks = {}, {}
for checkpoint in (False, True):
    tracemalloc.start()
    results[checkpoint] = loss_and_gradients(m, ids[:, :-1], ids[:, 1:], checkpoint=checkpoint)[2]
    peaks[checkpoint] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
gap = max(float(np.abs(results[True][n] - results[False][n]).max()) for n in results[True])
print(f"8 blocks: peak memory {peaks[False] / 2**20:.1f} MiB without, {peaks[True] / 2**20:.1f} MiB with "
      f"checkpointing; largest gradient difference {gap:.1e}")
assert gap < 1e-6 and peaks[True] < 0.7 * peaks[False]

# %% [markdown]
# ## 7. BERT's objective: masked language modelling
# An encoder (causal=False: every byte sees the whole window) predicts 15% of the positions,
# chosen at random; of those, 80% are replaced by `<|mask|>`, 10% by a random byte, 10% kept.
# The loss counts the chosen positions only.

# %%
heading("masking")
mask_tokenizer = byte_tokenizer(("<|endoftext|>", "<|mask|>"))
mask_id = mask_tokenizer.special_tokens["<|mask|>"]
sample_ids = train_tokens[:200].astype(np.int64)
inputs, targets = mask_tokens(sample_ids, vocab_size=258, mask_id=mask_id, special_ids=[256, mask_id],
                              rng=np.random.default_rng(1))
shown = mask_tokenizer.decode(inputs[:80].tolist()).replace("<|mask|>", "_")
print(f"text:   {mask_tokenizer.decode(sample_ids[:80].tolist())!r}\nmasked: {shown!r}")
big_inputs, big_targets = mask_tokens(train_tokens[:200_000].astype(np.int64), vocab_size=258, mask_id=mask_id,
                                      special_ids=[256, mask_id], rng=np.random.default_rng(2))
chosen = big_targets != IGNORE
print(f"over {chosen.size:,} bytes: {chosen.mean():.2%} chosen; of those {np.mean(big_inputs[chosen] == mask_id):.1%} "
      f"masked, {np.mean(big_inputs[chosen] == big_targets[chosen]):.1%} unchanged")
n_bytes, n_chosen = chosen.size, int(chosen.sum())  # within 5 standard deviations of 15% and 80%
assert abs(chosen.mean() - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n_bytes)
assert abs(np.mean(big_inputs[chosen] == mask_id) - 0.8) < 5 * math.sqrt(0.8 * 0.2 / n_chosen)

heading("a small encoder learns to fill in the blanks")
encoder_config = TransformerConfig(vocab_size=258, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, causal=False)
encoder_steps = 40 if QUICK else 600
masked = Trainer(TinyTransformer(encoder_config, seed=0), train_tokens,
                 TrainingConfig(batch_size=8 if QUICK else 16, context=32, total_steps=encoder_steps, warmup_steps=10, max_lr=3e-3,
                                min_lr=3e-4, objective="masked", mask_id=mask_id, special_ids=(256,)))
held = heldout_tokens[1:4001]
before = masked.evaluate(held)
for _ in range(encoder_steps):
    masked.step()
after_loss = masked.evaluate(held)
counts = np.bincount(train_tokens, minlength=258) + 1
unigram = -np.sum(counts / counts.sum() * np.log(counts / counts.sum()))  # a model that ignores the context
print(f"masked-position loss: {before:.3f} nats before, {after_loss:.3f} after {encoder_steps} steps "
      f"(byte frequencies alone: {unigram:.3f})")
assert after_loss < before - 1.0

# %% [markdown]
# ## 8. The checkpoint is a GGUF file, loaded like any pretrained model
# `Trainer.save` writes the weights with `llama.save_model` and the byte tokenizer as GGUF
# metadata; `load_model` (and `tinytransformer generate --model FILE`) read it back.

# %%
heading("save, load, generate")
with tempfile.TemporaryDirectory() as folder:
    path = trainer.save(Path(folder) / "chapter11.gguf")
    loaded = load_model(path)  # the model, and the file's tokenizer and metadata
    prompt_text = "def "
    new = generate(loaded.model, loaded.tokenizer.encode(prompt_text), n_sample, temperature=0.8, top_k=20, seed=1)
    print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, step {loaded.metadata['training.step']}; "
          f"sample {(prompt_text + loaded.tokenizer.decode(new))!r}")
    probe = heldout_tokens[1:33][None].astype(np.int64)
    assert np.allclose(loaded.model.forward(probe), trainer.model.forward(probe), atol=1e-5)
