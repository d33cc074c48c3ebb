# %% [markdown]
# # Chapter 2: where is each token?
# Sinusoidal and learned tables, rotary embeddings (RoPE) in both pairings, and ALiBi.
# Module: `tinytransformer/positional.py`. Run: `python chapters/02_positional.py [--quick]`

# %%
import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.positional import alibi_bias, alibi_slopes, apply_rope, rope_half_permutation, sinusoidal_encoding

CHAPTER = "02_positional"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Sinusoidal encoding
# PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...): fast-turning dimensions
# for fine position, slow ones for coarse position.

# %%
heading("sinusoidal encoding")
P, D = (64, 32) if QUICK else (256, 128)
table = sinusoidal_encoding(P, D)
print(f"table shape {table.shape}; PE[1, :4] = {table[1, :4].round(4)}")
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.imshow(table.T, aspect="auto", cmap="RdBu")
ax.set_xlabel("position p")
ax.set_ylabel("dimension")
ax.set_title("sinusoidal positional encoding")
save(fig, CHAPTER, "sinusoidal")

# %% [markdown]
# ## 2. RoPE: rotate q and k, and the score sees only the offset
# <R(p) q, R(s) k> = <q, R(s - p) k>. We check it numerically: same offset, same score.

# %%
heading("RoPE: scores depend on relative position only")
D = 64
q, k = rng.standard_normal((1, D)), rng.standard_normal((1, D))


def score(p, s, interleaved=False):
    qr = apply_rope(q, np.array([p]), interleaved=interleaved)
    kr = apply_rope(k, np.array([s]), interleaved=interleaved)
    return (qr @ kr.T).item()


for p, s in [(0, 3), (10, 13), (500, 503)]:
    print(f"q at {p:3d}, k at {s:3d} (offset 3): score = {score(p, s):+.6f}")
offsets = np.arange(0, 64 if QUICK else 256)
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(offsets, [score(0, o) for o in offsets], label="q at 0, k at offset")
ax.plot(offsets, [score(100, 100 + o) for o in offsets], "--", label="q at 100, k at 100 + offset")
ax.set_xlabel("offset s - p")
ax.set_ylabel("q . k after RoPE")
ax.legend()
ax.set_title("the same curve wherever the pair sits")
save(fig, CHAPTER, "rope_relative")

# %% [markdown]
# ## 3. Two pairings, one map
# Interleaved pairs (x0,x1),(x2,x3),... (RoFormer, GPT-J, GGUF) versus rotate-half pairs
# (x0,x_{D/2}),... (GPT-NeoX, HF Llama). Permuting the head dimension turns one into the other;
# this is why converting Llama weights to GGUF permutes the rows of Wq and Wk.

# %%
heading("RoPE pairings")
perm = rope_half_permutation(8)
print("permutation interleaved -> half:", perm.tolist())
x = rng.standard_normal((5, 8))
pos = np.arange(5)
diff = np.abs(apply_rope(x[:, perm], pos) - apply_rope(x, pos, interleaved=True)[:, perm]).max()
print(f"max |rope_half(x[perm]) - rope_interleaved(x)[perm]| = {diff:.1e}")

# %% [markdown]
# ## 4. ALiBi: a linear penalty on distance, one slope per head
# Slopes 2^(-8/n), 2^(-16/n), ... for n heads (a power of two), interleaved otherwise.

# %%
heading("ALiBi")
for n in (8, 12):
    print(f"{n:2d} heads: slopes = {np.round(alibi_slopes(n), 4).tolist()}")
T = 8 if QUICK else 16
bias = alibi_bias(4, T, T)
fig, axes = plt.subplots(1, 4, figsize=(13, 3))
for h, ax in enumerate(axes):
    ax.imshow(np.where(np.tril(np.ones((T, T))) > 0, bias[h], np.nan), cmap="magma")
    ax.set_title(f"head {h}, slope {alibi_slopes(4)[h]:.3f}")
    ax.set_xlabel("key j")
axes[0].set_ylabel("query i")
save(fig, CHAPTER, "alibi_bias")
