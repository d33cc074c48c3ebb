"""Serving: many requests through one model (chapter 12).

    scheduler    waiting queue, running set, static / dynamic / continuous batching, preemption
    engine       the scheduler and the model, step by step, offline and in a background thread
    speculative  speculative decoding: the exact acceptance rule, n-gram and model drafts
    simulate     a cost model of one step, calibrated from measured steps, driving the same scheduler
    server       an OpenAI-compatible HTTP endpoint (optional extra: pip install tinytransformer[serve])
    cli          the `tinytransformer serve` command
"""
