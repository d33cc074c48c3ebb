# %% [markdown]
# # Chapter 9: CUDA kernels and the paged KV cache
# How the GPU kernels in `cuda_kernels/` compute what chapters 1 and 4 define, what each
# kernel version spends in shared memory and registers, and why a server pages its KV cache.
# Modules: `tinytransformer/cuda/`, `tinytransformer/paged_cache.py`, `cuda_kernels/*.cu`.
# Run: `python chapters/09_cuda_kernels.py [--quick]` (no GPU needed; the benchmark plot
# appears once `benchmarks/gpu_check.sh` has stored GPU results under benchmarks/results/).

# %%
import json

import matplotlib.colors
import numpy as np
from _lecture import QUICK, ROOT, heading, plt, save

from tinytransformer import cuda
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.flash import flash_attention, flash_attention_states
from tinytransformer.generation import generate
from tinytransformer.kv_cache import kv_cache_bytes
from tinytransformer.paged_attention import paged_decode_attention
from tinytransformer.paged_cache import CacheFullError, PagedKVCache

CHAPTER = "09_cuda_kernels"
rng = np.random.default_rng(0)
ok, why = cuda.cuda_status()
print(f"CUDA backend here: {'yes, ' + why if ok else 'no (' + why + ')'}")

# %% [markdown]
# ## 1. The tiles of kernel v2, walked through in NumPy
# v2 gives each thread block Br = 32 query rows and walks over key tiles of Bc keys
# (32 for D <= 64). The NumPy flash function with the same tile sizes computes the same
# (m, l, O) after every key tile that the kernel holds in registers.

