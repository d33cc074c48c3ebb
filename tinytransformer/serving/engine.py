"""The engine: a scheduler and the one model, stepping many requests through a paged cache.

Each step is three moves:

    plan = scheduler.schedule(now)        which requests, how many tokens each (see `scheduler`);
                                          the scheduler allocates the blocks they need
    run the model on the plan             one forward over all the step's tokens, packed in one
                                          row: a request's whole prompt (prefill), a chunk of it,
                                          or its one latest token (decode); sample where a request
                                          completed its pending tokens, with its own generator
    scheduler.update(plan, sampled, now)  append the tokens; finished requests free their blocks

The model is `model.TinyTransformer` and nothing else: its forward takes the
paged cache's packed view (`PagedKVCache.packed_view`) as its cache, which only
writes into the blocks the scheduler allocated. Offline serving is `Engine.generate`:
give it all the prompts, step until none is left; `generate_batch` is that with
the static policy, every prompt in one batch (ragged prompts decoded together).
Online serving (`serving.server`) runs the same `step` in a background thread and
adds and aborts requests between steps (`BackgroundEngine`).

    >>> from tinytransformer.generation import generate
    >>> from tinytransformer.model import TinyTransformer, TransformerConfig
    >>> model = TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=32))
    >>> engine = Engine(model, n_blocks=6, block_size=4, max_seqs=2)
    >>> outputs = engine.generate([[1, 2, 3], [4, 5], [6]], max_tokens=4)
    >>> outputs == [generate(model, p, 4) for p in ([1, 2, 3], [4, 5], [6])]
    True
    >>> engine.cache.n_free_blocks           # every request finished and gave its blocks back
    6

The packing (`paged_cache.PackedBatch`) is vLLM's: its model runner flattens all of a
step's tokens into one ragged batch too. Unlike vLLM, attention still runs once per
group of sequences bringing the same number of tokens (every decode in one call, each
prefill alone) rather than in one variable-length kernel.

Does not handle: CUDA graphs, sampling penalties, logprobs.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinytransformer import sampling
from tinytransformer._validate import nonnegative_int, positive_int
from tinytransformer.generation import check_new_tokens, check_prompt
from tinytransformer.serving.scheduler import Plan, Request, Scheduler

__all__ = ["Engine", "StepResult", "StepRecord", "BackgroundEngine", "EngineFailed", "run_plan",
           "generate_batch"]


class EngineFailed(RuntimeError):
    """The BackgroundEngine's thread failed (an exception in a step); it takes no more requests."""

    def __init__(self, error: BaseException):
        super().__init__(f"the engine failed ({type(error).__name__}: {error}); restart the server")
        self.error = error


@dataclass
class StepResult:
    """What one step did: its plan, the (request, token) pairs it produced, the requests that
    finished, and when it started and how long it took (seconds)."""

    plan: Plan
    emitted: list[tuple[Request, int]] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    start: float = 0.0
    duration: float = 0.0


@dataclass(frozen=True)
class StepRecord:
    """A line of the engine's log, for plots: the batch after the step was planned."""

    start: float
    duration: float
    n_running: int  # requests holding cache blocks (the occupied slots)
    n_waiting: int
    n_scheduled: int  # requests computed in this step
    n_tokens: int  # tokens computed in this step
    n_free_blocks: int
    n_preempted: int


def run_plan(model, cache, plan: Plan) -> dict[Request, int]:
    """Run the model on one step's plan; return the token sampled for every request that
    completed its pending tokens.

    All the step's tokens go through one forward, packed into one row (`PackedBatch`):
    a prefill of n tokens and the single tokens of the decoding requests share every
    weight read. Only the rows that end a request's pending tokens go through the head.
    The blocks must be allocated already (the scheduler does it as it plans the step).
    """
    counts = [n for _, n in plan.items]
    ids = np.array([[t for r, n in plan.items for t in r.tokens[r.n_computed:r.n_computed + n]]])  # [1, N]
    view = cache.packed_view([r.seq_id for r, _ in plan.items], counts)
    hidden = model.hidden_states(ids, view)[0]  # [N, C]
    done = [i for i, (r, n) in enumerate(plan.items) if r.n_computed + n == r.n_tokens]  # the rest: prefill chunks
    logits = model.logits(hidden[view.row_ends[done]])  # [B', V]
    sampled = {}
    for row, i in enumerate(done):
        request = plan.items[i][0]
        sampled[request] = sampling.sample_next(logits[row], temperature=request.temperature, top_k=request.top_k,
                                                top_p=request.top_p, rng=request.rng)
    return sampled


