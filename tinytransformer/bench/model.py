"""Benchmark: our NumPy SmolLM2-135M-Instruct next to Hugging Face transformers, same CPU threads.

    python -m tinytransformer.bench model                 # prefill 512, decode 128 (cache), 32 (no cache)
    python -m tinytransformer.bench model --threads 2     # pin both libraries to 2 threads (default 1)
    python -m tinytransformer.bench model --quick         # small sizes, to check that it runs

Both models read the same GGUF file and run in float32. Before timing, the run
checks that both produce the same greedy tokens. Measured, in one run, wall time:

    prefill   forward over a P-token prompt into an empty KV cache, logits of the last position
    decode    tokens/s generating N tokens greedily with the KV cache (8-token prompt, prefill included)
    no cache  tokens/s generating M tokens recomputing the whole sequence each step
    batched   ours only: serving.engine.generate_batch over 8 ragged prompts (20 to 400 tokens) through
              the paged cache, decode-phase tokens/s against single-sequence decode-phase tokens/s, with
              each of three attention implementations over the paged batch: "sdpa" (the
              reference: one attention call per sequence), "sdpa-padded" (one call for the
              padded batch) and "sdpa-inlined" (the reference with the attention inlined); and the
              paged cache's reserved-but-empty bytes next to a contiguous cache sized for the longest

Each timing is the best of --repeats runs, alternating ours and theirs run by run. transformers needs torch, transformers,
gguf (pip install -e ".[parity]"); with --no-hf only our numbers are printed.
--json PATH also writes the numbers (to a temporary file, then renamed).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from tinytransformer.bench.common import write_report
from tinytransformer.generation import generate, stream
from tinytransformer.llama import default_model_path, load_model
from tinytransformer.model import TinyTransformer
from tinytransformer.serving.engine import generate_batch
from tinytransformer.threads import blas_description, blas_threads


def _prompt(tokenizer, n: int) -> list[int]:
    from tinytransformer.corpus import load_corpus

    ids = tokenizer.encode(load_corpus()[: 8 * n])
    if len(ids) < n:
        raise ValueError(f"the corpus gave only {len(ids)} tokens, fewer than the {n} asked for")
    return ids[:n]


def _our_tasks(model, prompt, short, args) -> dict:
    def prefill():
        cache = model.new_cache(1, len(prompt) + 1)
        model.logits(model.hidden_states(prompt, cache)[-1:])

    return {"prefill": prefill,
            "decode": lambda: generate(model, short, args.new_tokens, stop_at_eos=False),
            "no_cache": lambda: generate(model, short, args.no_cache_tokens, stop_at_eos=False, use_cache=False)}


def _hf_tasks(path, prompt, short, args, expected: list[int]) -> tuple[dict, str]:
    import torch
    import transformers

    torch.set_num_threads(args.threads)  # torch's own thread pool: threadpoolctl's BLAS limit does not reach it
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    long_ids, short_ids = torch.tensor([prompt]), torch.tensor([short])
    mask = torch.ones_like(short_ids)

    def generate(n, use_cache=True):
        with torch.inference_mode():
            out = model.generate(short_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, use_cache=use_cache)
        return out[0, len(short):].tolist()

    def prefill():
        with torch.inference_mode():
            model(long_ids, use_cache=True, logits_to_keep=1)

    got = generate(len(expected))
    if got != expected:
        raise AssertionError(f"greedy tokens differ before timing: ours {expected}, transformers {got}")
    tasks = {"prefill": prefill, "decode": lambda: generate(args.new_tokens),
             "no_cache": lambda: generate(args.no_cache_tokens, False)}
    return tasks, f"transformers {transformers.__version__}, torch {torch.__version__} " \
                  f"({torch.get_num_threads()} threads)"


def _measure(tasks_by_name: dict[str, dict], args) -> dict[str, dict[str, float]]:
    """Best-of-repeats seconds per task, alternating the libraries run by run, so that a
    change in machine load during the run affects both alike."""
    best = {name: {} for name in tasks_by_name}
    for task in ("prefill", "decode", "no_cache"):
        for _ in range(args.repeats if task != "no_cache" else 1):
            for name, tasks in tasks_by_name.items():
                time.sleep(0.5)  # let the other library's idle BLAS/OpenMP threads stop spinning
                start = time.perf_counter()
                tasks[task]()
                best[name][task] = min(best[name].get(task, float("inf")), time.perf_counter() - start)
    return {name: {"prefill": b["prefill"], "decode": args.new_tokens / b["decode"],
                   "no_cache": args.no_cache_tokens / b["no_cache"]} for name, b in best.items()}


def _decode_phase_rate(run) -> tuple[float, float]:
    """(decode-phase tokens/s, total seconds) of run(mark), where run calls mark() once when its
    prefill is done and returns the number of tokens produced after that point."""
    marks = []
    start = time.perf_counter()
    n = run(lambda: marks.append(time.perf_counter()))
    end = time.perf_counter()
    return n / (end - marks[0]), end - start


BATCH_ATTENTION = ("sdpa", "sdpa-padded", "sdpa-inlined")


def _batched(model, prompt_source, args) -> dict:
    """generate_batch over 8 ragged prompts against one sequence at a time, decode phases compared."""
    lengths = np.linspace(20, 400, 8).astype(int) if not args.quick else np.array([5, 9, 12, 20])
    prompts = [prompt_source[: int(n)] for n in lengths]
    n_new = args.batch_new_tokens
    peak = {}

    def watch(cache):
        used = cache.n_blocks - cache.n_free_blocks
        if used >= peak.get("blocks", -1):
            peak.update(blocks=used, held=sum(cache.length(s) for s in cache.sequences()),
                        block_bytes=cache.block_bytes, block_size=cache.block_size)

    def many(model):
        def run(mark):
            steps = []

            def on_step(cache):
                if not steps:
                    mark()  # the prefills are done
                steps.append(1)
                watch(cache)

            generate_batch(model, prompts, n_new, stop_at_eos=False, on_step=on_step)
            return len(prompts) * (n_new - 1)  # every token after the first comes from a batched decode step
        return run

    def single(mark):
        for i, _ in enumerate(stream(model, prompts[0], n_new, stop_at_eos=False)):
            if i == 0:
                mark()
        return n_new - 1

    def one_at_a_time(mark):  # the same prompts decoded one after another: the same work, unbatched
        decoding = 0.0
        for prompt in prompts:
            for i, _ in enumerate(stream(model, prompt, n_new, stop_at_eos=False)):
                if i == 0:
                    start = time.perf_counter()
            decoding += time.perf_counter() - start
        mark()
        return len(prompts) * (n_new - 1) / decoding

    runs = {"single": single}
    for attention in BATCH_ATTENTION:  # the same weights, another attention over the paged batch
        runs[attention] = many(TinyTransformer(model.config, model.params, attention=attention,
                                               fast_linear=model.fast_linear))
    best = dict.fromkeys([*runs, "one_at_a_time"], 0.0)
    for _ in range(args.repeats):
        for name, run in runs.items():
            time.sleep(0.5)
            best[name] = max(best[name], _decode_phase_rate(run)[0])
        time.sleep(0.5)
        best["one_at_a_time"] = max(best["one_at_a_time"], one_at_a_time(lambda: None))
    contiguous = len(prompts) * (int(lengths.max()) + n_new) * peak["block_bytes"] // peak["block_size"]
    empty = (peak["blocks"] * peak["block_size"] - peak["held"]) * peak["block_bytes"] // peak["block_size"]
    return {"lengths": lengths.tolist(), "new_tokens": n_new, "tokens_per_s": best,
            "paged_peak_bytes": peak["blocks"] * peak["block_bytes"], "paged_empty_bytes": empty,
            "contiguous_bytes": contiguous}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--no-cache-tokens", type=int, default=32)
    parser.add_argument("--batch-new-tokens", type=int, default=32, help="new tokens per prompt, batched run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for both libraries (default 1)")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--no-batch", action="store_true", help="skip the batched (generate_batch) measurement")
    parser.add_argument("--batch-only", action="store_true", help="only the batched measurement")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    args = parser.parse_args(argv)
    if args.batch_only and args.no_batch:
        parser.error("--batch-only and --no-batch: expected at most one of them")
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.no_cache_tokens, args.repeats = 32, 8, 4, 1
        args.batch_new_tokens = 4
    with blas_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    path = default_model_path() if args.model is None else args.model
    from pathlib import Path

    path = Path(path)
    start = time.perf_counter()
    loaded = load_model(path, fast_linear=True)  # the BLAS fast path (column-major matrices, padded rows)
    model, tokenizer = loaded.model, loaded.tokenizer
    print(f"loaded {path.name} in {time.perf_counter() - start:.1f} s ({model.n_parameters / 1e6:.1f}M parameters)")
    prompt = _prompt(tokenizer, args.prompt_tokens)
    short = prompt[:8]
    expected = generate(model, short, 16, stop_at_eos=False)
    if generate(model, short, 16, stop_at_eos=False, use_cache=False) != expected:
        raise AssertionError("cached and uncached greedy tokens differ")
    label = f"NumPy {np.__version__}, BLAS {blas_description()}"
    results = {}
    if not args.batch_only:
        tasks = {"ours (NumPy)": _our_tasks(model, prompt, short, args)}
        if not args.no_hf:
            try:
                tasks["transformers"], hf_label = _hf_tasks(path, prompt, short, args, expected)
                label += "; " + hf_label
            except ImportError as e:
                print(f"transformers skipped: {e}")
        results = _measure(tasks, args)
        rows = list(results.items())
        ours = results["ours (NumPy)"]

        print(f"\nmachine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs; {label}")
        print(f"prefill {args.prompt_tokens} tokens; decode {args.new_tokens} tokens from an 8-token prompt; "
              f"no-cache decode {args.no_cache_tokens} tokens\n")
        print(f"| {'':14} | prefill {args.prompt_tokens} (s) | decode, cache (tok/s) | decode, no cache (tok/s) |")
        print("|---|---|---|---|")
        for name, r in rows:
            print(f"| {name:14} | {r['prefill']:.2f} | {r['decode']:.1f} | {r['no_cache']:.1f} |")
        if len(rows) == 2:
            o, t = ours, rows[1][1]
            print(f"| ours / theirs  | {o['prefill'] / t['prefill']:.2f}x time "
                  f"| {o['decode'] / t['decode']:.2f}x speed | {o['no_cache'] / t['no_cache']:.2f}x speed |")
            print(f"\nprefill speed ours/theirs: {t['prefill'] / o['prefill']:.2f}x (goal >= 0.67); "
                  f"cached decode speed ours/theirs: {o['decode'] / t['decode']:.2f}x (goal >= 1.0)")
    if not args.no_batch:
        if args.batch_only:
            print(f"\nmachine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs; {label}")
        b = _batched(model, _prompt(tokenizer, 400), args)
        print(f"\nbatched decode, ours: {len(b['lengths'])} ragged prompts of {b['lengths']} tokens, "
              f"{b['new_tokens']} new tokens each (decode phase, best of {args.repeats})")
        rate = b["tokens_per_s"]
        print("| | decode tok/s | / one sequence |\n|---|---|---|")
        print(f"| one sequence (the shortest prompt) | {rate['single']:.1f} | 1.00x |")
        print(f"| the {len(b['lengths'])} prompts one at a time | {rate['one_at_a_time']:.1f} "
              f"| {rate['one_at_a_time'] / rate['single']:.2f}x |")
        for attention in BATCH_ATTENTION:
            print(f"| generate_batch, batch {len(b['lengths'])}, attention={attention} | {rate[attention]:.1f} "
                  f"| {rate[attention] / rate['single']:.2f}x (goal >= 3); "
                  f"{rate[attention] / rate['one_at_a_time']:.2f}x the prompts one at a time |")
        print(f"\nKV cache memory (float32): contiguous, sized for the longest sequence: "
              f"{b['contiguous_bytes'] / 2**20:.1f} MiB; paged at its peak: {b['paged_peak_bytes'] / 2**20:.1f} MiB "
              f"allocated, of which {b['paged_empty_bytes'] / 2**20:.2f} MiB reserved but empty")
        results["batched"] = b
    if args.json is not None:
        record = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "libraries": label,
                  "threads": args.threads, "repeats": args.repeats, "prompt_tokens": args.prompt_tokens,
                  "new_tokens": args.new_tokens, "no_cache_tokens": args.no_cache_tokens, "results": results}
        write_report(record, args.json)  # a temporary file, renamed
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
