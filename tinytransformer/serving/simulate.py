"""Serving in virtual time: workloads, latency metrics, and a cost model that stands in for the model.

A server's numbers depend on when requests arrive, so a measurement needs a
clock. `replay` runs a workload (requests with arrival times) through an engine
in *virtual* time: requests enter the scheduler when the clock passes their
arrival, each step advances the clock by the step's duration, and an idle
engine jumps to the next arrival. With the real `Engine` the duration is the
measured time of the step; nothing sleeps, so a load of many requests per
second is measured as fast as the machine computes it.

`SimulatedEngine` is the same engine and the same `Scheduler` with the model
replaced by a cost model of one step,

    t(step) = c_step + c_group * groups + c_seq * requests + c_token * tokens + c_attend * sum_i n_i * S_i

(the step is one forward over all its tokens, `engine.run_plan`; groups: the
attention calls per layer, one for each distinct number of new tokens among its
requests, so all the decodes share one and a prefill adds one; requests and tokens:
how many it computes; n_i * S_i: new tokens times the context they attend over).
`CostModel.fit` calibrates the five constants by
least squares (non-negative) from steps measured on the real model
(`measure_steps`). The simulation can then run what this machine cannot hold:
thousands of requests, a cache the size of a GPU's memory.

Assumptions of the simulation, stated: a step costs what the fitted linear
model says (it was fitted on the steps measured, so it extrapolates to larger
batches and contexts linearly, which a real accelerator does not: its step time
stays flat until the batch saturates its compute); each request's output length
is known in advance (as in vLLM's benchmarks with ignore_eos); the scheduler's
own time is free.

    >>> cost = CostModel(step=1e-3, group=0, seq=1e-4, token=1e-5, attend=0)
    >>> engine = SimulatedEngine(cost, n_blocks=64, block_size=16, max_seqs=4)
    >>> done = replay(engine, [Request(prompt=[0] * 8, max_tokens=5, arrival=0.01 * i) for i in range(6)])
    >>> [len(r.output) for r in done], engine.scheduler.blocks.n_free_blocks
    ([5, 5, 5, 5, 5, 5], 64)

Does not handle: network and tokenizer time, the scheduler's own cost, varying
output lengths drawn by the model itself in the simulation, multi-GPU parallelism.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import random_generator
from tinytransformer.paged_cache import BlockManager
from tinytransformer.serving.engine import Engine, run_plan
from tinytransformer.serving.scheduler import Plan, Request, Scheduler

__all__ = ["CostModel", "SimulatedEngine", "replay", "summarize", "step_features", "measure_steps",
           "skewed_workload", "poisson_arrivals", "blocks_in_memory"]

FEATURES = ("step", "group", "seq", "token", "attend")


def step_features(plan: Plan) -> np.ndarray:
    """[1, groups, requests, tokens, sum n_i * S_i] of a plan (before the step runs)."""
    groups = len({n for _, n in plan.items})  # attention calls per layer (PackedBatch.attend)
    tokens = sum(n for _, n in plan.items)
    attend = sum(n * (r.n_computed + n) for r, n in plan.items)
    return np.array([1.0, groups, len(plan.items), tokens, attend])


@dataclass(frozen=True)
class CostModel:
    """Seconds of one step as a linear function of `step_features` (see the module docstring)."""

    step: float
    group: float
    seq: float
    token: float
    attend: float

    def step_time(self, plan: Plan) -> float:
        return float(step_features(plan) @ self.coefficients)

    @property
    def coefficients(self) -> np.ndarray:
        return np.array([self.step, self.group, self.seq, self.token, self.attend])

    @classmethod
    def fit(cls, features, seconds) -> "CostModel":
        """Non-negative least squares: drop a feature whose weight comes out negative, refit."""
        X, y = np.asarray(features, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(FEATURES) or y.shape != (X.shape[0],) or X.shape[0] < 1:
            raise ValueError(f"features, seconds: expected [n, {len(FEATURES)}] and [n], got {X.shape} and {y.shape}")
        active = list(range(len(FEATURES)))
        while True:
            scale = np.maximum(np.abs(X[:, active]).max(axis=0), 1e-30)  # columns span many magnitudes
            w = np.linalg.lstsq(X[:, active] / scale, y, rcond=None)[0] / scale
            if (w >= 0).all() or len(active) == 1:
                break
            active.pop(int(np.argmin(w)))
        coefficients = np.zeros(len(FEATURES))
        coefficients[active] = np.maximum(w, 0)
        return cls(*coefficients.tolist())

    def __str__(self) -> str:
        return (f"t = {self.step * 1e3:.2f} ms + {self.group * 1e3:.2f} ms/group + {self.seq * 1e3:.3f} ms/request "
                f"+ {self.token * 1e3:.3f} ms/token + {self.attend * 1e6:.4f} us/(token x context)")


class SimulatedEngine(Engine):
    """The Engine with the model replaced by a cost model: same scheduler, same step.

    Each step claims the scheduled tokens' positions in the blocks the scheduler
    allocated (what the model's forward does when it writes its keys and values),
    produces token 0 for every request that completed its pending tokens,
    and takes cost.step_time(plan) seconds of virtual time. A request runs until
    its max_tokens (its output length in the workload).
    """

    def __init__(self, cost: CostModel, *, n_blocks: int, block_size: int = 16, policy: str = "continuous",
                 max_seqs: int = 8, max_tokens_per_step: int = 256, max_wait: float = 0.0,
                 max_seq_len: int | None = None, record: bool = False):
        self.model = None
        self.cost = cost
        self.scheduler = Scheduler(BlockManager(n_blocks, block_size), policy=policy, max_seqs=max_seqs,
                                   max_tokens_per_step=max_tokens_per_step, max_wait=max_wait,
                                   max_seq_len=max_seq_len)
        self.clock = self.timer = time.perf_counter
        self.record = record
        self.history = []

    def _execute(self, plan: Plan) -> tuple[dict[Request, int], float]:
        blocks = self.scheduler.blocks
        for request, n in plan.items:
            blocks.claim(request.seq_id, n)
        sampled = {r: 0 for r, n in plan.items if r.n_computed + n == r.n_tokens}
        return sampled, self.cost.step_time(plan)


def replay(engine, requests: list[Request]) -> list[Request]:
    """Run requests (with arrival times, seconds) through engine in virtual time; returns them,
    finished, with their token times on the same clock."""
    pending = deque(sorted(requests, key=lambda r: r.arrival))
    now = pending[0].arrival if pending else 0.0
    while pending or engine.has_work:
        while pending and pending[0].arrival <= now:
            engine.scheduler.add(pending.popleft())
        if not engine.has_work:
            now = pending[0].arrival
            continue
        result = engine.step(now=now)
        if not result.plan:  # dynamic batching holds a partial batch until its deadline
            times = [t for t in (result.plan.wait_until, pending[0].arrival if pending else None) if t is not None]
            now = max(now, min(times))
            continue
        now += result.duration
    return requests


def summarize(requests: list[Request]) -> dict[str, float]:
    """Throughput and latency of finished requests: tokens/s over the whole run, time to first
    token (TTFT, from arrival) and time per output token after the first (TPOT), p50 and p90."""
    done = [r for r in requests if r.first_token_time is not None]
    if not done:
        raise ValueError("requests: expected at least one request that produced a token, got none")
    start = min(r.arrival for r in requests)
    end = max(r.finish_time if r.finish_time is not None else r.token_times[-1] for r in done)
    ttft = np.array([r.first_token_time - r.arrival for r in done])
    tpot = np.array([(r.token_times[-1] - r.first_token_time) / (len(r.output) - 1) for r in done
                     if len(r.output) > 1] or [np.nan])
    tokens = sum(len(r.output) for r in done)
    return {"requests": len(done), "tokens": tokens, "seconds": end - start,
            "throughput": tokens / (end - start) if end > start else float("inf"),
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p90": float(np.percentile(ttft, 90)),
            "tpot_p50": float(np.nanpercentile(tpot, 50)), "tpot_p90": float(np.nanpercentile(tpot, 90)),
            "preemptions": sum(r.n_preemptions for r in requests)}


# --- workloads ---------------------------------------------------------------------------------


def skewed_workload(n: int, *, seed: int = 0, vocab_size: int = 256, prompt_lengths=(16, 48), short=(4, 16),
                    long=(96, 128), long_fraction: float = 0.125, first_id: int = 0) -> list[tuple[list[int], int]]:
    """n (prompt ids, output length) pairs: most outputs short, a few long (every 1/long_fraction-th).

    The long ones are spread evenly through the list, so that any batch of consecutive requests
    holds about the same share of them. Ids are drawn from [first_id, vocab_size)."""
    rng = random_generator(seed)
    every = max(1, round(1 / long_fraction)) if long_fraction > 0 else n + 1
    work = []
    for i in range(n):
        prompt = rng.integers(first_id, vocab_size, size=int(rng.integers(prompt_lengths[0], prompt_lengths[1] + 1)))
        low, high = long if i % every == every // 2 else short
        work.append((prompt.tolist(), int(rng.integers(low, high + 1))))
    return work


def poisson_arrivals(n: int, rate: float, *, seed: int = 0) -> np.ndarray:
    """n arrival times (seconds) of a Poisson process of `rate` requests per second, from 0."""
    if not rate > 0:
        raise ValueError(f"rate: expected requests per second > 0, got {rate!r}")
    gaps = random_generator(seed).exponential(1.0 / rate, size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if n else gaps


def blocks_in_memory(memory_bytes: float, config, *, block_size: int = 16, bytes_per_element: int = 2,
                     weight_bytes: float = 0.0) -> int:
    """How many KV blocks of `config`'s geometry fit in memory_bytes after the weights."""
    from tinytransformer.kv_cache import kv_cache_bytes

    per_block = kv_cache_bytes(config.n_layers, config.kv_heads, config.head_dim, block_size,
                               bytes_per_elem=bytes_per_element)
    return int((memory_bytes - weight_bytes) // per_block)


# --- calibration -------------------------------------------------------------------------------


def measure_steps(model, *, batch_sizes=(1, 2, 4, 8), contexts=(16, 64, 128), prefill_lengths=(8, 32, 64),
                  repeats: int = 2, block_size: int = 16, timer=time.perf_counter) -> tuple[np.ndarray, np.ndarray]:
    """Time real steps (run_plan on the model) of known shape: decode steps of every batch size at
    every context, and prefills alone and beside the largest decode batch (sizes beyond the
    model's context are left out), each the best of `repeats` by `timer`.
    Returns (features [n, 5], best seconds [n]).

    The cache is filled by extending the sequences without computing them: a step's time
    does not depend on the values in the cache. Each step's blocks are allocated before
    it is timed, as the scheduler allocates them before a step."""
    limit = model.config.max_seq_len
    contexts = [c for c in contexts if c < limit]
    prefill_lengths = [n for n in prefill_lengths if 1 < n <= limit]
    longest = max(max(contexts) + 1, max(prefill_lengths))
    cache = model.new_paged_cache((max(batch_sizes) + 1) * -(-longest // block_size) + 1, block_size)
    features, seconds = [], []

    def time_plan(plan):
        best = float("inf")
        for _ in range(repeats):
            for r, n in plan.items:  # the blocks, as the scheduler would allocate them before the step
                cache.allocate(r.seq_id, n)
            start = timer()
            run_plan(model, cache, plan)
            best = min(best, timer() - start)
            for r, _ in plan.items:
                cache.truncate(r.seq_id, r.n_computed)
        features.append(step_features(plan))
        seconds.append(best)

    def sequences(n, context):  # n requests whose cache holds `context` positions (never computed)
        requests = [Request(prompt=[0] * (context + 1), max_tokens=1) for _ in range(n)]
        for r in requests:
            r.seq_id = cache.add_sequence()
            if context:
                cache.extend(r.seq_id, context)
            r.n_computed = context
        return requests

    for context in contexts:
        for batch in batch_sizes:
            plan = Plan(items=[(r, 1) for r in sequences(batch, context)])
            time_plan(plan)
            for r, _ in plan.items:
                cache.free(r.seq_id)
    for length in prefill_lengths:  # a prefill alone, and beside a decode batch (two attention groups)
        for batch in (0, max(batch_sizes)):
            request = Request(prompt=[0] * length, max_tokens=1)
            request.seq_id = cache.add_sequence()
            plan = Plan(items=[(r, 1) for r in sequences(batch, contexts[0])] + [(request, length)])
            time_plan(plan)
            for r, _ in plan.items:
                cache.free(r.seq_id)
    return np.array(features), np.array(seconds)
