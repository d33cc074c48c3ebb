"""Laws of the scheduler and the engine (chapter 12): batching never changes a request's tokens,
preemption included; the block pool is conserved; the policies admit when they say they do."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from strategies.basics import seeds
from strategies.serving import serving_models, serving_prompts
from tinytransformer.generation import generate
from tinytransformer.paged_cache import BlockManager
from tinytransformer.serving.engine import Engine
from tinytransformer.serving.scheduler import POLICIES, RUNNING, WAITING, Plan, Request, Scheduler
from tinytransformer.serving.simulate import CostModel, SimulatedEngine, replay


@settings(max_examples=max(20, settings.default.max_examples // 2))  # each example runs every request twice
@given(model=serving_models(), policy=st.sampled_from(POLICIES),
       max_tokens=st.integers(1, 6), block_size=st.integers(1, 5), max_seqs=st.integers(1, 4),
       budget=st.integers(1, 12), temperature=st.sampled_from([0.0, 1.0]), seed=seeds(), data=st.data())
def test_every_policy_gives_each_request_its_output_run_alone_with_preemption_forced(
        model, policy, max_tokens, block_size, max_seqs, budget, temperature, seed, data):
    prompts = data.draw(serving_prompts(model.config.vocab_size, max_prompts=4))
    longest = max(len(p) for p in prompts) + max_tokens
    n_blocks = -(-longest // block_size) + data.draw(st.integers(0, 3))  # as few as one request needs
    engine = Engine(model, n_blocks=n_blocks, block_size=block_size, policy=policy, max_seqs=max_seqs,
                    max_tokens_per_step=budget)
    requests = [engine.add_request(p, max_tokens, temperature=temperature, seed=seed + i)
                for i, p in enumerate(prompts)]
    forced = 0
    while engine.has_work:
        running = engine.scheduler.running
        if running and data.draw(st.booleans(), label="preempt one now"):
            engine.scheduler.preempt(running[data.draw(st.integers(0, len(running) - 1))])
            forced += 1
        engine.step(now=float("inf"))  # dynamic batching's deadline has passed
    for i, (request, prompt) in enumerate(zip(requests, prompts)):
        alone = generate(model, prompt, max_tokens, temperature=temperature, seed=seed + i)
        assert request.output == alone, f"request {i} (preempted {request.n_preemptions} times)"
    assert engine.cache.n_free_blocks == n_blocks


def test_preemption_happens_when_blocks_run_out_and_the_outputs_still_match():
    model = _model()
    prompts = [[1, 2, 3, 4], [5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    engine = Engine(model, n_blocks=6, block_size=2, max_seqs=4)  # 12 positions for 4 growing sequences
    outputs = engine.generate(prompts, 6, stop_at_eos=False)
    assert engine.scheduler.n_preemptions > 0
    assert outputs == [generate(model, p, 6, stop_at_eos=False) for p in prompts]


def test_each_request_stops_at_its_own_end_of_sequence_and_frees_its_blocks_at_once():
    model = _model(eos_id=3)
    prompts = [[1, 2], [4, 5, 6], [7]]
    alone = [generate(model, p, 10) for p in prompts]
    assert any(out[-1] == 3 and len(out) < 10 for out in alone), "the fixture model should stop early"
    engine = Engine(model, n_blocks=12, block_size=2, max_seqs=3)
    requests = [engine.add_request(p, 10) for p in prompts]
    while engine.has_work:
        result = engine.step()
        for request in result.finished:  # finished this step: no blocks held any more
            assert request.seq_id is None and request.finish_reason in ("stop", "length")
        held = sum(len(engine.cache.block_table(r.seq_id)) for r in engine.scheduler.running)
        assert held + engine.cache.n_free_blocks == 12
    assert [r.output for r in requests] == alone


def test_static_batching_admits_only_into_an_empty_batch_and_continuous_refills_at_once():
    lengths = [2, 9, 2, 2]  # request 0 finishes early; under continuous, request 2 takes its slot
    occupancy = {}
    for policy in ("static", "continuous"):
        engine = SimulatedEngine(CostModel(1e-3, 0, 0, 0, 0), n_blocks=32, block_size=4, policy=policy,
                                 max_seqs=2, record=True)
        requests = replay(engine, [Request(prompt=[0, 1], max_tokens=n) for n in lengths])
        occupancy[policy] = [step.n_running for step in engine.history]
        assert all(len(r.output) == n for r, n in zip(requests, lengths))
    assert occupancy["static"][:10] == [2, 2, 1, 1, 1, 1, 1, 1, 1, 2]  # slot 0 idles until request 1 is done
    assert occupancy["continuous"][:3] == [2, 2, 2]
    assert len(occupancy["continuous"]) < len(occupancy["static"])


def test_dynamic_batching_waits_for_a_full_batch_or_its_deadline():
    blocks = BlockManager(32, 4)
    scheduler = Scheduler(blocks, policy="dynamic", max_seqs=3, max_wait=0.5)
    scheduler.add(Request(prompt=[1], max_tokens=2, arrival=0.0))
    plan = scheduler.schedule(now=0.1)
    assert not plan and plan.wait_until == 0.5  # one request: wait
    assert scheduler.schedule(now=0.5).items  # the deadline has come
    scheduler = Scheduler(BlockManager(32, 4), policy="dynamic", max_seqs=2, max_wait=10.0)
    for _ in range(2):
        scheduler.add(Request(prompt=[1], max_tokens=2, arrival=0.0))
    assert len(scheduler.schedule(now=0.0).items) == 2  # full before the deadline: go


@given(budget=st.integers(1, 10), lengths=st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_a_step_never_computes_more_tokens_than_its_budget_and_decodes_go_first(budget, lengths):
    engine = SimulatedEngine(CostModel(1e-3, 0, 0, 0, 0), n_blocks=64, block_size=4, max_seqs=6,
                             max_tokens_per_step=budget)
    for n in lengths:
        engine.scheduler.add(Request(prompt=list(range(n)), max_tokens=3))
    while engine.has_work:
        result = engine.step(now=0.0)
        assert 0 < result.plan.n_tokens <= budget
        started = [r.n_computed > 0 or r.output for r, _ in result.plan.items]
        assert started == sorted(started, reverse=True)  # requests already running come before admissions


def test_bad_requests_are_refused_with_a_clear_message():
    engine = Engine(_model(), n_blocks=4, block_size=2)
    for call, message in [
        (lambda: engine.add_request("hello", 3), "prompt_ids: expected a sequence of token ids"),
        (lambda: engine.add_request([1, 99], 3), r"prompt_ids: expected a non-empty sequence of integer token ids in "
                                                 r"\[0, 16\)"),
        (lambda: engine.add_request([1], 0), "max_tokens: expected an integer >= 1"),
        (lambda: engine.add_request([1] * 8, 4), "exceed the whole cache"),
        (lambda: engine.add_request([1] * 20, 20), "exceed the context length"),
        (lambda: engine.add_request([1], 2, temperature=-1), "temperature: expected a finite number >= 0"),
        (lambda: Scheduler(BlockManager(2, 2), policy="fifo"), "policy: expected one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


# --- the block pool is conserved: a state machine over arrivals, steps, finishes, preemptions, aborts ---


class BlockPoolMachine(RuleBasedStateMachine):
    """Drives a scheduler (through the simulated engine, which extends blocks as the model's
    forward does) with arrivals, steps, forced preemptions and client disconnects."""

    @initialize(n_blocks=st.integers(4, 24), block_size=st.integers(1, 4), max_seqs=st.integers(1, 5),
                budget=st.integers(1, 16), policy=st.sampled_from(POLICIES))
    def start(self, n_blocks, block_size, max_seqs, budget, policy):
        self.engine = SimulatedEngine(CostModel(1e-3, 0, 0, 0, 0), n_blocks=n_blocks, block_size=block_size,
                                      policy=policy, max_seqs=max_seqs, max_tokens_per_step=budget)
        self.requests: list[Request] = []
        self.now = 0.0

    @property
    def scheduler(self):
        return self.engine.scheduler

    @rule(prompt_len=st.integers(1, 12), max_tokens=st.integers(1, 10))
    def arrive(self, prompt_len, max_tokens):
        blocks = self.scheduler.blocks
        if prompt_len + max_tokens > blocks.n_blocks * blocks.block_size:
            with pytest.raises(ValueError, match="exceed the whole cache"):
                self.scheduler.add(Request(prompt=[0] * prompt_len, max_tokens=max_tokens))
            return
        self.requests.append(self.scheduler.add(Request(prompt=[0] * prompt_len, max_tokens=max_tokens,
                                                        arrival=self.now)))

    @precondition(lambda self: self.scheduler.has_work)
    @rule()
    def step(self):
        self.now += 1.0
        result = self.engine.step(now=self.now)
        assert result.plan or not self.scheduler.running, "a step with running requests must do some work"

    @precondition(lambda self: self.scheduler.running)
    @rule(data=st.data())
    def preempt(self, data):
        running = self.scheduler.running
        self.scheduler.preempt(running[data.draw(st.integers(0, len(running) - 1))])

    @precondition(lambda self: any(not r.finished for r in self.requests))
    @rule(data=st.data())
    def disconnect(self, data):
        live = [r for r in self.requests if not r.finished]
        request = live[data.draw(st.integers(0, len(live) - 1))]
        assert self.scheduler.abort(request)
        assert request.finish_reason == "abort" and request.seq_id is None

    @invariant()
    def free_plus_owned_is_all_and_no_block_has_two_owners(self):
        if not hasattr(self, "engine"):
            return
        blocks = self.scheduler.blocks
        owned = [b for s in blocks.sequences() for b in blocks.block_table(s)]
        assert len(owned) == len(set(owned)), "a block has two owners"
        assert len(owned) + blocks.n_free_blocks == blocks.n_blocks
        assert set(owned).isdisjoint(blocks._free) and set(owned) | set(blocks._free) == set(range(blocks.n_blocks))

    @invariant()
    def exactly_the_running_requests_own_sequences(self):
        if not hasattr(self, "engine"):
            return
        s = self.scheduler
        assert sorted(r.seq_id for r in s.running) == sorted(s.blocks.sequences())
        assert len(s.running) <= s.max_seqs
        for r in s.running:
            assert r.status == RUNNING and s.blocks.length(r.seq_id) == r.n_computed
        for r in s.waiting:
            assert r.status == WAITING and r.seq_id is None and r.n_computed == 0
        for r in self.requests:
            assert r.finished == (r not in s.running and r not in s.waiting)
            assert len(r.output) <= r.max_tokens


TestBlockPoolIsConserved = BlockPoolMachine.TestCase
TestBlockPoolIsConserved.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


def test_a_plan_is_false_when_empty():
    assert not Plan() and Plan(items=[(Request(prompt=[1], max_tokens=1), 1)])


def _model(eos_id=None):
    from tinytransformer.model import TinyTransformer, TransformerConfig, init_params

    config = TransformerConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2, max_seq_len=32, eos_id=eos_id,
                               tie_embeddings=False)
    params = init_params(config, seed=0, dtype=np.float64)
    for name in ("token_embd.weight", "output.weight"):  # sharp logits, varied outputs: some reach id 3
        params[name] *= 50
    return TinyTransformer(config, params)
