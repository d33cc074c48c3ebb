# %% [markdown]
# # Chapter 4: flash attention
# Exact attention without the [T, S] score matrix: tiles and the online softmax.
# Module: `tinytransformer/flash.py`. Run: `python chapters/04_flash_attention.py [--quick]`

# %%
import numpy as np
from _lecture import QUICK, heading, plt, save
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

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
direct = np.log(np.exp(scores).sum())
print(f"online log-sum-exp m + log l = {m + np.log(l):.6f}; direct: {direct:.6f}")
assert np.isclose(m + np.log(l), direct), "the online softmax ends with the exact log-sum-exp"

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
    error = np.abs(out - reference).max()
    print(f"Br={block_q:3d} Bc={block_k:3d}: max |flash - reference| = {error:.1e}")
    assert error < 1e-12, "flash attention is exact: float64 rounding is the only difference"

# %% [markdown]
# ## 3. Inside one query tile: the running state after each key tile
# With causal masking, key tiles wholly in the future are never visited.

# %%
heading("per-tile state of query tile 2")
block = 8
states = list(flash_attention_states(q, k, v, causal=True, block_q=block, block_k=block))
tile2 = [s for s in states if s.i == 2]
for s in tile2:
    print(f"after key tile {s.j} (keys {s.cols[0]}..{s.cols[1] - 1}): m[row 0] = {s.m[0, 0, 0]:+.3f}, "
          f"l[row 0] = {s.l[0, 0, 0]:.3f}")
m_seen = np.array([s.m[0, 0] for s in tile2])  # [key tiles, Br]
assert (np.diff(m_seen, axis=0) >= 0).all(), "the running max never decreases"
n_q, n_k = -(-T // block), -(-S // block)
visited = np.zeros((n_q, n_k), dtype=bool)
for s in states:
    visited[s.i, s.j] = True
print(f"visited {int(visited.sum())} of {n_q * n_k} tiles (causal skips the rest)")
# Query tile i (rows up to min((i + 1) * Br, T) - 1) needs key tiles up to the one holding that last row.
needed = sum(-(-min((i + 1) * block, T) // block) for i in range(n_q))
assert visited.sum() == needed, f"causal flash should visit {needed} tiles, visited {visited.sum()}"
scores = q[0, 0] @ k[0, 0].T / np.sqrt(q.shape[-1])  # head 0: [T, D] @ [D, S] -> [T, S]
scores[np.triu_indices(T, 1)] = -np.inf  # causal (T == S here)
exact_lse = np.log(np.exp(scores).sum(-1))  # [T]
final = tile2[-1]
r0, r1 = final.rows
assert np.allclose(final.m[0, 0] + np.log(final.l[0, 0]), exact_lse[r0:r1]), "after the last tile, m + log l is exact"

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained", width_ratios=(1, 1.5))
tile_colors = ("#e8e8e8", "tab:green")  # skipped, computed
axes[0].imshow(visited, cmap=ListedColormap(tile_colors), vmin=0, vmax=1)
axes[0].set_title(f"tiles of {block} x {block}, causal")
axes[0].set_xlabel("key tile j")
axes[0].set_ylabel("query tile i")
axes[0].set_xticks(range(0, n_k, max(1, n_k // 8)))  # integer tile numbers
axes[0].set_yticks(range(0, n_q, max(1, n_q // 8)))
axes[0].set_xticks(np.arange(n_k + 1) - 0.5, minor=True)  # white lines between tiles
axes[0].set_yticks(np.arange(n_q + 1) - 0.5, minor=True)
axes[0].grid(which="minor", color="white", linewidth=1.5)
axes[0].tick_params(which="minor", length=0)
axes[0].legend(handles=[Patch(color=tile_colors[1], label="computed"),
                        Patch(color=tile_colors[0], label="skipped: wholly in the future")],
               loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9)
rows = range(min(3, block))
for row, color in zip(rows, ("tab:blue", "tab:orange", "tab:purple")):
    key_tiles = [s.j for s in tile2]
    axes[1].plot(key_tiles, [s.m[0, 0, row] for s in tile2], "o-", color=color)
    axes[1].plot(key_tiles, [s.m[0, 0, row] + np.log(s.l[0, 0, row]) for s in tile2], "x--", color=color)
    axes[1].plot([], [], "s", color=color, label=f"query row {2 * block + row}")
axes[1].plot([], [], "o-", color="black", label="m: running max")
axes[1].plot([], [], "x--", color="black", label="m + log l: running log-sum-exp")
axes[1].set_xlabel("key tiles processed (j)")
axes[1].set_xticks([s.j for s in tile2])
axes[1].set_ylabel("score units")
axes[1].set_title("query tile 2: running statistics after each key tile")
axes[1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5))
save(fig, CHAPTER, "tiles_and_state")
