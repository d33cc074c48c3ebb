# %% [markdown]
# # Chapter 1: attention
# The softmax (the textbook one, then one hardened for masks), scaled dot-product
# attention, its masks, and how multi-head attention shares keys and values in GQA and MQA.
# Module: `tinytransformer/attention.py`. Run: `python chapters/01_attention.py [--quick]`

# %%
import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.attention import (
    attention_weights,
    causal_mask,
    masked_softmax,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
    sliding_window_mask,
    softmax,
)

CHAPTER = "01_attention"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The softmax, then one that survives masks
# exp(1000) is inf in float64, so exp(x) / sum exp(x) gives NaN for large logits.
# Subtracting the row maximum first changes nothing mathematically and keeps every exp() <= 1:
# that is `softmax`, three lines. Attention also meets rows whose every key is masked (-inf):
# there max x is -inf too, and -inf - (-inf) is NaN. `masked_softmax` gives such a row zeros,
# takes a boolean mask, and equals `softmax` wherever the input is finite.

# %%
heading("softmax: naive vs max-subtracted, and a fully masked row")
logits = np.array([1000.0, 999.0, 990.0])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(logits) / np.exp(logits).sum()
print("logits          ", logits)
print("naive exp/sum   ", naive)
print("softmax         ", softmax(logits).round(6))
with np.errstate(invalid="ignore"):
    textbook_masked = softmax(np.array([-np.inf, -np.inf]))
fully_masked = masked_softmax(np.array([1.0, 2.0]), mask=np.array([False, False]))
print("fully masked row", textbook_masked, "with softmax,", fully_masked, "with masked_softmax (zeros, never NaN)")
assert np.isnan(naive).all() and np.isfinite(softmax(logits)).all() and np.isclose(softmax(logits).sum(), 1)
assert np.isnan(textbook_masked).all() and (fully_masked == 0).all()
assert (masked_softmax(logits) == softmax(logits)).all()  # the same function on finite input

# %% [markdown]
# ## 2. Attention weights and the three masks
# Every row of P = softmax(q k^T / sqrt(D)) is a distribution over the keys.

# %%
heading("attention weights")
T = S = 6 if QUICK else 10
D = 8
q = rng.standard_normal((1, 1, T, D))
k = rng.standard_normal((1, 1, S, D))
v = rng.standard_normal((1, 1, S, D))
masks = {
    "no mask": None,
    "causal": causal_mask(T, S),
    "sliding window w=3": sliding_window_mask(T, S, 3),
    "key padding (length 4)": padding_mask(np.array([4]), S),
}
fig, axes = plt.subplots(1, len(masks), figsize=(4 * len(masks), 3.6), layout="constrained")
for ax, (name, mask) in zip(axes, masks.items()):
    p = attention_weights(q, k, mask=mask)[0, 0]  # [T, S]
    print(f"{name:24s} row sums: {p.sum(-1).round(6)}")
    assert np.allclose(p.sum(-1), 1), f"{name}: every row of the attention matrix is a distribution"
    image = ax.imshow(p, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(name)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_xticks(range(S))
    ax.set_yticks(range(T))
fig.colorbar(image, ax=axes, label="attention weight P[i, j]", shrink=0.9)
save(fig, CHAPTER, "attention_masks")

# %% [markdown]
# ## 3. Causality, checked
# With a causal mask, output t depends on tokens <= t only. Change the future and watch.

# %%
heading("causal: changing the future does not change the past")
out = scaled_dot_product_attention(q, k, v, causal=True)
k2, v2 = k.copy(), v.copy()
k2[:, :, T // 2:] += 5.0
v2[:, :, T // 2:] -= 5.0
out2 = scaled_dot_product_attention(q, k2, v2, causal=True)
changed = np.abs(out2 - out).max(-1)[0, 0]
print(f"keys and values from position {T // 2} on were changed")
print("max |change| per query position:", changed.round(6), f"(zero before position {T // 2})")
assert (changed[:T // 2] == 0).all(), "a causal output must not depend on later tokens"
assert (changed[T // 2:] > 0).all(), "outputs from the changed position on do see the change"

# %% [markdown]
# ## 4. Multi-head, grouped-query and multi-query attention
# Hq query heads, Hkv key/value heads; query head h reads KV head h // (Hq / Hkv).
# GQA computes exactly what MHA computes on repeated K/V, without making the copies.

# %%
heading("MHA, GQA, MQA")
Hq = 8
for Hkv in (8, 2, 1):
    qh = rng.standard_normal((1, Hq, T, D))
    kh = rng.standard_normal((1, Hkv, S, D))
    vh = rng.standard_normal((1, Hkv, S, D))
    shared = scaled_dot_product_attention(qh, kh, vh, causal=True)
    copied = scaled_dot_product_attention(qh, repeat_kv(kh, Hq // Hkv), repeat_kv(vh, Hq // Hkv), causal=True)
    name = {8: "MHA", 2: "GQA", 1: "MQA"}[Hkv]
    difference = np.abs(shared - copied).max()
    print(f"{name}: Hq={Hq} Hkv={Hkv}  K/V floats per token = {2 * Hkv * D:4d}   "
          f"max |shared - repeated| = {difference:.1e}")
    assert difference < 1e-12, "sharing a KV head computes what copying it computes"

# Each panel: the query heads on top, the KV heads below, a line from each query head to the KV head it reads.
fig, axes = plt.subplots(3, 1, figsize=(7, 6), layout="constrained")
colors = plt.get_cmap("tab10").colors
for ax, (Hkv, name) in zip(axes, ((8, "MHA"), (2, "GQA"), (1, "MQA"))):
    group = Hq // Hkv
    kv_x = [g * group + (group - 1) / 2 for g in range(Hkv)]  # each KV head sits under the middle of its group
    for h in range(Hq):
        ax.plot([h, kv_x[h // group]], [1, 0], color=colors[h // group], lw=1.5, zorder=1)
    ax.scatter(range(Hq), [1] * Hq, s=260, marker="s", color=[colors[h // group] for h in range(Hq)], zorder=2)
    ax.scatter(kv_x, [0] * Hkv, s=320, marker="o", color=colors[:Hkv], edgecolor="black", zorder=2)
    for h in range(Hq):
        ax.annotate(f"q{h}", (h, 1), ha="center", va="center", fontsize=7, color="white", zorder=3)
    for g, x in enumerate(kv_x):
        ax.annotate(f"kv{g}", (x, 0), ha="center", va="center", fontsize=7, color="white", zorder=3)
    ax.set_title(f"{name}: Hq = {Hq} query heads read Hkv = {Hkv} KV head{'s' if Hkv > 1 else ''} "
                 f"(groups of {group})", fontsize=10)
    ax.set_xlim(-0.7, Hq - 0.3)
    ax.set_ylim(-0.4, 1.4)
    ax.set_yticks([0, 1], ["KV head", "query head"])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
fig.suptitle("query head h reads KV head h // (Hq / Hkv)")
save(fig, CHAPTER, "gqa_head_mapping")
