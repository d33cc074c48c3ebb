"""Part 2 of `python -m tinytransformer.bench serve`: speculative decoding on SmolLM2.

2. prompt lookup (`run_speculative`): ours with and without `PromptLookupDraft`, and
   transformers' generate() with and without prompt_lookup_num_tokens, at each k of -k,
   same prompts (`copy_prompts`), same threads; transformers' model also in a bare greedy
   loop (`hf_greedy_loop`); then the parts of a speed-up timed apart (`step_costs`).
2b. a model draft (`run_model_draft`): the target's own first n layers as the draft.

The options, the timing rules and what is reported are described in `serve`'s docstring.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from tinytransformer.bench.common import timed
from tinytransformer.generation import generate


def copy_prompts(loaded) -> dict[str, str]:
    """Chat prompts: two whose answers copy a code block from the prompt, one that copies nothing."""
    from tinytransformer.chat import chat_prompt
    from tinytransformer.sampling import filter_top_k

    code = inspect.getsource(filter_top_k).strip()
    asks = {"repeat code": f"Repeat this Python function exactly, in a code block:\n\n```python\n{code}\n```",
            "rename variable": "Rewrite this Python function with the variable `keep` renamed to `kept`. "
                               f"Answer with the code only.\n\n```python\n{code}\n```",
            "poem (no copy)": "Write a short poem about the sea."}
    system = None
    if "tokenizer.chat_template" in loaded.metadata:
        from tinytransformer.chat import default_system_prompt

        system = default_system_prompt(loaded.metadata)
    return {name: chat_prompt([{"role": "user", "content": text}], default_system=system)
            for name, text in asks.items()}


def _hf_model(path):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    return model, f"transformers {transformers.__version__}, torch {torch.__version__}"


def run_speculative(loaded, args) -> dict:
    from tinytransformer.serving.speculative import PromptLookupDraft, SpeculationStats, speculative_generate

    model = loaded.model
    if not loaded.has_tokenizer:  # --quick: random ids that repeat
        rng = np.random.default_rng(0)
        block = rng.integers(0, model.config.vocab_size, 24).tolist()
        prompts = {"repeat": block * 3, "random": rng.integers(0, model.config.vocab_size, 72).tolist()}
    else:
        prompts = {name: loaded.tokenizer.encode(text) for name, text in copy_prompts(loaded).items()}
    hf = None
    if not args.no_hf and not args.quick:
        try:
            from pathlib import Path

            from tinytransformer.llama import default_model_path

            hf, label = _hf_model(Path(args.model or default_model_path()))
            print(f"  competitor: {label}", flush=True)
        except ImportError as e:
            print(f"  transformers skipped: {e}", flush=True)
    n, rows = args.new_tokens, {}
    for name, ids in prompts.items():
        stats = {k: SpeculationStats() for k in args.k}

        def ours_lookup(k):
            stats[k].__init__()  # counts of the last run only
            draft = PromptLookupDraft(model.config.vocab_size, max_ngram=args.ngram, min_ngram=args.min_ngram)
            return speculative_generate(model, draft, ids, n, k=k, stats=stats[k])

        tasks = {"ours": lambda: generate(model, ids, n)}
        tasks.update({f"ours + lookup k={k}": functools.partial(ours_lookup, k) for k in args.k})
        if hf is not None:
            import torch

            tensor, hf_forwards = torch.tensor([ids]), {}

            def hf_generate(k=None):
                extra = {"prompt_lookup_num_tokens": k, "max_matching_ngram_size": args.ngram} if k else {}
                calls = [0]  # its target forwards, counted by a hook
                hook = hf.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
                try:
                    with torch.inference_mode():
                        out = hf.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=n,
                                          do_sample=False, **extra)
                finally:
                    hook.remove()
                hf_forwards[k] = calls[0]
                return out[0, len(ids):].tolist()

            tasks["transformers"] = hf_generate
            tasks["transformers loop"] = functools.partial(hf_greedy_loop, hf, ids, n)
            tasks.update({f"transformers + lookup k={k}": functools.partial(hf_generate, k) for k in args.k})
        best, best_cpu, outs = {}, {}, {}
        for _ in range(args.repeats):
            for task, fn in tasks.items():  # alternate, so that load changes hit all alike
                outs[task], wall, cpu = timed(fn)
                best[task] = min(best.get(task, float("inf")), wall)
                best_cpu[task] = min(best_cpu.get(task, float("inf")), cpu)
        row = {"tokens": len(outs["ours"]), "seconds": best, "cpu_seconds": best_cpu, "by_k": {}}
        if hf is not None:
            row["transformers_same_ids"] = outs["transformers"] == outs["ours"]
            if outs["transformers loop"] != outs["transformers"]:
                raise AssertionError(f"{name}: transformers' forward loop and its generate() gave different ids")
            # what generate() spends per token outside the model's forwards (a plain decode pays it
            # on every token, a speculative one once per round)
            row["transformers_generate_overhead_ms_per_token"] = \
                (best["transformers"] - best["transformers loop"]) / max(len(outs["transformers"]), 1) * 1e3
        print(f"  {name:16s} {row['tokens']:3d} tokens; without lookup: ours {best['ours']:.2f} s "
              f"({best_cpu['ours']:.2f} s CPU)" + (f", transformers {best['transformers']:.2f} s "
                                                  f"({best_cpu['transformers']:.2f} s CPU), its bare forward loop "
                                                  f"{best['transformers loop']:.2f} s, so generate() adds "
                                                  f"{row['transformers_generate_overhead_ms_per_token']:.1f} ms a token"
                                                  if hf else ""), flush=True)
        for k in args.k:
            ours = f"ours + lookup k={k}"
            if outs[ours] != outs["ours"]:
                raise AssertionError(f"{name}: speculative decoding with k = {k} changed our greedy ids")
            by_k = {"acceptance_rate": stats[k].acceptance_rate, "tokens_per_forward": stats[k].tokens_per_round,
                    "rounds": stats[k].rounds,
                    "speedup_ours": best["ours"] / best[ours], "speedup_ours_cpu": best_cpu["ours"] / best_cpu[ours]}
            line = (f"  {'':16s} k = {k:2d}: ours {best[ours]:.2f} s, {by_k['speedup_ours']:.2f}x "
                    f"({by_k['speedup_ours_cpu']:.2f}x by CPU time)")
            if hf is not None:
                theirs = f"transformers + lookup k={k}"
                by_k["speedup_transformers"] = best["transformers"] / best[theirs]
                by_k["speedup_transformers_cpu"] = best_cpu["transformers"] / best_cpu[theirs]
                by_k["speedup_transformers_vs_loop"] = best["transformers loop"] / best[theirs]
                by_k["transformers_lookup_unchanged"] = outs[theirs] == outs["transformers"]
                by_k["transformers_forwards"] = hf_forwards[k]
                line += (f"; transformers {best[theirs]:.2f} s, {by_k['speedup_transformers']:.2f}x "
                         f"({by_k['speedup_transformers_cpu']:.2f}x; {by_k['speedup_transformers_vs_loop']:.2f}x "
                         "against its bare loop)")
            print(f"{line}; acceptance {by_k['acceptance_rate']:.0%}, {by_k['tokens_per_forward']:.2f} tokens per "
                  f"target forward, {stats[k].rounds} forwards" +
                  (f" (transformers {hf_forwards[k]})" if hf is not None else ""), flush=True)
            row["by_k"][str(k)] = by_k
        for who in ("ours", "transformers") if hf is not None else ("ours",):
            k_best = max(args.k, key=lambda k: row["by_k"][str(k)][f"speedup_{who}"])
            row[f"best_k_{who}"] = k_best
            row[f"best_speedup_{who}"] = row["by_k"][str(k_best)][f"speedup_{who}"]
        print(f"  {'':16s} best: ours {row['best_speedup_ours']:.2f}x (k = {row['best_k_ours']})" +
              (f", transformers {row['best_speedup_transformers']:.2f}x (k = {row['best_k_transformers']})"
               if hf is not None else ""), flush=True)
        row["step_costs"] = step_costs(model, hf, ids, row, args)
        rows[name] = row
    return rows


def step_costs(model, hf, ids: list[int], row: dict, args) -> dict:
    """What a speed-up is made of, timed apart (best of --repeats): P, the prompt's prefill
    (logits of its last row only), and s(m), one forward of m rows after the prompt through
    the cache with the logits of all m rows: s(1) is a plain decoding step, s(k + 1) a
    verification round. A plain decode of n tokens costs about P + (n - 1) s(1); a
    speculative one of R rounds about P + (R - 1) s(k + 1), its first round riding on the
    prefill. The ratio of the two, beside the measured speed-up, shows which part decides it."""
    widths = sorted({1} | {k + 1 for k in args.k if k + 1 < len(ids)})

    def ours_prefill():
        cache = model.new_cache(1, len(ids))
        model.logits(model.hidden_states(np.array([ids]), cache)[0, -1])  # [T, C] -> [V]
        return cache

    def ours_step(cache, m):
        cache.truncate(len(ids) - m)  # the prompt's last m tokens again, as m new rows
        model.logits(model.hidden_states(np.array([ids[-m:]]), cache)[0])  # [m, C] -> [m, V]

    parts = {"ours": (ours_prefill, ours_step)}
    if hf is not None:
        import torch
        import transformers

        tensor = torch.tensor([ids])
        cache_name = _hf_cache_argument(hf)

        def hf_prefill():
            cache = transformers.DynamicCache(config=hf.config)
            with torch.inference_mode():
                hf(tensor, use_cache=True, logits_to_keep=1, **{cache_name: cache})
            return cache

        def hf_step(cache, m):
            cache.crop(-m)  # drop the last m positions
            with torch.inference_mode():
                hf(tensor[:, -m:], use_cache=True, **{cache_name: cache})  # logits of all m rows

        parts["transformers"] = (hf_prefill, hf_step)
    n, costs = row["tokens"], {}
    for who, (prefill, step) in parts.items():
        best = {"prefill": float("inf")} | {m: float("inf") for m in widths}
        for _ in range(args.repeats):
            cache, wall, _cpu = timed(prefill)
            best["prefill"] = min(best["prefill"], wall)
            for m in widths:
                best[m] = min(best[m], timed(lambda: step(cache, m))[1])
        P, d = best["prefill"], best[1]
        costs[who] = {"prefill_s": P, "step_s": {str(m): best[m] for m in widths}, "prefill_over_step": P / d}
        model_speedups = {}
        for k in args.k:
            if k + 1 in best:
                by_k = row["by_k"][str(k)]
                rounds = by_k["rounds"] if who == "ours" else by_k["transformers_forwards"]
                model_speedups[str(k)] = (P + (n - 1) * d) / (P + (rounds - 1) * best[k + 1])
        costs[who]["speedup_from_parts"] = model_speedups
        print(f"  {'':16s} {who}: prefill P {P * 1e3:.0f} ms = {P / d:.1f} steps; step s(m) " +
              ", ".join(f"s({m}) {best[m] * 1e3:.0f} ms" for m in widths) + "; speed-up from these parts " +
              ", ".join(f"k = {k}: {x:.2f}x" for k, x in model_speedups.items()), flush=True)
    return costs


def _hf_cache_argument(hf) -> str:
    """The name of the KV cache argument of transformers' forward: `cache` in 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def hf_greedy_loop(hf, ids: list[int], n: int) -> list[int]:
    """transformers' model decoding greedily in a bare loop: one forward per token through its
    DynamicCache, argmax, stop at its EOS; no generate(). The same forwards as generate() without
    what generate() does around each one."""
    import torch
    import transformers

    eos = hf.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else eos or [])
    cache, step, out = transformers.DynamicCache(config=hf.config), torch.tensor([ids]), []
    cache_name = _hf_cache_argument(hf)
    with torch.inference_mode():
        while len(out) < n:
            logits = hf(step, use_cache=True, logits_to_keep=1, **{cache_name: cache}).logits  # [1, T, V] -> [1, 1, V]
            out.append(int(logits[0, -1].argmax()))
            if out[-1] in eos:
                break
            step = torch.tensor([[out[-1]]])
    return out


