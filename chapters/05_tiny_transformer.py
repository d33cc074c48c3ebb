# %% [markdown]
# # Chapter 5: a small decoder-only transformer, and how it picks tokens
# Norms, activations, the FFN, pre-LN vs post-LN blocks, a whole model, and decoding strategies.
# Modules: `tinytransformer/layers.py`, `model.py`, `sampling.py`. Run: `python chapters/05_tiny_transformer.py [--quick]`

# %%
import numpy as np
from _lecture import heading, plt, save

from tinytransformer.attention import softmax
from tinytransformer.layers import gelu, layer_norm, rms_norm, silu
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.sampling import filter_top_k, filter_top_p

CHAPTER = "05_tiny_transformer"

# %% [markdown]
# ## 1. Normalisation: LayerNorm centres and scales, RMSNorm only scales

# %%
heading("LayerNorm vs RMSNorm")
x = np.array([[1.0, 2.0, 3.0, 10.0]])
print("x          ", x[0])
print("LayerNorm  ", layer_norm(x, np.ones(4), np.zeros(4))[0].round(4), "(mean 0, variance 1)")
print("RMSNorm    ", rms_norm(x, np.ones(4))[0].round(4), "(root-mean-square 1, mean kept)")

# %% [markdown]
# ## 2. Activations: ReLU, GELU, SiLU

# %%
grid = np.linspace(-4, 4, 200)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(grid, np.maximum(grid, 0), label="ReLU")
ax.plot(grid, gelu(grid), label="GELU")
ax.plot(grid, silu(grid), label="SiLU (Swish)")
ax.axhline(0, color="grey", lw=0.5)
ax.legend()
ax.set_title("activations used in transformer FFNs")
save(fig, CHAPTER, "activations")

# %% [markdown]
# ## 3. A model from a config
# The same code builds GPT-2-like and Llama-like stacks (block="post" gives the 2017 original's post-LN).

# %%
heading("two small models")
configs = {
    "Llama-like": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2),
    "GPT-2-like": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=8, norm="layer", ffn="gelu",
                                    position="learned", tie_embeddings=True),
}
for name, config in configs.items():
    model = TinyTransformer(config, seed=0)
    n_params = sum(a.size for name, a in model.params.items() if "norm" not in name)  # keyed by GGUF names
    print(f"{name}: {config.n_layers} layers, Hq={config.n_heads}, Hkv={config.kv_heads}, {config.position} "
          f"positions, {config.norm} norm, {config.ffn} FFN; {n_params:,} parameters (excluding norms)")
    out = model.generate([1, 2, 3], 8, temperature=0.8, top_k=20, seed=0)
    print(f"   sampled continuation of [1, 2, 3] (random weights, so random-looking): {out}")

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

model = TinyTransformer(configs["Llama-like"], seed=0)
print(f"greedy from [1, 2, 3]: {model.generate([1, 2, 3], 8)} (temperature 0 and top_k=1 give the same: "
      f"{model.generate([1, 2, 3], 8, temperature=1.0, top_k=1, seed=1)})")
