# %% [markdown]
# # Chapter 12: Serving — batching, paged memory, speculative decoding
# How a server runs one model for many users: a scheduler that fills batch slots as they free
# (continuous batching) over a paged KV cache, what happens when the cache runs out (preemption),
# how latency and throughput move with load, a cost model that predicts them, and speculative
# decoding, which spends spare compute to emit several tokens per forward without changing a token.
# Modules: `tinytransformer/serving/` (scheduler, engine, simulate, speculative, server).
# Run: `python chapters/12_serving.py [--quick]` (a small random model; seconds in quick mode).

# %%
import time

import numpy as np
from _lecture import QUICK, heading, plt, save

from tinytransformer import sampling
from tinytransformer.generation import generate
from tinytransformer.model import TinyTransformer, TransformerConfig, init_params
from tinytransformer.serving.engine import Engine
from tinytransformer.serving.scheduler import Request
from tinytransformer.serving.simulate import (CostModel, SimulatedEngine, measure_steps, poisson_arrivals, replay,
                                              skewed_workload, summarize)
from tinytransformer.serving.speculative import (ModelDraft, SpeculationStats, exact_distribution, layer_draft,
                                                 speculative_generate, speculative_stream)
from tinytransformer.threads import blas_description, blas_threads

CHAPTER = "12_serving"
CLOCK = time.process_time  # CPU seconds of this process: steadier than wall time on a shared machine
config = TransformerConfig(vocab_size=96, d_model=32 if QUICK else 64, n_layers=4, n_heads=4,
                           n_kv_heads=2, max_seq_len=160, tie_embeddings=False, name="random decoder")
# attention "sdpa-padded": a paged batch in one padded call; fast_linear: the BLAS fast path (the same logits)
model = TinyTransformer(config, init_params(config, seed=0), attention="sdpa-padded", fast_linear=True)
threads = blas_threads(1)  # small matrices: one BLAS thread is fastest and steadiest
threads.__enter__()
print(f"{config.name}: {model.n_parameters:,} parameters; {blas_description()}; times are CPU seconds")

# %% [markdown]
# ## 1. Static vs continuous batching: who holds the slots
# Requests with skewed output lengths (most short, one in eight long) all arrive at once.
# Static batching admits a batch only into an empty engine, so the slots of finished short
# requests stay empty while a long one runs on; continuous batching refills a slot the step it frees.
# Both run the same scheduler, cache and model: only the admission rule differs.

# %%
n_requests = 16 if QUICK else 48
work = skewed_workload(n_requests, seed=0, vocab_size=config.vocab_size, prompt_lengths=(8, 24), short=(2, 8),
                       long=(48, 64) if QUICK else (96, 128))