def run_model_draft(loaded, args) -> dict:
    """A draft made from the model itself: its first n layers with its norm and head (greedy)."""
    from tinytransformer.serving.speculative import ModelDraft, SpeculationStats, layer_draft, speculative_generate

    model = loaded.model
    if not loaded.has_tokenizer:
        prompts = {"random": np.random.default_rng(0).integers(0, model.config.vocab_size, 40).tolist()}
    else:
        texts = copy_prompts(loaded)
        prompts = {name: loaded.tokenizer.encode(texts[name]) for name in ("repeat code", "poem (no copy)")}
    n, rows = args.new_tokens, {}
    for name, ids in prompts.items():
        plain, plain_time, _ = timed(lambda: generate(model, ids, n))
        for layers in args.draft_layers:
            if layers >= model.config.n_layers:
                continue
            stats = SpeculationStats()
            out, seconds, _ = timed(lambda: speculative_generate(model, ModelDraft(layer_draft(model, layers)), ids,
                                                                 n, k=args.draft_k, stats=stats))
            if out != plain:
                raise AssertionError(f"{name}: speculation with a {layers}-layer draft changed the greedy ids")
            rows[f"{name}, {layers} layers"] = {"acceptance_rate": stats.acceptance_rate,
                                                "tokens_per_forward": stats.tokens_per_round,
                                                "speedup": plain_time / seconds}
            print(f"  {name:16s} first {layers:2d} of {model.config.n_layers} layers, k = {args.draft_k}: acceptance "
                  f"{stats.acceptance_rate:.0%}, {stats.tokens_per_round:.2f} tokens per target forward, speed-up "
                  f"{plain_time / seconds:.2f}x", flush=True)
    return rows
