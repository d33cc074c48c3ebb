"""Scheduling requests onto a paged KV cache: static, dynamic and continuous batching.

A server holds many requests at once and runs the model in steps. Each step,
a scheduler decides which requests take part and how many of their tokens the
model computes; the model then runs those tokens (one forward per step for the
decoding requests, batched), and every request that completed its pending
tokens gets one new token. The scheduler keeps

    waiting   a queue of requests that hold no cache blocks (new, or preempted)
    running   the requests admitted into the cache, in admission order

and, per request, how many of its tokens (prompt + output so far) the cache
already holds, `n_computed`. A request needs len(tokens) - n_computed more
tokens computed: its whole prompt when it is admitted (prefill), then one token
per step (decode). There is no separate prefill phase: a long prompt is split
into chunks that fit the step's token budget (chunked prefill), and the decode
tokens of the running requests are scheduled first, so a long prompt never
stalls them (the scheduler of vLLM's v1 engine works this way).

Admission is by free blocks and by two budgets per step:

    max_seqs             requests in the running set (the batch "slots")
    max_tokens_per_step  tokens computed in one step, prefill and decode together

The three batching policies differ only in *when* waiting requests may enter:

    static       only when the running set is empty: a batch starts together and
                 its slots stay empty as its requests finish, until the last one does
    dynamic      as static, but a batch starts only once max_seqs requests wait or
                 the oldest has waited max_wait seconds (it trades latency for fuller batches)
    continuous   every step: a slot freed by a finished request is refilled at once
                 (Orca, Yu et al. 2022; with paged blocks, vLLM, Kwon et al. 2023)

Every request stops at its own end-of-sequence id or token limit and returns
its blocks at once. When a running request needs a block and none is free, the
most recently admitted request is *preempted*: its blocks are freed, it goes
back to the front of the waiting queue, and when it is admitted again its
prompt and the tokens it had produced are recomputed from scratch (a prefill,
which is cheap per token), after which it goes on where it stopped. vLLM does
the same by default (its v1 engine only recomputes); its older engine could
instead *swap* a preempted request's blocks to CPU memory and copy them back
later, which it used for requests with several sequences sharing blocks
(beam search, parallel sampling).

The scheduler touches no tensors and runs no model: it moves requests between
queues and blocks between owners (a `BlockManager`), and it alone allocates: as it
plans a step it takes the blocks the step's tokens need, so that the model's forward
only writes into them. So the same code drives the real engine (`engine.Engine`)
and the cost-model simulation (`simulate`). A request stops by the rule of every
decode loop (`sampling.stop_reason`): its end-of-sequence id, or max_tokens.

    >>> from tinytransformer.paged_cache import BlockManager
    >>> scheduler = Scheduler(BlockManager(n_blocks=8, block_size=4), max_seqs=2, max_tokens_per_step=16)
    >>> a, b, c = (scheduler.add(Request(prompt=[1, 2, 3], max_tokens=2)) for _ in range(3))
    >>> plan = scheduler.schedule()
    >>> [(r is a, n) for r, n in plan.items], len(scheduler.waiting)   # two slots: a and b prefill 3 tokens each
    ([(True, 3), (False, 3)], 1)

Does not handle: priorities other than first-come first-served, prefix caching
(sharing blocks between requests with a common prompt), swapping to host memory,
several sequences per request (beam search, n > 1), pipeline or tensor parallelism.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from tinytransformer._validate import is_real, positive_int, random_generator
from tinytransformer.paged_cache import BlockManager
from tinytransformer.sampling import stop_reason

__all__ = ["Request", "Plan", "Scheduler", "POLICIES", "WAITING", "RUNNING", "FINISHED"]

POLICIES = ("static", "dynamic", "continuous")
WAITING, RUNNING, FINISHED = "waiting", "running", "finished"
_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One generation request and its progress.

    prompt: token ids; max_tokens: the most new tokens; eos_id: the token that
    ends it (None: only max_tokens does); temperature, top_k, top_p, seed: how
    its tokens are drawn (its own generator, so a request's tokens do not depend
    on its neighbours in the batch); arrival: when it arrived (seconds, any clock).
    """

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    eos_id: int | None = None
    arrival: float = 0.0
    request_id: object = field(default_factory=lambda: next(_ids))
    # progress, kept by the scheduler
    output: list[int] = field(default_factory=list)
    status: str = WAITING
    finish_reason: str | None = None  # "stop" (end-of-sequence id), "length", or "abort"
    seq_id: int | None = None  # its sequence in the block manager while running
    n_computed: int = 0  # tokens whose keys and values the cache holds
    n_preemptions: int = 0
    admitted: float | None = None  # when it first entered the running set
    first_token_time: float | None = None
    finish_time: float | None = None
    token_times: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.prompt = [int(t) for t in self.prompt]
        if not self.prompt:
            raise ValueError("prompt: expected at least one token id, got an empty prompt")
        self.max_tokens = positive_int(self.max_tokens, "max_tokens")
        self.rng = random_generator(self.seed)

    @property
    def tokens(self) -> list[int]:
        """Prompt and output so far: what the cache must hold before the next token."""
        return self.prompt + self.output

    @property
    def n_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def n_pending(self) -> int:
        """Tokens still to compute before this request can produce its next token."""
        return self.n_tokens - self.n_computed

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status}, prompt {len(self.prompt)}, "
                f"output {len(self.output)}/{self.max_tokens}, computed {self.n_computed})")


