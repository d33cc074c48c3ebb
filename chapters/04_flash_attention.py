# %% [markdown]
# # Chapter 4: flash attention
# Exact attention without the [T, S] score matrix: tiles and the online softmax.
# Module: `tinytransformer/flash.py`. Run: `python chapters/04_flash_attention.py [--quick]`

# %%
import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.flash import flash_attention, flash_attention_states

CHAPTER = "04_flash_attention"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The online softmax on one row
# Read the scores a tile at a time and keep m (max so far) and l (sum of exp(score - m)).
# When the max grows, everything accumulated so far is rescaled by exp(m_old - m_new).

# %%
heading("online softmax on one row of 12 scores, tiles of 4")
scores = rng.standard_normal(12) * 3
m, l = -np.inf, 0.0
for j in range(0, 12, 4):
    tile = scores[j:j + 4]
    m_new = max(m, tile.max())
    l = np.exp(m - m_new) * l + np.exp(tile - m_new).sum()
    print(f"tile {j // 4}: scores {np.round(tile, 2)}  m = {m_new:+.3f}  l = {l:.4f}  (rescaled by {np.exp(m - m_new):.4f})")
    m = m_new
print(f"online log-sum-exp m + log l = {m + np.log(l):.6f}; direct: {np.log(np.exp(scores).sum()):.6f}")

# %% [markdown]
# ## 2. The tiled algorithm equals the reference
# FlashAttention-2's loop order: query tiles outside, key tiles inside.

# %%
heading("flash == reference, for several tile sizes")
T = S = 40 if QUICK else 200
q, k, v = (rng.standard_normal((1, 4, T, 16)) for _ in range(3))
reference = scaled_dot_product_attention(q, k, v, causal=True)
for block_q, block_k in ((16, 16), (7, 13), (64, 32)):
    out = flash_attention(q, k, v, causal=True, block_q=block_q, block_k=block_k)
    print(f"Br={block_q:3d} Bc={block_k:3d}: max |flash - reference| = {np.abs(out - reference).max():.1e}")

# %% [markdown]
# ## 3. Inside one query tile: the running state after each key tile
# With causal masking, key tiles wholly in the future are never visited.

# %%
heading("per-tile state of query tile 2")
block = 8
out = flash_attention(q, k, v, causal=True, block_q=block, block_k=block)
states = list(flash_attention_states(q, k, v, causal=True, block_q=block, block_k=block))
tile2 = [s for s in states if s.i == 2]
for s in tile2:
    print(f"after key tile {s.j} (keys {s.cols[0]}..{s.cols[1] - 1}): m[row 0] = {s.m[0, 0, 0]:+.3f}, "
          f"l[row 0] = {s.l[0, 0, 0]:.3f}")
n_q, n_k = -(-T // block), -(-S // block)
visited = np.zeros((n_q, n_k))
for s in states:
    visited[s.i, s.j] = 1
print(f"visited {int(visited.sum())} of {n_q * n_k} tiles (causal skips the rest)")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].imshow(visited, cmap="Greens", vmin=0, vmax=1.3)
axes[0].set_title("tiles computed (causal)")
axes[0].set_xlabel("key tile j")
axes[0].set_ylabel("query tile i")
for row in range(min(3, block)):
    axes[1].plot([s.j for s in tile2], [s.m[0, 0, row] for s in tile2], "o-", label=f"m, row {row}")
    axes[1].plot([s.j for s in tile2], [np.log(s.l[0, 0, row]) + s.m[0, 0, row] for s in tile2], "x--",
                 label=f"m + log l, row {row}")
axes[1].set_xlabel("key tiles processed")
axes[1].set_title("running max and log-sum-exp, query tile 2")
axes[1].legend(fontsize=7)
save(fig, CHAPTER, "tiles_and_state")
