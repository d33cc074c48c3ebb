# %% [markdown]
# # Chapter 5: a small decoder-only transformer, and how it picks tokens
# Norms, activations, the FFN, pre-LN vs post-LN blocks, a whole model, and decoding strategies.
# Modules: `tinytransformer/layers.py`, `model.py`, `sampling.py`. Run: `python chapters/05_tiny_transformer.py [--quick]`

# %%
import numpy as np
from _lecture import heading, plt, save

from tinytransformer.attention import softmax
from tinytransformer.generation import generate
from tinytransformer.layers import gelu, layer_norm, rms_norm, silu
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.sampling import filter_top_k, filter_top_p

CHAPTER = "05_tiny_transformer"

# %% [markdown]
# ## 1. Normalisation: LayerNorm centres and scales, RMSNorm only scales

# %%
heading("LayerNorm vs RMSNorm")
x = np.array([[1.0, 2.0, 3.0, 10.0]])
ln, rms = layer_norm(x, np.ones(4), np.zeros(4))[0], rms_norm(x, np.ones(4))[0]
print("x          ", x[0])
print("LayerNorm  ", ln.round(4), "(mean 0, variance 1)")
print("RMSNorm    ", rms.round(4), "(root-mean-square 1, mean kept)")
assert np.isclose(ln.mean(), 0) and np.isclose(ln.var(), 1, atol=1e-4)  # eps keeps the variance a hair under 1
assert np.isclose(np.sqrt((rms ** 2).mean()), 1, atol=1e-4) and rms.mean() > 0

# %% [markdown]
# ## 2. Activations: ReLU, GELU, SiLU

# %%
grid = np.linspace(-4, 4, 200)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(grid, np.maximum(grid, 0), label="ReLU")
ax.plot(grid, gelu(grid), label="GELU")
ax.plot(grid, silu(grid), label="SiLU (Swish)")
ax.axhline(0, color="grey", lw=0.5)
ax.set_xlabel("input x")
ax.set_ylabel("activation(x)")
ax.legend()
ax.set_title("activations used in transformer FFNs")
save(fig, CHAPTER, "activations")

# %% [markdown]
# ## 3. A model from a config
# The same code builds GPT-2-like and Llama-like stacks (block="post" gives the 2017 original's post-LN).

# %%
heading("two small models")
configs = {
    "Llama-like": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=128),
    "GPT-2-like": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=8, d_ff=256, norm="layer",
                                    ffn="gelu", position="learned", tie_embeddings=True),
}


def expected_parameters(c: TransformerConfig) -> int:
    """The count from the architecture: embeddings, then per block attention, FFN and two norms."""
    C, F, V, D = c.d_model, c.d_ff, c.vocab_size, c.d_model // c.n_heads
    attention = 2 * C * (c.n_heads * D) + 2 * C * (c.kv_heads * D)  # Wq and Wo; Wk and Wv (smaller under GQA)
    feed_forward = 3 * C * F if c.ffn == "swiglu" else 2 * C * F + F + C  # gate, up, down; or up, down + biases
    norm = C if c.norm == "rms" else 2 * C  # scale (and shift, for LayerNorm)
    positions = c.max_seq_len * C if c.position == "learned" else 0
    output = 0 if c.tie_embeddings else V * C
    return V * C + positions + c.n_layers * (attention + feed_forward + 2 * norm) + norm + output


for name, config in configs.items():
    model = TinyTransformer(config, seed=0)
    n_params = sum(np.size(weight) for weight in model.params.values())  # one flat dict, keyed by GGUF names
    print(f"{name}: {config.n_layers} layers, Hq={config.n_heads}, Hkv={config.kv_heads}, {config.position} "
          f"positions, {config.norm} norm, {config.ffn} FFN; {n_params:,} parameters, "
          f"{config.vocab_size * config.d_model:,} of them in the token embeddings")
    assert n_params == expected_parameters(config), f"{name}: {n_params} parameters, not the architecture's count"
    out = generate(model, [1, 2, 3], 8, temperature=0.8, top_k=20, seed=0)
    print(f"   sampled continuation of [1, 2, 3] (random weights, so random-looking): {out}")
    assert len(out) == 8 and all(0 <= token < config.vocab_size for token in out)

# %% [markdown]
# ## 4. Decoding: temperature, top-k, top-p
# The same next-token logits, reshaped by each strategy before the draw.

# %%
heading("one distribution, four decoders")
logits = np.sort(np.random.default_rng(3).standard_normal(20) * 0.8)[::-1]
variants = {
    "temperature 1": softmax(logits),
    "temperature 0.5": softmax(logits / 0.5),
    "top-k = 5": softmax(filter_top_k(logits, 5)),
    "top-p = 0.8": softmax(filter_top_p(logits, 0.8)),
}
fig, axes = plt.subplots(1, 4, figsize=(14, 3), sharey=True)
for ax, (name, p) in zip(axes, variants.items()):
    ax.bar(range(20), p)
    ax.set_title(name)
    ax.set_xlabel("token (sorted by logit)")
    print(f"{name:16s} tokens with p > 0: {int((p > 0).sum()):2d}   p(top token) = {p[0]:.3f}")
axes[0].set_ylabel("probability")
save(fig, CHAPTER, "decoding_strategies")
assert variants["temperature 0.5"][0] > variants["temperature 1"][0], "a lower temperature sharpens"
assert (variants["top-k = 5"] > 0).sum() == 5, "top-k keeps exactly k tokens"
kept = variants["top-p = 0.8"] > 0
full = variants["temperature 1"]
assert full[kept].sum() >= 0.8 > full[kept].sum() - full[kept].min(), "top-p keeps the smallest set reaching p"

model = TinyTransformer(configs["Llama-like"], seed=0)
greedy, top_1 = generate(model, [1, 2, 3], 8), generate(model, [1, 2, 3], 8, temperature=1.0, top_k=1, seed=1)
print(f"greedy from [1, 2, 3]: {greedy} (temperature 0 and top_k=1 give the same: {top_1})")
assert greedy == top_1, "top-k with k = 1 is greedy decoding, whatever the temperature"