MAX_SEQS, BLOCK = 4, 8
n_blocks = MAX_SEQS * -(-max(len(p) + n for p, n in work) // BLOCK)  # the same block budget for both
heading(f"{n_requests} requests, {sum(n for _, n in work)} output tokens, {MAX_SEQS} slots, {n_blocks} blocks")
runs = {}
for policy in ("static", "continuous"):
    engine = Engine(model, n_blocks=n_blocks, block_size=BLOCK, policy=policy, max_seqs=MAX_SEQS, timer=CLOCK,
                    record=True)
    requests = replay(engine, [engine.make_request(p, n, stop_at_eos=False, arrival=0.0) for p, n in work])
    runs[policy] = (engine, requests, summarize(requests))
    s = runs[policy][2]
    print(f"{policy:10s}: {len(engine.history):4d} steps, {s['throughput']:7.0f} tokens/s, TTFT p50 "
          f"{s['ttft_p50'] * 1e3:6.1f} ms, TPOT p50 {s['tpot_p50'] * 1e3:5.2f} ms")
assert [r.output for r in runs["static"][1]] == [r.output for r in runs["continuous"][1]], "same tokens either way"
assert runs["continuous"][2]["throughput"] > runs["static"][2]["throughput"]
assert len(runs["continuous"][0].history) < len(runs["static"][0].history)

fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
for ax, policy in zip(axes, ("static", "continuous")):
    history = runs[policy][0].history
    t = [s.start for s in history] + [history[-1].start + history[-1].duration]
    ax.step(t, [s.n_running for s in history] + [history[-1].n_running], where="post")
    ax.fill_between(t, [s.n_running for s in history] + [history[-1].n_running], step="post", alpha=0.3)
    ax.axhline(MAX_SEQS, color="grey", ls=":", lw=1)
    ax.set_ylabel("occupied slots")
    ax.set_title(f"{policy} batching: {runs[policy][2]['throughput']:.0f} tokens/s", fontsize=10)
axes[-1].set_xlabel("time (CPU seconds)")
save(fig, CHAPTER, "slot_occupancy")

# %% [markdown]
# A step that admits a request computes its whole prompt beside one token of each decoding
# request. The engine packs them into one row of one forward (`PagedKVCache.packed_view`), so the
# weights are read once per step: every projection works row by row, and only positions and
# attention need to know whose row is whose.

# %%
heading("one packed forward: a prefill beside two decodes")
texts = [p for p, _ in work[:3]]
cache = model.new_paged_cache(n_blocks=16, block_size=BLOCK)
a, b, c = (cache.add_sequence() for _ in texts)
for s, t in ((b, texts[1]), (c, texts[2])):  # b and c are decoding: all but their last token is cached
    cache.allocate(s, len(t) - 1)  # blocks first (the scheduler's job); the forward only writes into them
    model.hidden_states(np.array([t[:-1]]), cache.view([s]))
for s, n in ((a, len(texts[0])), (b, 1), (c, 1)):
    cache.allocate(s, n)
view = cache.packed_view([a, b, c], [len(texts[0]), 1, 1])  # a's whole prompt, then b's and c's last token
hidden = model.hidden_states(np.array([texts[0] + [texts[1][-1], texts[2][-1]]]), view)[0]  # [N, C]
alone = [model.hidden_states(np.array([t]))[0, -1] for t in texts]  # each text through its own forward
worst = max(float(np.abs(hidden[row] - h).max()) for row, h in zip(view.row_ends, alone))
print(f"{hidden.shape[0]} rows in one forward ({len(texts[0])} + 1 + 1); the last row of each request against "
      f"its own uncached forward: max |difference| {worst:.1e}")
assert worst < 1e-4, "a packed step gives each request what its own forward gives"

# %% [markdown]
# ## 2. Preemption: when the cache runs out
# Give the engine fewer blocks than the running requests will need. When a running request needs a
# block and none is free, the newest request is preempted: its blocks are freed and it is queued
# again, to recompute its prompt and the tokens it had produced. Its output does not change.

# %%
heading("preemption by recompute")
need = [-(-(len(p) + 24) // BLOCK) for p, _ in work[:8]]  # blocks each of 8 requests holds at its end
tight = max(need) + 2  # every request fits alone, but not MAX_SEQS of them at once
assert tight < sum(sorted(need)[:MAX_SEQS]), "the budget must be too small for a full batch"
engine = Engine(model, n_blocks=tight, block_size=BLOCK, policy="continuous", max_seqs=MAX_SEQS)
outputs = engine.generate([p for p, _ in work[:8]], 24, stop_at_eos=False)
alone = [generate(model, p, 24, stop_at_eos=False) for p, _ in work[:8]]
print(f"{tight} blocks of {BLOCK}: {engine.scheduler.n_preemptions} preemptions; outputs equal to running each alone: "
      f"{outputs == alone}; free blocks at the end: {engine.cache.n_free_blocks}/{tight}")
assert engine.scheduler.n_preemptions > 0 and outputs == alone and engine.cache.n_free_blocks == tight

# %% [markdown]
# ## 3. Throughput and latency against load
# Requests now arrive as a Poisson process. At low load every policy keeps up and latency is the
# work of one request; as the offered load nears what the engine can do, requests queue and the time
# to first token (TTFT) grows. Static batching saturates first; dynamic batching (wait up to
# `max_wait` for a fuller batch) trades a little TTFT at low load for fuller batches.
# Time per output token (TPOT) grows with the batch: more requests share each step.

# %%
capacity = runs["continuous"][2]["throughput"] / np.mean([n for _, n in work])  # requests per second
loads = (0.3, 0.7, 1.2) if QUICK else (0.2, 0.4, 0.6, 0.8, 1.0, 1.3)
heading(f"offered load vs latency (capacity about {capacity:.0f} requests/s of this workload)")
curves = {policy: [] for policy in ("static", "dynamic", "continuous")}
for load in loads:
    arrivals = poisson_arrivals(n_requests, load * capacity, seed=1)
    for policy in curves:
        engine = Engine(model, n_blocks=n_blocks, block_size=BLOCK, policy=policy, max_seqs=MAX_SEQS,
                        max_wait=2.0 / capacity, timer=CLOCK)
        requests = [engine.make_request(p, n, stop_at_eos=False, arrival=float(t)) for (p, n), t in zip(work, arrivals)]
        curves[policy].append(summarize(replay(engine, requests)))
    print(f"load {load:4.2f}: " + "  ".join(f"{policy} TTFT {curves[policy][-1]['ttft_p50'] * 1e3:7.1f} ms"
                                           for policy in curves))
assert curves["continuous"][-1]["ttft_p50"] < curves["static"][-1]["ttft_p50"]

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for policy, rows in curves.items():
    axes[0].plot(loads, [r["throughput"] for r in rows], "o-", label=policy)
    axes[1].plot(loads, [r["ttft_p50"] * 1e3 for r in rows], "o-", label=policy)
    axes[2].plot(loads, [r["tpot_p50"] * 1e3 for r in rows], "o-", label=policy)
for ax, title in zip(axes, ("throughput (tokens/s)", "TTFT p50 (ms)", "TPOT p50 (ms)")):
    ax.set_xlabel("offered load (x capacity)")
    ax.set_title(title, fontsize=10)
axes[0].legend()
save(fig, CHAPTER, "load")

# %% [markdown]
# ## 4. A cost model of one step, driving the same scheduler
# Fit t(step) = c_step + c_group groups + c_seq requests + c_token tokens + c_attend sum(n_i S_i) to
# steps measured on the model, then let `SimulatedEngine` replace the model by it. The scheduler is
# the same code, so the simulation reproduces the measured runs of section 1, and can run what this
# machine cannot (see `python -m tinytransformer.bench serve`).

# %%
heading("cost model: fitted on measured steps, checked against section 1's workload")
X, y = measure_steps(model, batch_sizes=(1, 2, 4), contexts=(16, 64), prefill_lengths=(8, 24), repeats=3, timer=CLOCK)
cost = CostModel.fit(X, y)
print(cost)


def measured_throughput(policy, repeats=2):
    """Section 1's run again, now, right after the calibration (a shared machine's speed drifts)."""
    best = 0.0
    for _ in range(repeats):
        engine = Engine(model, n_blocks=n_blocks, block_size=BLOCK, policy=policy, max_seqs=MAX_SEQS, timer=CLOCK)
        requests = [engine.make_request(p, n, stop_at_eos=False, arrival=0.0) for p, n in work]
        best = max(best, summarize(replay(engine, requests))["throughput"])
    return best


for policy in ("static", "continuous"):
    simulated = SimulatedEngine(cost, n_blocks=n_blocks, block_size=BLOCK, policy=policy, max_seqs=MAX_SEQS)
    predicted = summarize(replay(simulated, [Request(prompt=p, max_tokens=n) for p, n in work]))["throughput"]
    measured = measured_throughput(policy)
    print(f"{policy:10s}: predicted {predicted:7.0f} tokens/s, measured {measured:7.0f} "
          f"({predicted / measured - 1:+.0%})")
    assert 0.5 < predicted / measured < 2.0, "the cost model should land near the measured run"

# %% [markdown]
# ## 5. Speculative decoding is exact
# Accept a drafted token with probability min(1, p/q); at a rejection sample normalise(max(0, p - q)).
# Enumerate every branch of the procedure on a model with a 3-token vocabulary: the distribution of
# the first two emitted tokens equals the target's, to float precision.

# %%
heading("the exact distribution of the first two tokens")
small = TransformerConfig(vocab_size=3, d_model=8, n_layers=2, n_heads=2, max_seq_len=16, tie_embeddings=False)
small_params = init_params(small, seed=1, dtype=np.float64)
small_params["output.weight"] *= 40
target = TinyTransformer(small, small_params)
draft = ModelDraft(TinyTransformer(small, init_params(small, seed=2, dtype=np.float64)))
prompt = [1, 2, 0]


def first_two(randomness):
    out = []
    for emitted in speculative_stream(target, draft, prompt, 4, k=2, temperature=1.0, randomness=randomness,
                                      stop_at_eos=False):
        out += emitted
        if len(out) >= 2:
            return tuple(out[:2])


speculated = exact_distribution(first_two)
p1 = sampling.probabilities(target.forward(np.array(prompt))[-1], temperature=1.0)
worst = 0.0
for (a, b), probability in sorted(speculated.items()):
    p2 = sampling.probabilities(target.forward(np.array(prompt + [a]))[-1], temperature=1.0)
    worst = max(worst, abs(probability - p1[a] * p2[b]))
print(f"{len(speculated)} outcomes; max |P_speculative - P_target| = {worst:.1e}")
assert worst < 1e-12 and len(speculated) == 9

# %% [markdown]
# ## 6. Acceptance and speed-up against the draft length k
# The draft here is the model's own first layer of four with its head (an untrained early exit,
# a quarter of the cost). In a random model the later layers change little, so it agrees with the
# full model almost always; in SmolLM2 an early exit agrees far less often (the benchmark measures
# it). With acceptance rate a per token (and independence), a round emits (1 - a^(k+1)) / (1 - a)
# tokens on average (Leviathan et al.): longer drafts help only while the draft keeps being right,
# and every drafted token costs a draft forward and a row of the verification.

# %%
heading("k vs acceptance, tokens per target forward, and speed-up")
prompt = work[0][0]
n_new = 32 if QUICK else 96
draft_model = layer_draft(model, 1)
start = CLOCK()
plain = generate(model, prompt, n_new, stop_at_eos=False)
plain_time = CLOCK() - start
rows = []
for k in range(1, 7 if QUICK else 9):
    stats = SpeculationStats()
    start = CLOCK()
    out = speculative_generate(model, ModelDraft(draft_model), prompt, n_new, k=k, stop_at_eos=False, stats=stats)
    rows.append((k, stats.acceptance_rate, stats.tokens_per_round, plain_time / (CLOCK() - start)))
    assert out == plain, "greedy speculation gives the target's greedy ids"
    print(f"k = {k}: acceptance {stats.acceptance_rate:5.1%}, {stats.tokens_per_round:4.2f} tokens per target forward, "
          f"speed-up {rows[-1][3]:4.2f}x")
ks, acceptance, per_round, speedup = map(np.array, zip(*rows))
assert (per_round >= 1).all()
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
axes[0].plot(ks, acceptance, "o-", label="acceptance rate")
axes[0].plot(ks, per_round, "s-", label="tokens per target forward")
alpha = float(np.clip(np.mean(acceptance), 1e-6, 1 - 1e-6))
axes[0].plot(ks, (1 - alpha ** (ks + 1)) / (1 - alpha), "k:", label=f"(1 - a^(k+1))/(1 - a), a = {alpha:.2f}")
axes[0].set_xlabel("draft length k")
axes[0].legend(fontsize=8)
axes[1].plot(ks, speedup, "o-")
axes[1].axhline(1, color="grey", lw=0.5)
axes[1].set_xlabel("draft length k")
axes[1].set_title("speed-up over plain greedy decoding (CPU time)", fontsize=10)
save(fig, CHAPTER, "speculative")
threads.__exit__(None, None, None)
