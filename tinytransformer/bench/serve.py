"""Benchmark: serving SmolLM2 — continuous vs static batching, prompt-lookup speculative decoding next
to transformers', and the cost-model simulation checked against a measured run.

    python -m tinytransformer.bench serve                    # everything (long on 2 busy cores)
    python -m tinytransformer.bench serve --only batching    # or: speculative, simulate
    python -m tinytransformer.bench serve --quick            # a tiny random model, seconds, to check it runs
    python -m tinytransformer.bench serve --json out.json

Measured in this one run:
1. batching: --requests requests with skewed output lengths (most short, one in eight long;
   EOS ignored so that the lengths are the workload's) through the engine under the static
   and the continuous policy, same model, same block budget, same slots (--max-seqs).
   All requests arrive at once (offline serving); `simulate.replay` runs them in virtual time.
   Reported: output tokens per second, p50 time to first token (TTFT) and time per output
   token (TPOT), preemptions. The run checks that both policies give every request the same ids.
2. speculative: greedy decoding of chat prompts whose answers copy from the prompt (repeat a
   code block, rename a variable in it) and of one that does not (a poem): ours with and
   without the prompt-lookup draft, and transformers' generate with and without
   prompt_lookup_num_tokens, at each draft length k of -k (the same k and n-gram size for
   both), same prompts, same threads. Reported per k: time, speed-up, acceptance rate,
   tokens per target forward; and each one's best k. A second baseline for transformers:
   its model in a bare greedy loop (the same forwards without generate()'s work around
   each), which gives generate()'s cost per token and transformers' speed-up against it.
   Then, for each, the parts a speed-up is made of, timed apart: the prefill,
   a forward of 1 row and of k + 1 rows, and the speed-up they predict.
   The run checks that speculation did not change the ids, nor the bare loop transformers'.
2b. model draft: the same kind of run with the target's own first n layers (and its final norm and
   head) as the draft, for the acceptance rate such a free draft gets.
   (Parts 2 and 2b are in `serve_speculative`.)
3. simulate: a cost model of one step fitted to steps measured here (`simulate.measure_steps`),
   its prediction for workload 1 next to what was measured, then its prediction for
   thousands of requests with a KV cache the size of an 80 GB GPU.

Timing: every time is wall time (time.perf_counter), with --threads BLAS threads and as many
torch threads (default 1), the best of --repeats. Beside it, the CPU time of this process
(time.process_time) over the same span: on a machine shared with other work, wall time also
counts the moments the process waited for a core, CPU time does not (with one thread it is
close to the wall time an idle machine would show). Compare numbers of one run only.

Does not handle: timing on a GPU, HTTP overhead (the engine is timed directly).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

from tinytransformer.bench.common import CLOCK, timed, write_report
from tinytransformer.threads import blas_description, blas_threads


def _load(args):
    """A llama.LoadedModel (--quick: a tiny random model, with no file and no tokenizer), on the BLAS fast path."""
    from tinytransformer.llama import LoadedModel, load_model

    if args.quick:
        from tinytransformer.model import TinyTransformer, TransformerConfig, init_params

        config = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
                                   name="tiny random")
        return LoadedModel(TinyTransformer(config, init_params(config, seed=0), fast_linear=True), None, {})
    return load_model(args.model, fast_linear=True)


def _prompts_from_corpus(loaded, n: int, lengths, seed: int) -> list[list[int]]:
    """n prompts of real text (the built-in corpus), lengths drawn from `lengths` tokens."""
    rng = np.random.default_rng(seed)
    if not loaded.has_tokenizer:
        vocab_size = loaded.model.config.vocab_size
        return [rng.integers(0, vocab_size, int(rng.integers(*lengths) + 1)).tolist() for _ in range(n)]
    from tinytransformer.corpus import load_corpus

    text = load_corpus()
    ids = loaded.tokenizer.encode(text[:200_000])
    out = []
    for _ in range(n):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        start = int(rng.integers(0, len(ids) - length))
        out.append(ids[start:start + length])
    return out


def batching_workload(loaded, args):
    """(prompt ids, output length) pairs: skewed_workload's lengths, prompts of real text."""
    from tinytransformer.serving.simulate import skewed_workload

    lengths = skewed_workload(args.requests, seed=args.seed, vocab_size=loaded.model.config.vocab_size,
                              prompt_lengths=(args.prompt_min, args.prompt_max), short=(args.short_min, args.short_max),
                              long=(args.long_min, args.long_max), long_fraction=args.long_fraction)
    prompts = _prompts_from_corpus(loaded, len(lengths), (args.prompt_min, args.prompt_max), args.seed)
    return [(p, n) for p, (_, n) in zip(prompts, lengths)]