# %%
D = 64
Br, Bc = cuda.V2_BR, cuda.v2_block_k(D)
T = S = 70 if QUICK else 150
q, k, v = (rng.standard_normal((1, 2, n, D)) for n in (T, S, S))
heading(f"v2 tiles: Br = {Br}, Bc = {Bc}, T = S = {T}, causal")
out = flash_attention(q, k, v, causal=True, block_q=Br, block_k=Bc)
states = list(flash_attention_states(q, k, v, causal=True, block_q=Br, block_k=Bc))
n_q, n_k = -(-T // Br), -(-S // Bc)
print(f"grid of the launch: {n_q} query tiles x {2} heads x 1 batch = {n_q * 2} blocks of {cuda.THREADS} threads")
row = 5  # a row of query tile 1
tile1 = [s for s in states if s.i == 1]
for s in tile1:
    print(f"query tile 1, after key tile {s.j} (keys {s.cols[0]:3d}..{s.cols[1] - 1:3d}): "
          f"m = {s.m[0, 0, row]:+.3f}  l = {s.l[0, 0, row]:8.3f}  |O| = {np.linalg.norm(s.o[0, 0, row]):7.3f}")
reference = scaled_dot_product_attention(q, k, v, causal=True)
print(f"max |flash - reference| = {np.abs(out - reference).max():.1e}; tiles visited "
      f"{len(states)} of {n_q * n_k} (causal skips key tiles wholly in a query tile's future)")

# %% [markdown]
# ## 2. The planted bug, in NumPy: drop the rescale
# When a later key tile raises the row max, O must be multiplied by exp(m_old - m_new).
# The test suite builds the kernels with `-DPLANTED_BUG_NO_RESCALE` and checks that the
# same property tests that pass the real kernels fail this one. Here is why they would.

# %%
heading("one row, with and without the rescale")
scores = rng.standard_normal(3 * Bc) * 2
scores[2 * Bc + 3] = 8.0  # a late, large score: the max grows in the last tile
values = rng.standard_normal((3 * Bc, 4))
for rescale in (True, False):
    m, l, o = -np.inf, 0.0, np.zeros(4)
    for j in range(0, 3 * Bc, Bc):
        s_tile = scores[j:j + Bc]
        m_new = max(m, s_tile.max())
        alpha = np.exp(m - m_new)
        p = np.exp(s_tile - m_new)
        l = alpha * l + p.sum()
        o = (alpha * o if rescale else o) + p @ values[j:j + Bc]
        m = m_new
    exact = (np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()) @ values
    print(f"rescale={str(rescale):5s}: max |O/l - softmax(s) V| = {np.abs(o / l - exact).max():.2e}")

# %% [markdown]
# ## 3. Shared memory and registers per kernel version
# From the tile constants (`cuda.kernel_budget`, checked against ptxas's report by
# the compile tests). A block may use 48 KB of static shared memory; an H100 SM has
# 228 KB, so the bytes per block bound how many blocks share an SM.

# %%
heading("budget per kernel version (per block of 128 threads)")
print(f"{'kernel':10s} {'D':>4s} {'Br':>4s} {'Bc':>4s} {'smem bytes':>11s} {'blocks/SM by smem':>18s} "
      f"{'state regs/thread':>18s}")
budget_rows = []
for kernel, dims in (("flash_v1", (64, 128)), ("flash_v2", (64, 128)), ("flash_v3", (64, 128)),
                     ("decode", (64, 128)), ("decode_v3", (64, 128))):
    for d in dims:
        b = cuda.kernel_budget(kernel, d)
        per_sm = 228 * 1024 // b["smem_bytes"] if b["smem_bytes"] else "-"
        budget_rows.append((kernel, d, b))
        print(f"{kernel:10s} {d:4d} {b['rows_per_block']:4d} {str(b['keys_per_tile'] or '-'):>4s} "
              f"{b['smem_bytes']:11,d} {str(per_sm):>18s} {b['state_floats']:18d}")
print("state regs: m, l, the output accumulator and the score/fragment registers each thread keeps;")
print("ptxas adds addresses and temporaries (see docs/09_cuda_kernels.md for its counts).")

# %% [markdown]
# ## 3b. Why decode v2 splits the context (FlashDecoding)
# Decode v1 launches one block per (sequence, KV head, 16 query rows). With one sequence
# and 8 KV heads that is 8 blocks on a GPU with 132 SMs: most of the chip idles while
# each block walks 16,384 keys. v2 cuts the context into splits so that there are about
# `cuda.DECODE_BLOCKS_PER_SM` blocks per SM, then merges the partial results by their
# log-sum-exp.

# %%
heading("decode grid on an H100-sized GPU (132 SMs), Hq = 32, Hkv = 8, one new token")
for batch, context in ((1, 16384), (8, 16384), (64, 2048)):
    blocks_v1 = batch * 8 * -(-4 // cuda.DEC_ROWS)  # G * T = 4 query rows per KV head: one row chunk
    split = cuda.decode_split_len(context, blocks_v1, 132)
    n_splits = -(-context // split)
    busy = min(1.0, blocks_v1 / 132)
    print(f"batch {batch:2d}, context {context:6,d}: v1 {blocks_v1:4d} blocks (at most {busy:6.1%} of the SMs "
          f"busy); v2 {blocks_v1 * n_splits:5d} blocks, {n_splits:2d} split(s) of {split} keys")

# %% [markdown]
# ## 4. Why a server pages its KV cache (the vLLM idea)
# A contiguous cache reserves max_seq_len positions per sequence. Requests are mostly
# short, so most of that reservation is empty, and it is the reservation that decides how
# many sequences fit. A paged cache hands out one block at a time.

# %%
heading("same memory, contiguous reservation against paging")
per_token = kv_cache_bytes(n_layers=30, n_kv_heads=3, head_dim=64, seq_len=1, bytes_per_elem=2)
budget_positions = 16384 if QUICK else 65536
max_seq_len = 2048
print(f"SmolLM2-135M-like model: {per_token:,} bytes of K/V per token (fp16), so a "
      f"{budget_positions * per_token / 2**30:.2f} GiB cache holds {budget_positions:,} positions")
lengths = np.minimum(rng.lognormal(mean=5.5, sigma=0.8, size=10_000).astype(int) + 1, max_seq_len)
print(f"request lengths: median {int(np.median(lengths))}, mean {lengths.mean():.0f}, max {lengths.max()}")
contiguous = budget_positions // max_seq_len
print(f"contiguous, max_seq_len = {max_seq_len}: {contiguous} sequences")
admitted = {}
for block_size in (1, 16, 128):
    cache = PagedKVCache(1, 1, 1, n_blocks=budget_positions // block_size, block_size=block_size)
    n = 0
    try:
        for L in lengths:
            cache.extend(cache.add_sequence(), int(L))
            n += 1
    except CacheFullError:
        pass
    waste = cache.wasted_slots() / (budget_positions - cache.n_free_blocks * block_size)
    admitted[block_size] = n
    print(f"paged, block_size = {block_size:3d}: {n:4d} sequences ({n / contiguous:4.1f}x), "
          f"{waste:5.1%} of allocated slots empty")

# %% [markdown]
# ## 5. Decode over a paged cache equals attention over the contiguous one
# Ragged sequences, appended in interleaved chunks (as a server's steps interleave them),
# so block tables are scattered; GQA with 4 query heads per KV head; 2 new tokens each.

# %%
heading("paged decode == attention on the gathered cache")
Hkv, G, Dh, bs = 2, 4, 16, 4
cache = PagedKVCache(1, Hkv, Dh, n_blocks=64, block_size=bs)
seqs = [cache.add_sequence() for _ in range(3)]
target = {s: L for s, L in zip(seqs, (23, 5, 40))}
while any(cache.length(s) < target[s] for s in seqs):
    for s in seqs:
        n = min(int(rng.integers(1, 6)), target[s] - cache.length(s))
        if n:
            cache.append(s, rng.standard_normal((Hkv, n, Dh)), rng.standard_normal((Hkv, n, Dh)))
tables, context = cache.batch(seqs)
print("block tables (-1 = unused):")
print(tables)
qd = rng.standard_normal((3, Hkv * G, 2, Dh))
out = paged_decode_attention(qd, cache.k_pool[0], cache.v_pool[0], tables, context)
for b, s in enumerate(seqs):
    kb, vb = cache.gather(0, s)
    ref = scaled_dot_product_attention(qd[b:b + 1], kb[None], vb[None], causal=True)
    print(f"sequence {s}: length {context[b]:2d}, {len(cache.block_table(s))} blocks, "
          f"max |paged - contiguous| = {np.abs(out[b] - ref[0]).max():.1e}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
owner = np.full(cache.n_blocks, -1)
for s in seqs:
    owner[cache.block_table(s)] = s
colors = matplotlib.colors.ListedColormap(["whitesmoke", "tab:blue", "tab:orange", "tab:green"])
axes[0].imshow(owner[None, :] + 1, cmap=colors, aspect="auto", vmin=0, vmax=3, interpolation="nearest")
axes[0].set_yticks([])
axes[0].set_xlabel("physical block")
axes[0].set_title("block owners: seq 0 blue, 1 orange, 2 green; free light", fontsize=9)
axes[1].bar(["contiguous"] + [f"bs={b}" for b in admitted], [contiguous] + list(admitted.values()),
            color=["grey"] + ["tab:green"] * len(admitted))
axes[1].set_ylabel("sequences that fit")
axes[1].set_title(f"sequences that fit in {budget_positions:,} positions", fontsize=9)
save(fig, CHAPTER, "paged_cache")

# %% [markdown]
# ## 6. Measured throughput (from benchmarks/results/)
# TFLOP/s against sequence length per version and SDPA; decode GB/s against context.

# %%
heading("benchmark results")
results = [(data["date"], path.name, data) for path in (ROOT / "benchmarks" / "results").glob("attention-*.json")
           for data in [json.loads(path.read_text())] if data.get("backend") == "cuda"]
if not results:
    print("no GPU benchmark results under benchmarks/results/ yet: run `benchmarks/gpu_check.sh`")
    print("on a machine with a CUDA GPU and CuPy; this section then plots the newest file.")
else:
    _, name, data = max(results)
    print(f"{name}: {data['device']}, {data['date']}")
    pre, dec = data["prefill"], data["decode"]

    def tflops(impl, dtype, **where):
        return [r["tflops"] for r in pre if r["impl"] == impl and r["dtype"] == dtype
                and all(r[k] == v for k, v in where.items())]

    # the lessons of the versions, read off the measurements (and held to them)
    v1, v2, v3 = (max(tflops(impl, dtype) or [0.0]) for impl, dtype in
                  (("flash_v1", "float32"), ("flash_v2", "float32"), ("flash_v3", "float16")))
    print(f"best TFLOP/s: v1 (naive) {v1:.2f}, v2 (tiles in shared memory) {v2:.1f}, "
          f"v3 (tensor cores) {v3:.1f}")
    assert v1 < v2 < v3, "each flash version should beat the one before it"
    on, off = tflops("flash_v3", "float16", T=4096, D=128, Hkv=16, causal=True), \
        tflops("flash_v3", "float16", T=4096, D=128, Hkv=16, causal=False)
    if on and off:  # the same TFLOP/s on half the work: masked tiles are skipped, not computed
        speedup = 2 * on[0] / off[0]
        print(f"v3 causal against not causal at T = 4096: {speedup:.2f}x faster (2x is all masked tiles skipped)")
        assert speedup > 1.5
    for B in sorted({r["B"] for r in dec}):
        L = max(r["L"] for r in dec)
        by = {r["impl"]: r for r in dec if r["B"] == B and r["L"] == L}
        if {"decode_v1", "decode_v2"} <= set(by):
            gain = by["decode_v1"]["seconds"] / by["decode_v2"]["seconds"]
            shares = ", ".join(f"{k} reads {r['fraction_of_copy']:.0%} of copy bandwidth"
                               for k, r in sorted(by.items()))
            print(f"decode, B = {B}, context {L:,}: splitting the context (v2) is {gain:.1f}x faster than v1; {shares}")
            assert gain > 2, "with few sequences, v1 leaves most SMs idle and the splits should fill them"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, causal in zip(axes[:2], (False, True)):
        rows = [r for r in data["prefill"] if r["D"] == 128 and r["causal"] == causal and r["Hkv"] == r["Hq"]]
        for impl, dtype in sorted({(r["impl"], r["dtype"]) for r in rows}):
            pts = sorted((r["T"], r["tflops"]) for r in rows if r["impl"] == impl and r["dtype"] == dtype)
            ax.plot(*zip(*pts), "o-", label=f"{impl} {dtype}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # from v1's 0.2 to SDPA's 700: every version visible
        ax.set_xlabel("T = S")
        ax.set_ylabel("TFLOP/s (log)")
        ax.set_title(f"prefill, D = 128, {'causal' if causal else 'not causal'}")
        ax.legend(fontsize=6)
    for impl in sorted({r["impl"] for r in data["decode"]}):
        for B in sorted({r["B"] for r in data["decode"]}):
            pts = sorted((r["L"], r["gbps"]) for r in data["decode"] if r["impl"] == impl and r["B"] == B)
            axes[2].plot(*zip(*pts), "o-", label=f"{impl} B={B}")
    if "copy_gbps" in data:
        axes[2].axhline(data["copy_gbps"], color="grey", ls="--", label="D2D copy (read+write)")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("context length")
    axes[2].set_ylabel("GB/s of K/V read")
    axes[2].set_title("paged decode")
    axes[2].legend(fontsize=6)
    save(fig, CHAPTER, "benchmark")

# %% [markdown]
# ## 7. A ragged batch of real prompts, decoded together through the paged cache
# The one model of chapter 8 (SmolLM2-135M; a tiny random Llama when the file is missing)
# decodes several prompts of different lengths at once: each prompt is prefilled on its
# own, then every step runs all unfinished sequences as one batch, so each weight matrix is
# read once per step for all of them. A sequence that ends returns its blocks at once. The
# same greedy tokens come out as from one `generate` call per prompt. On a GPU the model's
# `attention="cuda"` runs this decode through the paged decode kernel above.

# %%
heading("a ragged batch through the paged cache")
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from tinytransformer.corpus import load_corpus  # noqa: E402
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model  # noqa: E402
from tinytransformer.random_llama import write_random_llama  # noqa: E402
from tinytransformer.serving.engine import generate_batch  # noqa: E402

try:
    loaded = load_model(default_model_path())
except ModelNotFoundError as error:
    print(f"{error}\n-> a tiny random Llama instead (its text is gibberish)")
    scratch = tempfile.TemporaryDirectory()
    loaded = load_model(write_random_llama(Path(scratch.name) / "tiny.gguf", n_layers=2, context_length=1024))
model, tokenizer = loaded.model, loaded.tokenizer
corpus = load_corpus()
texts = ["The capital city of Korea is", "def fibonacci(n):", corpus[:300], "Water boils at", corpus[2000:2900]]
texts = texts[:3] if QUICK else texts
prompts = [tokenizer.encode(t) for t in texts]
n_new = 6 if QUICK else 24
block_size = 16
steps = []  # after the prefills and after each decode step: (sequences live, blocks in use, tokens held)


def record(c):  # called after every step of the engine, with its paged cache
    held = sum(c.length(s) for s in c.sequences())
    steps.append((len(c.sequences()), c.n_blocks - c.n_free_blocks, held))


# the serving engine with the static policy: every prompt prefilled in one step, then decoded together
together = generate_batch(model, prompts, n_new, block_size=block_size, on_step=record)
for prompt, text, new in zip(prompts, texts, together):
    print(f"{len(prompt):4d}-token prompt {text[:28]!r:32} -> {tokenizer.decode(new)[:40]!r}")
alone = [generate(model, p, n_new) for p in prompts]
print(f"the same tokens as {len(prompts)} separate generate calls: {together == alone}")
assert together == alone
if ok:
    on_gpu = generate_batch(load_model(loaded.path, attention="cuda").model, prompts, n_new)
    print(f"through the CUDA paged decode kernel: the same tokens: {on_gpu == together}")
    assert on_gpu == together

block_bytes = model.new_paged_cache(n_blocks=1, block_size=block_size).block_bytes  # K and V, all layers
contiguous_bytes = len(prompts) * max(len(p) + n_new for p in prompts) * block_bytes // block_size
live, used, held = (np.array(column) for column in zip(*steps))
print(f"contiguous cache sized for the longest sequence: {contiguous_bytes / 2**20:.1f} MiB for the whole run")
print(f"paged cache, most in use at once: {used.max() * block_bytes / 2**20:.1f} MiB; reserved but empty at that "
      f"step: {(used.max() * block_size - held[used.argmax()]) * block_bytes / block_size / 2**20:.2f} MiB")
assert used.max() * block_bytes < contiguous_bytes
fig, ax = plt.subplots(figsize=(6.5, 3.5))
x = np.arange(len(steps))
ax.axhline(contiguous_bytes / 2**20, color="grey", ls="--", label="contiguous, sized for the longest")
ax.step(x, used * block_bytes / 2**20, where="post", label="paged: blocks allocated")
ax.step(x, held * block_bytes / block_size / 2**20, where="post", label="paged: positions holding a token")
ax.set_xlabel("step (0 = after the prefills)")
ax.set_ylabel("KV cache (MiB, float32)")
ax.set_title(f"{len(prompts)} ragged prompts, {n_new} new tokens each, block size {block_size}", fontsize=9)
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
save(fig, CHAPTER, "ragged_batch_memory")