class Engine:
    """The scheduler and the model, one step at a time.

    model: a TinyTransformer (for speed, on the BLAS fast path: load_model's is; build
    your own with fast_linear=True). n_blocks, block_size: the paged cache (by default
    enough blocks for max_seqs sequences of the full context). policy, max_seqs,
    max_tokens_per_step, max_wait: the scheduler's (see `Scheduler`).
    clock: the time source for arrival and token times (seconds).
    timer: what measures a step's duration (wall time by default; time.process_time
    counts only this process's CPU time, steadier on a shared machine).
    record: keep a StepRecord per step in .history (for plots).
    """

    def __init__(self, model, *, n_blocks: int | None = None, block_size: int = 16, policy: str = "continuous",
                 max_seqs: int = 8, max_tokens_per_step: int = 256, max_wait: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, timer: Callable[[], float] = time.perf_counter,
                 record: bool = False):
        self.model = model
        block_size = positive_int(block_size, "block_size")
        max_seqs = positive_int(max_seqs, "max_seqs")
        if n_blocks is None:
            n_blocks = max_seqs * -(-model.config.max_seq_len // block_size)
        self.cache = model.new_paged_cache(n_blocks, block_size)
        self.scheduler = Scheduler(self.cache.blocks, policy=policy, max_seqs=max_seqs,
                                   max_tokens_per_step=max_tokens_per_step, max_wait=max_wait,
                                   max_seq_len=model.config.max_seq_len)
        self.clock, self.timer = clock, timer
        self.record = record
        self.history: list[StepRecord] = []

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add_request(self, prompt_ids, max_tokens: int, **options) -> Request:
        """Queue a request; returns it (its .output grows as the engine steps). Options as in make_request."""
        return self.scheduler.add(self.make_request(prompt_ids, max_tokens, **options))

    def make_request(self, prompt_ids, max_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                     top_p: float | None = None, seed=None, stop_at_eos: bool = True, arrival: float | None = None,
                     request_id=None) -> Request:
        """A checked Request for this engine's model (not queued yet)."""
        prompt = check_prompt(prompt_ids, self.model.config.vocab_size)  # ids in [0, V)
        sampling.check_options(temperature, top_k, top_p)
        extra = {} if request_id is None else {"request_id": request_id}
        return Request(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, eos_id=self.model.config.eos_id if stop_at_eos else None,
                       arrival=self.clock() if arrival is None else arrival, **extra)

    def abort(self, request: Request) -> bool:
        """Stop a request now and free its blocks (False if it had already finished)."""
        return self.scheduler.abort(request)

    def step(self, now: float | None = None) -> StepResult:
        """Plan, run, record one step. now: the time it starts (default: the clock)."""
        start = self.clock() if now is None else now
        plan = self.scheduler.schedule(start)
        if not plan:
            return StepResult(plan, start=start)
        sampled, duration = self._execute(plan)
        end = start + duration
        if self.record:
            s = self.scheduler
            self.history.append(StepRecord(start, duration, len(s.running), len(s.waiting), len(plan.items),
                                           plan.n_tokens, s.blocks.n_free_blocks, len(plan.preempted)))
        finished = self.scheduler.update(plan, sampled, end)
        emitted = [(r, r.output[-1]) for r, _ in plan.items if r in sampled and r.output]
        return StepResult(plan, emitted, finished, start, duration)

    def _execute(self, plan: Plan) -> tuple[dict[Request, int], float]:
        """Run the plan; (sampled tokens, seconds it took)."""
        start = self.timer()
        sampled = run_plan(self.model, self.cache, plan)
        return sampled, self.timer() - start

    def generate(self, prompts, max_tokens: int, **options) -> list[list[int]]:
        """Offline serving: every prompt's new ids, with the options of `add_request`."""
        requests = [self.add_request(p, max_tokens, **options) for p in prompts]
        while self.has_work:
            result = self.step()
            if not result.plan and result.plan.wait_until is not None:  # dynamic batching waits
                time.sleep(max(0.0, result.plan.wait_until - self.clock()))
        return [r.output for r in requests]


def generate_batch(model, prompts, max_new_tokens: int, *, block_size: int = 16,
                   on_step: Callable | None = None, **options) -> list[list[int]]:
    """New ids for several prompts of different lengths, decoded together: the Engine with the static policy.

    One step prefills every prompt (packed in one forward); then every step decodes all
    unfinished sequences as one batch (one matrix product per weight for the whole batch).
    A sequence stops at its own end-of-sequence id or limit and returns its blocks to the
    pool at once. Each prompt samples with its own generator seeded by `seed`, so
    result[i] equals generation.generate(model, prompts[i], ...) with the same options
    (those of Engine.add_request). The paged cache is just large enough; on_step(cache)
    is called after every step (to watch the memory).
    """
    prompts = [check_prompt(p, model.config.vocab_size, name=f"prompts[{i}]") for i, p in enumerate(prompts)]
    max_new_tokens = nonnegative_int(max_new_tokens, "max_new_tokens")
    for i, p in enumerate(prompts):
        check_new_tokens(max_new_tokens, len(p), model.config.max_seq_len, name=f"prompts[{i}]")
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    block_size = positive_int(block_size, "block_size")
    engine = Engine(model, n_blocks=sum(-(-(len(p) + max_new_tokens) // block_size) for p in prompts),
                    block_size=block_size, policy="static", max_seqs=len(prompts),
                    max_tokens_per_step=sum(len(p) for p in prompts))  # every prefill in the first step
    requests = [engine.add_request(p, max_new_tokens, **options) for p in prompts]
    while engine.has_work:
        engine.step()
        if on_step is not None:
            on_step(engine.cache)
    return [r.output for r in requests]


class BackgroundEngine:
    """An Engine stepping in its own thread, for a server: requests are added and aborted from
    other threads between steps; each request's listener is called from the engine thread.

        listener(request, token)   for each new token
        listener(request, None)    once, when the request has finished (see request.finish_reason)

    .finished holds the last 1,000 finished requests (for monitoring and tests).

    If a step raises, the engine has failed for good: .error holds the exception (its traceback
    is logged once), every request it held or is given later finishes at once with
    finish_reason "error", and submit() raises EngineFailed, so no client waits on a dead thread.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._listeners: dict[Request, Callable] = {}
        self._stopped = False
        self.finished: collections.deque[Request] = collections.deque(maxlen=1000)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="tinytransformer-engine", daemon=True)
        self._thread.start()

    def submit(self, listener: Callable, prompt_ids, max_tokens: int, **options) -> Request:
        """Check and queue a request (ValueError if it is bad); it starts at the next step."""
        # Checked here, in the caller's thread, so that bad input raises there; only the engine
        # thread touches the scheduler's queues.
        if self.error is not None:
            raise EngineFailed(self.error)
        request = self.engine.make_request(prompt_ids, max_tokens, **options)
        self.engine.scheduler.check(request)
        self._commands.put(("add", request, listener))
        self._wake.set()
        return request

    def abort(self, request: Request) -> None:
        """Ask the engine to stop a request and free its blocks (at the next step boundary)."""
        self._commands.put(("abort", request, None))
        self._wake.set()

    def call(self, function: Callable):
        """Run function(engine) in the engine thread, between steps, and return its result."""
        done = threading.Event()
        box = []
        self._commands.put(("call", (function, box, done), None))
        self._wake.set()
        if not done.wait(timeout=30):
            raise TimeoutError("the engine thread did not answer within 30 s")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        engine = self.engine
        try:
            while not self._stopped:
                self._run_commands()
                if not engine.has_work:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                result = engine.step()
                if not result.plan:
                    if result.plan.wait_until is not None:
                        self._wake.wait(max(0.0, result.plan.wait_until - engine.clock()))
                        self._wake.clear()
                    continue
                for request, token in result.emitted:
                    self._listeners[request](request, token)
                for request in result.finished:
                    self.finished.append(request)
                    self._listeners.pop(request)(request, None)
        except Exception as e:  # report to every waiting client rather than hang them
            logging.getLogger(__name__).exception("the engine failed; every request from now on gets an error")
            self.error = e
            self._fail_all()
            while not self._stopped:  # failed: keep answering commands (new requests end at once)
                self._wake.wait()
                self._wake.clear()
                self._run_commands()
                self._fail_all()

    def _fail_all(self) -> None:
        for request, listener in list(self._listeners.items()):
            request.finish_reason = "error"
            self._listeners.pop(request)
            listener(request, None)

    def _run_commands(self) -> None:
        while True:
            try:
                kind, item, listener = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                if self.error is None:
                    self.engine.scheduler.add(item)
                self._listeners[item] = listener
            elif kind == "abort":
                if self.error is None and self.engine.abort(item):
                    self.finished.append(item)
                    self._listeners.pop(item)(item, None)
            else:
                function, box, done = item
                try:
                    box.append(function(self.engine))
                except BaseException as e:
                    box.append(e)
                done.set()
