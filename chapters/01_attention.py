# %% [markdown]
# # Chapter 1: attention
# Softmax done safely, scaled dot-product attention, its masks, and how
# multi-head attention shares keys and values in GQA and MQA.
# Module: `tinytransformer/attention.py`. Run: `python chapters/01_attention.py [--quick]`

# %%
import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer.attention import (
    attention_weights,
    causal_mask,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
    sliding_window_mask,
    softmax,
)

CHAPTER = "01_attention"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A softmax that does not overflow
# exp(1000) is inf in float64, so the textbook formula gives NaN for large logits.
# Subtracting the row maximum first changes nothing mathematically and keeps every exp() <= 1.

# %%
heading("softmax: naive vs max-subtracted")
logits = np.array([1000.0, 999.0, 990.0])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(logits) / np.exp(logits).sum()
print("logits          ", logits)
print("naive exp/sum   ", naive)
print("stable softmax  ", softmax(logits).round(6))
print("fully masked row", softmax(np.array([1.0, 2.0]), mask=np.array([False, False])), "(zeros, never NaN)")

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
fig, axes = plt.subplots(1, len(masks), figsize=(4 * len(masks), 3.6))
for ax, (name, mask) in zip(axes, masks.items()):
    p = attention_weights(q, k, mask=mask)[0, 0]
    print(f"{name:24s} row sums: {p.sum(-1).round(6)}")
    ax.imshow(p, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(name)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
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
    print(f"{name}: Hq={Hq} Hkv={Hkv}  K/V floats per token = {2 * Hkv * D:4d}   "
          f"max |shared - repeated| = {np.abs(shared - copied).max():.1e}")

fig, ax = plt.subplots(figsize=(6, 2.6))
for Hkv, color in ((8, "tab:blue"), (2, "tab:orange"), (1, "tab:green")):
    ax.scatter(range(Hq), [h // (Hq // Hkv) for h in range(Hq)], label=f"Hkv={Hkv}", color=color, s=60)
ax.set_xlabel("query head h")
ax.set_ylabel("KV head read")
ax.set_title("query head -> KV head: h // (Hq / Hkv)")
ax.legend()
save(fig, CHAPTER, "gqa_head_mapping")