def block_budget(work, args) -> int:
    """Blocks for max_seqs of the workload's longest requests: the same for every policy."""
    longest = max(len(p) + n for p, n in work)
    return args.max_seqs * -(-longest // args.block_size)


def run_batching(loaded, args) -> dict:
    from tinytransformer.serving.engine import Engine
    from tinytransformer.serving.simulate import replay, summarize

    model = loaded.model
    work = batching_workload(loaded, args)
    n_blocks = block_budget(work, args)
    results, outputs = {}, {}
    for _ in range(args.repeats):  # alternate the policies, so that a change of load hits both alike
        for policy in ("static", "continuous"):
            engine = Engine(model, n_blocks=n_blocks, block_size=args.block_size, policy=policy,
                            max_seqs=args.max_seqs, max_tokens_per_step=args.max_tokens_per_step, timer=CLOCK,
                            record=True)
            requests = [engine.make_request(p, n, stop_at_eos=False, arrival=0.0) for p, n in work]
            _, _, cpu = timed(lambda: replay(engine, requests))  # step times (wall) drive the virtual clock
            summary = summarize(requests)
            summary["cpu_seconds"] = cpu
            summary["cpu_throughput"] = summary["tokens"] / cpu
            if policy not in results or summary["throughput"] > results[policy]["throughput"]:
                summary["mean_batch"] = float(np.mean([s.n_scheduled for s in engine.history]))
                summary["steps"] = len(engine.history)
                results[policy] = summary
            outputs[policy] = [r.output for r in requests]
    for policy in ("static", "continuous"):
        best = results[policy]
        print(f"  {policy:10s} {best['throughput']:7.1f} tokens/s  TTFT p50 {best['ttft_p50']:6.2f} s  "
              f"TPOT p50 {best['tpot_p50'] * 1e3:6.1f} ms  {best['steps']} steps, mean batch "
              f"{best['mean_batch']:.1f}, {best['preemptions']} preemptions; CPU time "
              f"{best['cpu_seconds']:.1f} s, {best['cpu_throughput']:.1f} tokens per CPU second", flush=True)
    if outputs["static"] != outputs["continuous"]:
        raise AssertionError("the two policies gave different ids to some request")
    results["speedup"] = results["continuous"]["throughput"] / results["static"]["throughput"]
    results["speedup_cpu"] = results["continuous"]["cpu_throughput"] / results["static"]["cpu_throughput"]
    results["workload"] = {"requests": len(work), "output_tokens": sum(n for _, n in work),
                           "long": sum(1 for _, n in work if n >= args.long_min), "n_blocks": n_blocks,
                           "block_size": args.block_size, "max_seqs": args.max_seqs,
                           "prompt_tokens": sum(len(p) for p, _ in work)}
    print(f"  continuous / static throughput: {results['speedup']:.2f}x (by CPU time {results['speedup_cpu']:.2f}x)",
          flush=True)
    return results


# --- simulation ------------------------------------------------------------------------------------

def run_simulate(loaded, args, measured: dict | None) -> dict:
    from tinytransformer.serving.scheduler import Request
    from tinytransformer.serving.simulate import (CostModel, SimulatedEngine, blocks_in_memory, measure_steps,
                                                  poisson_arrivals, replay, skewed_workload, summarize)

    model = loaded.model
    contexts = (16, 64) if args.quick else (32, 128, 256)
    X, y = measure_steps(model, batch_sizes=(1, 2, 4, 8), contexts=contexts,
                         prefill_lengths=(8, 32) if args.quick else (16, 48, 96), repeats=args.repeats, timer=CLOCK)
    cost = CostModel.fit(X, y)
    print(f"  fitted: {cost}", flush=True)
    residual = float(np.max(np.abs(X @ cost.coefficients - y) / y))
    out = {"cost_model": cost.__dict__, "fit_max_relative_error": residual, "checks": {}}
    if measured:
        work = batching_workload(loaded, args)
        n_blocks = block_budget(work, args)
        for policy in ("static", "continuous"):
            engine = SimulatedEngine(cost, n_blocks=n_blocks, block_size=args.block_size, policy=policy,
                                     max_seqs=args.max_seqs, max_tokens_per_step=args.max_tokens_per_step)
            predicted = summarize(replay(engine, [Request(prompt=p, max_tokens=n) for p, n in work]))
            real = measured[policy]
            error = predicted["throughput"] / real["throughput"] - 1
            out["checks"][policy] = {"predicted": predicted["throughput"], "measured": real["throughput"],
                                     "relative_error": error, "predicted_ttft_p50": predicted["ttft_p50"],
                                     "measured_ttft_p50": real["ttft_p50"]}
            print(f"  {policy:10s} predicted {predicted['throughput']:7.1f} tokens/s, measured "
                  f"{real['throughput']:7.1f} ({error:+.0%}); TTFT p50 predicted {predicted['ttft_p50']:.2f} s, "
                  f"measured {real['ttft_p50']:.2f} s", flush=True)
    # What this machine cannot hold: thousands of requests, a cache the size of an 80 GB GPU
    # (--quick: 100 MB, for a tiny model whose blocks are tiny).
    n, memory = (300, 1e8) if args.quick else (3000, 80e9)
    weights = 2 * model.n_parameters  # fp16 weights
    gpu_blocks = blocks_in_memory(memory, model.config, block_size=16, bytes_per_element=2, weight_bytes=weights)
    out["gpu"] = {"memory_bytes": memory, "n_blocks": gpu_blocks, "requests": n, "rows": []}
    print(f"  {memory / 1e9:g} GB for weights and cache: {gpu_blocks:,} blocks of 16 positions (fp16 K and V); "
          f"{n} requests, Poisson arrivals", flush=True)
    work = skewed_workload(n, seed=1, vocab_size=model.config.vocab_size, prompt_lengths=(32, 256), short=(8, 64),
                           long=(256, 512), long_fraction=0.125)
    capacity = summarize(replay(SimulatedEngine(cost, n_blocks=gpu_blocks, max_seqs=64, max_tokens_per_step=2048),
                                [Request(prompt=p, max_tokens=m) for p, m in work]))["throughput"]
    mean_out = np.mean([m for _, m in work])
    for load in (0.25, 0.5, 0.9, 1.5):
        rate = load * capacity / mean_out  # requests per second
        arrivals = poisson_arrivals(n, rate, seed=2)
        for policy in ("static", "continuous"):
            engine = SimulatedEngine(cost, n_blocks=gpu_blocks, policy=policy, max_seqs=64, max_tokens_per_step=2048)
            s = summarize(replay(engine, [Request(prompt=p, max_tokens=m, arrival=t)
                                          for (p, m), t in zip(work, arrivals)]))
            out["gpu"]["rows"].append({"load": load, "rate": rate, "policy": policy, **s})
            print(f"  load {load:4.2f} ({rate:6.2f} req/s) {policy:10s} {s['throughput']:8.1f} tokens/s, TTFT p50 "
                  f"{s['ttft_p50']:8.2f} s, TPOT p50 {s['tpot_p50'] * 1e3:6.1f} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--only", choices=("batching", "speculative", "model-draft", "simulate"), action="append")
    parser.add_argument("--quick", action="store_true", help="a tiny random model and small sizes")
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads (default 1)")
    parser.add_argument("--attention", default="sdpa-padded",
                        help="the model's attention (default sdpa-padded: a paged batch in one padded call)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-seqs", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-tokens-per-step", type=int, default=512)
    parser.add_argument("--prompt-min", type=int, default=8)
    parser.add_argument("--prompt-max", type=int, default=24)
    parser.add_argument("--short-min", type=int, default=2)
    parser.add_argument("--short-max", type=int, default=8)
    parser.add_argument("--long-min", type=int, default=160)
    parser.add_argument("--long-max", type=int, default=224)
    parser.add_argument("--long-fraction", type=float, default=0.125)
    parser.add_argument("--new-tokens", type=int, default=96, help="speculative: new tokens per prompt")
    parser.add_argument("-k", type=int, nargs="+", default=[4, 7, 10, 15, 23, 31, 47],
                        help="speculative: drafted tokens per round, each measured (default 4 7 10 15 23 31 47)")
    parser.add_argument("--ngram", type=int, default=2, help="speculative: longest n-gram to look up (default 2)")
    parser.add_argument("--min-ngram", type=int, default=None,
                        help="speculative: shortest n-gram our lookup takes (default 2, or 1 if --ngram is 1; "
                             "transformers' takes 1)")
    parser.add_argument("--draft-layers", type=int, nargs="+", default=[8, 16],
                        help="model draft: the target's first n layers (default 8 16)")
    parser.add_argument("--draft-k", type=int, default=4, help="model draft: drafted tokens per round (default 4)")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.long_min, args.long_max, args.new_tokens, args.draft_layers = 16, 40, 60, 24, [1]
    only = set(args.only or ("batching", "speculative", "model-draft", "simulate"))
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    with blas_threads(args.threads):
        loaded = _load(args)
        model = loaded.model
        model.attention = args.attention
        print(f"{model.config.name or 'model'}: {model.n_parameters / 1e6:.1f}M parameters, attention "
              f"{args.attention!r}; {platform.machine()}, {os.cpu_count()} CPUs; NumPy {np.__version__}, "
              f"{blas_description()}; wall time (CPU time of this process beside it)", flush=True)
        results = {"model": model.config.name, "threads": args.threads, "attention": args.attention, "blas": blas_description(),
                   "argv": sys.argv[1:] if argv is None else argv, "clock": "wall (time.perf_counter); CPU beside",
                   "load_average_start": os.getloadavg()}
        print(f"load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in results['load_average_start'])}",
              flush=True)
        if "batching" in only:
            print("\n1. batching: static vs continuous, same blocks and slots", flush=True)
            results["batching"] = run_batching(loaded, args)
        if "speculative" in only or "model-draft" in only:
            from tinytransformer.bench.serve_speculative import run_model_draft, run_speculative  # part 2, apart
        if "speculative" in only:
            from tinytransformer.serving.speculative import PromptLookupDraft

            shortest = PromptLookupDraft(model.config.vocab_size, max_ngram=args.ngram,
                                         min_ngram=args.min_ngram).min_ngram  # its default when None
            print(f"\n2. prompt-lookup speculative decoding, greedy, k in {args.k}, n-gram <= {args.ngram} "
                  f"(ours >= {shortest}, transformers' >= 1)", flush=True)
            results["speculative"] = run_speculative(loaded, args)
        if "model-draft" in only:
            print("\n2b. a model draft made from the target: its first layers and its head", flush=True)
            results["model_draft"] = run_model_draft(loaded, args)
        if "simulate" in only:
            print("\n3. simulation: a cost model calibrated on measured steps", flush=True)
            results["simulate"] = run_simulate(loaded, args, results.get("batching"))
    results["load_average_end"] = os.getloadavg()
    if args.json:
        write_report(results, args.json, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
