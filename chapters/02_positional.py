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
assert np.allclose(table[1, :2], [np.sin(1), np.cos(1)]), "dimension pair 0 turns by one radian per position"
fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
image = ax.imshow(table.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower", interpolation="nearest")
ax.set_xlabel("position p")
ax.set_ylabel("dimension (0 turns fastest)")
ax.set_title("sinusoidal positional encoding PE[p, dimension]")
fig.colorbar(image, ax=ax, label="value")
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
    assert np.isclose(score(p, s), score(0, 3)), "the score depends on the offset only"
offsets = np.arange(0, 64 if QUICK else 256)
at_0, at_100 = [score(0, o) for o in offsets], [score(100, 100 + o) for o in offsets]
assert np.allclose(at_0, at_100)
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(offsets, at_0, label="q at 0, k at offset")
ax.plot(offsets, at_100, "--", label="q at 100, k at 100 + offset")
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
assert diff < 1e-12, "the two pairings are one map up to the permutation"

# %% [markdown]
# ## 4. ALiBi: a linear penalty on distance, one slope per head
# Slopes 2^(-8/n), 2^(-16/n), ... for n heads (a power of two), interleaved otherwise.

# %%
heading("ALiBi")
for n in (8, 12):
    print(f"{n:2d} heads: slopes = {np.round(alibi_slopes(n), 4).tolist()}")
assert np.allclose(alibi_slopes(8), 2.0 ** (-np.arange(1, 9)))  # 2^(-8k/n), k = 1..n
T = 8 if QUICK else 16
heads = 4
slopes = alibi_slopes(heads)
bias = alibi_bias(heads, T, T)  # [H, T, S]: slope_h * (j - i)
i, j = np.indices((T, T))
assert np.allclose(bias, slopes[:, None, None] * (j - i)), "ALiBi adds slope times the (negative) distance"
print(f"bias of head 0, query {T - 1}: {bias[0, T - 1].round(3).tolist()} (0 at the query's own position)")
causal_bias = np.where(j <= i, bias, np.nan)  # the future is masked anyway: leave it blank
low = np.nanmin(causal_bias)
fig, axes = plt.subplots(1, heads, figsize=(13, 3.8), layout="constrained")
for h, ax in enumerate(axes):
    image = ax.imshow(causal_bias[h], cmap="magma", vmin=low, vmax=0)  # one colour scale for every head
    ax.set_title(f"head {h}, slope 1/{round(1 / slopes[h])}")  # 4 heads: slopes 2^-2, 2^-4, 2^-6, 2^-8
    ax.set_xlabel("key position j")
    ax.set_xticks(range(0, T, max(1, T // 8)))  # integer positions
    ax.set_yticks(range(0, T, max(1, T // 8)))
axes[0].set_ylabel("query position i")
fig.colorbar(image, ax=axes, label="bias added to the score: slope * (j - i)", shrink=0.9)
fig.suptitle("ALiBi: steep slopes look near, shallow slopes look far")
save(fig, CHAPTER, "alibi_bias")