@dataclass
class Plan:
    """One step: items (request, number of its pending tokens to compute this step), in order,
    and the requests preempted to make room for them."""

    items: list[tuple[Request, int]] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    wait_until: float | None = None  # dynamic batching: nothing to run before this time

    @property
    def n_tokens(self) -> int:
        return sum(n for _, n in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


class Scheduler:
    """Waiting queue, running set, and the admission rule of one batching policy.

    blocks: the BlockManager of the cache (the scheduler adds sequences, allocates their
    blocks before each step and frees them; the model's forward only writes into them).
    policy: "static", "dynamic" or "continuous"; max_seqs: slots in the batch;
    max_tokens_per_step: the token budget of one step; max_wait: how long dynamic
    batching lets the oldest request wait for a full batch (seconds);
    max_seq_len: the model's context length (a request must fit in it).
    """

    def __init__(self, blocks: BlockManager, *, policy: str = "continuous", max_seqs: int = 8,
                 max_tokens_per_step: int = 256, max_wait: float = 0.0, max_seq_len: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if not isinstance(blocks, BlockManager):
            raise ValueError(f"blocks: expected a BlockManager, got {type(blocks).__name__}")
        if not is_real(max_wait) or not max_wait >= 0:
            raise ValueError(f"max_wait: expected a number of seconds >= 0, got {max_wait!r}")
        self.blocks = blocks
        self.policy = policy
        self.max_seqs = positive_int(max_seqs, "max_seqs")
        self.max_tokens_per_step = positive_int(max_tokens_per_step, "max_tokens_per_step")
        self.max_wait = float(max_wait)
        self.max_seq_len = None if max_seq_len is None else positive_int(max_seq_len, "max_seq_len")
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.n_preemptions = 0

    # --- requests in and out -------------------------------------------------------------

    def add(self, request: Request) -> Request:
        """Queue a request (see `check`)."""
        self.waiting.append(self.check(request))
        return request

    def check(self, request: Request) -> Request:
        """ValueError unless request is new and fits, alone, in the context and the whole block pool."""
        if not isinstance(request, Request) or request.status != WAITING or request.output:
            raise ValueError(f"request: expected a new Request, got {request!r}")
        longest = len(request.prompt) + request.max_tokens
        if self.max_seq_len is not None and longest > self.max_seq_len:
            raise ValueError(f"max_tokens: {len(request.prompt)} prompt + {request.max_tokens} new tokens exceed the "
                             f"context length max_seq_len={self.max_seq_len}")
        capacity = self.blocks.n_blocks * self.blocks.block_size
        if longest > capacity:
            raise ValueError(f"max_tokens: {len(request.prompt)} prompt + {request.max_tokens} new tokens exceed the "
                             f"whole cache ({self.blocks.n_blocks} blocks of {self.blocks.block_size} = {capacity} "
                             "positions)")
        return request

    def abort(self, request: Request) -> bool:
        """Finish a request now (its client went away), freeing its blocks. False if it had finished."""
        if request.finished:
            return False
        if request.status == WAITING:
            self.waiting.remove(request)
        else:
            self._release(request)
            self.running.remove(request)
        request.status, request.finish_reason = FINISHED, "abort"
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step ------------------------------------------------------------------------

    def schedule(self, now: float = 0.0) -> Plan:
        """Choose this step's work: the running requests first (decode, or the next chunk of a
        prefill), preempting the newest when blocks run out, then admissions by the policy.
        Every planned request gets its blocks now (BlockManager.allocate)."""
        plan = Plan()
        budget = self.max_tokens_per_step
        for request in list(self.running):
            if request.status != RUNNING:  # preempted earlier in this loop
                continue
            n = min(request.n_pending, budget)
            if n == 0:
                break
            need = self.blocks.blocks_needed(request.seq_id, n)
            while need > self.blocks.n_free_blocks and request.status == RUNNING:
                victim = self.running[-1]  # the newest admitted (never one planned already): preempted
                self.preempt(victim)
                plan.preempted.append(victim)
            if request.status != RUNNING:
                continue
            self.blocks.allocate(request.seq_id, n)
            plan.items.append((request, n))
            budget -= n
        if plan.preempted or not self._may_admit(now, plan):
            return plan
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            request = self.waiting[0]
            n = min(request.n_pending, budget)
            if -(-n // self.blocks.block_size) > self.blocks.n_free_blocks:
                break
            self.waiting.popleft()
            request.seq_id = self.blocks.add_sequence()
            self.blocks.allocate(request.seq_id, n)
            request.status = RUNNING
            if request.admitted is None:
                request.admitted = now
            self.running.append(request)
            plan.items.append((request, n))
            budget -= n
        return plan

    def update(self, plan: Plan, sampled: dict, now: float = 0.0) -> list[Request]:
        """Record a step: every item's tokens are now computed; each request that completed its
        pending tokens gets its sampled token (sampled[request]). Returns the requests that
        finished (end-of-sequence id or max_tokens); their blocks are free again."""
        finished = []
        for request, n in plan.items:
            if request.status != RUNNING:  # aborted while the step ran
                continue
            request.n_computed += n
            if request.n_pending:  # a chunk of a prefill: no token yet
                continue
            token = int(sampled[request])
            request.output.append(token)
            request.token_times.append(now)
            if request.first_token_time is None:
                request.first_token_time = now
            reason = stop_reason(request.output, request.max_tokens, request.eos_id)
            if reason:
                self._release(request)
                self.running.remove(request)
                request.status, request.finish_reason, request.finish_time = FINISHED, reason, now
                finished.append(request)
        return finished

    # --- policies and preemption ---------------------------------------------------------------

    def _may_admit(self, now: float, plan: Plan) -> bool:
        if self.policy == "continuous" or not self.waiting:
            return True
        if self.running:  # static and dynamic: a batch runs until its last request finishes
            return False
        if self.policy == "static":
            return True
        deadline = self.waiting[0].arrival + self.max_wait
        if len(self.waiting) >= self.max_seqs or now >= deadline:
            return True
        plan.wait_until = deadline
        return False

    def preempt(self, request: Request) -> None:
        """Free a running request's blocks and queue it first again; it will recompute its tokens."""
        if request.status != RUNNING or request not in self.running:
            raise ValueError(f"request: expected a running request, got {request!r}")
        self._release(request)
        self.running.remove(request)
        request.status, request.n_computed = WAITING, 0
        request.n_preemptions += 1
        self.n_preemptions += 1
        self.waiting.appendleft(request)

    def _release(self, request: Request) -> None:
        self.blocks.free(request.seq_id)
        request.seq_id = None

    def __repr__(self) -> str:
        return (f"Scheduler({self.policy}, {len(self.running)}/{self.max_seqs} running, {len(self.waiting)} waiting, "
                f"{self.blocks.n_free_blocks}/{self.blocks.n_blocks} blocks free)")
