"""Benchmark: every quantisation format on SmolLM2-135M, against llama.cpp's quantisers, and kept quantised.

    python -m tinytransformer.bench quant                     # 4 windows of 128 held-out tokens
    python -m tinytransformer.bench quant --json out.json --figure ppl.png
    python -m tinytransformer.bench quant --quick             # tiny sizes, to check that it runs

The reference is the model as shipped: its own Q4_1 (and Q8_0 embedding)
weights dequantised to float32. Every number below measures re-quantising an
already 4-bit model, not quantising the original 16-bit one. Each method
quantises the seven projections of all 30 blocks; embeddings and norms keep
their values. SmolLM2's rows of 576 are not whole k-quant super-blocks, so
the k-quants store all but ffn_down in llama.cpp's fallback types (Q4_K ->
Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), here and in the llama.cpp comparison. Held-out text: the last 10% of the built-in corpus
(`tinytransformer.corpus`); calibration text for GPTQ and AWQ: its first
windows. Measured in one run:

    table      bits per weight, perplexity, KL(reference || quantised), same-top-token rate
    llama.cpp  Q8_0, Q6_K, Q4_K, Q4_0 quantised by llama.cpp's C code (the libgguf package): bytes
               compared with ours, and perplexity on the same tokens (goal: within 0.5%)
    GPTQ, AWQ  4-bit g128 against round-to-nearest 4-bit g128, in perplexity
    memory     peak resident memory (VmHWM, Linux) of a fresh process that loads the model and decodes
               --new-tokens tokens after a 7-token prompt: float32 against kept-quantised Q4_1/Q8_0
               (goal: at most 40%), and decode tokens/s of each (best of --repeats)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from tinytransformer import gguf
from tinytransformer.bench.common import save_figure, write_report
from tinytransformer.corpus import load_corpus, train_heldout_split
from tinytransformer.llama import load_model
from tinytransformer.metrics import compare, reference_log_probs
from tinytransformer.model import TinyTransformer
from tinytransformer.model_quantization import (METHODS, calibration_statistics, gguf_type_for, projection_names,
                                                quantize_model)
from tinytransformer.threads import blas_description, blas_threads

LLAMA_CPP_TYPES = ("Q8_0", "Q6_K", "Q4_K", "Q4_0")

_MEMORY_PROBE = """
import json, sys, time
from tinytransformer.generation import generate
from tinytransformer.llama import load_model
from tinytransformer.threads import blas_threads
keep, n, repeats = sys.argv[1] == "quantized", int(sys.argv[2]), int(sys.argv[3])
with blas_threads(1):
    loaded = load_model(keep_quantized=keep)
    model = loaded.model
    ids = loaded.tokenizer.encode("The capital city of Korea is")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, ids, n, stop_at_eos=False)
        best = min(best, time.perf_counter() - start)
# VmHWM: this process's peak resident memory. (ru_maxrss would not do: Linux keeps the parent's
# high-water mark across fork and exec, so a child started by a large parent reports the parent's peak.)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": peak_kb / 1024, "tokens_per_s": n / best}))
"""


def windows_of(ids: list[int], n: int, length: int) -> np.ndarray:
    """n consecutive windows [n, length] of token ids."""
    if len(ids) < n * length:
        raise ValueError(f"the text gave {len(ids)} tokens, fewer than {n} windows of {length}")
    return np.asarray(ids[:n * length]).reshape(n, length)


def llama_cpp_model(model: TinyTransformer, name: str) -> tuple[TinyTransformer, bool]:
    """The model with every projection quantised by llama.cpp's C quantiser (libgguf); and whether
    its bytes equal ours for every matrix."""
    import libgguf

    params, identical = dict(model.params), True
    for p in projection_names(model.config):
        w = np.asarray(params[p], np.float32)
        stored = gguf_type_for(name, w.shape[1])  # k-quants fall back where rows are not whole super-blocks
        kind = getattr(gguf, stored)
        theirs = np.asarray(libgguf.quantize_rows(w, getattr(libgguf.GGMLQuantizationType, stored))).reshape(-1)
        identical &= bool(np.array_equal(theirs, gguf.quantize(w, kind)))
        params[p] = gguf.dequantize(theirs, kind, w.shape)
    return TinyTransformer(model.config, params, attention=model.attention), identical


def memory_probe(mode: str, new_tokens: int, repeats: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, mode, str(new_tokens), str(repeats)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"memory probe ({mode}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    if args.memory_only:
        return {"memory": {mode: memory_probe(mode, args.new_tokens, args.repeats) for mode in ("float32", "quantized")}}
    start = time.perf_counter()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    train, heldout = train_heldout_split(load_corpus())
    held = windows_of(tokenizer.encode(heldout), args.windows, args.window_tokens)
    calib = windows_of(tokenizer.encode(train), args.calibration_windows, args.window_tokens)
    print(f"loaded in {time.perf_counter() - start:.1f} s; {held.size} held-out tokens in {len(held)} windows, "
          f"{calib.size} calibration tokens; BLAS {blas_description()}")
    reference = reference_log_probs(model, held)
    base = compare(model, held, reference)
    rows = [dict(method="reference (Q4_1 file, float32)", bits=32.0, perplexity=base.perplexity, kl=0.0,
                 same_top=1.0)]
    statistics = calibration_statistics(model, calib)
    methods = [m for m in METHODS if not args.methods or m in args.methods]
    for method in methods:
        t = time.perf_counter()
        quantized, bits = quantize_model(model, method, statistics, n_grid=args.awq_grid)
        r = compare(quantized, held, reference)
        rows.append(dict(method=method, bits=bits, perplexity=r.perplexity, kl=r.kl, same_top=r.same_top))
        print(f"  {method:<10} {bits:6.3f} bits  ppl {r.perplexity:8.3f}  KL {r.kl:.5f}  same top {r.same_top:.3f}"
              f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    results = {"blas": blas_description(), "tokens": int(held.size - len(held)), "rows": rows,
               "reference_perplexity": base.perplexity}

    llama_cpp = []
    try:
        import libgguf  # noqa: F401
    except ImportError:
        print("llama.cpp comparison skipped: libgguf is not installed (pip install libgguf)")
    else:
        ours = {row["method"]: row for row in rows}
        for name in LLAMA_CPP_TYPES:
            if name not in ours:
                continue
            theirs_model, identical = llama_cpp_model(model, name)
            r = compare(theirs_model, held, reference)
            gap = abs(ours[name]["perplexity"] - r.perplexity) / r.perplexity
            llama_cpp.append(dict(type=name, bytes_identical=identical, ours=ours[name]["perplexity"],
                                  llama_cpp=r.perplexity, relative_gap=gap))
    results["llama_cpp"] = llama_cpp

    by_name = {row["method"]: row["perplexity"] for row in rows}
    if all(m in by_name for m in ("rtn-g128", "gptq-g128", "awq-g128")):
        results["gptq_awq_vs_rtn"] = {m: (by_name[m] - by_name["rtn-g128"]) / by_name["rtn-g128"]
                                      for m in ("gptq-g128", "awq-g128")}
    if not args.no_memory:
        results["memory"] = {mode: memory_probe(mode, args.new_tokens, args.repeats)
                             for mode in ("float32", "quantized")}
    return results


def report(results: dict) -> None:
    if "rows" not in results:
        return _report_memory(results["memory"])
    print(f"\nSmolLM2-135M-Instruct, {results['tokens']} held-out next tokens; BLAS {results['blas']}")
    print("reference = the file's own Q4_1/Q8_0 weights dequantised (re-quantising an already 4-bit model)\n")
    print("| method | bits/weight | perplexity | vs reference | KL (nats/token) | same top token |")
    print("|---|---|---|---|---|---|")
    base = results["reference_perplexity"]
    for row in results["rows"]:
        print(f"| {row['method']} | {row['bits']:.3f} | {row['perplexity']:.3f} | "
              f"{100 * (row['perplexity'] - base) / base:+.2f}% | {row['kl']:.4f} | {100 * row['same_top']:.1f}% |")
    if results["llama_cpp"]:
        print("\n| type | bytes equal to llama.cpp's | our perplexity | llama.cpp's | gap (goal <= 0.5%) |")
        print("|---|---|---|---|---|")
        for row in results["llama_cpp"]:
            print(f"| {row['type']} | {'yes' if row['bytes_identical'] else 'no'} | {row['ours']:.4f} | "
                  f"{row['llama_cpp']:.4f} | {100 * row['relative_gap']:.3f}% |")
    if "gptq_awq_vs_rtn" in results:
        print("\n" + ", ".join(f"{m}: {100 * v:+.2f}% perplexity vs rtn-g128"
                               for m, v in results["gptq_awq_vs_rtn"].items()))
    if "memory" in results:
        _report_memory(results["memory"])


def _report_memory(memory: dict) -> None:
    f, q = memory["float32"], memory["quantized"]
    print(f"\npeak RSS: float32 {f['peak_rss_mb']:.0f} MB, kept quantised {q['peak_rss_mb']:.0f} MB "
          f"({100 * q['peak_rss_mb'] / f['peak_rss_mb']:.0f}%, goal <= 40%); decode tokens/s: "
          f"float32 {f['tokens_per_s']:.2f}, kept quantised {q['tokens_per_s']:.2f}")


def figure(results: dict, path) -> None:
    """Perplexity against bits per weight, one point per method, the reference as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rows = [r for r in results["rows"] if not r["method"].startswith("reference")]
    ax.scatter([r["bits"] for r in rows], [r["perplexity"] for r in rows])
    for r in rows:
        ax.annotate(r["method"], (r["bits"], r["perplexity"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(results["reference_perplexity"], color="grey", linestyle="--", label="reference (the Q4_1 file)")
    ax.set_xlabel("bits per weight (scales and zero points counted)")
    ax.set_ylabel("perplexity on held-out text")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M: re-quantising its projections")
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)
    print(f"[saved {path}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench quant", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--windows", type=int, default=4, help="held-out windows")
    parser.add_argument("--window-tokens", type=int, default=128)
    parser.add_argument("--calibration-windows", type=int, default=2)
    parser.add_argument("--methods", nargs="*", help=f"a subset of {' '.join(METHODS)}")
    parser.add_argument("--awq-grid", type=int, default=20, help="AWQ's number of exponents tried")
    parser.add_argument("--new-tokens", type=int, default=16, help="decoded tokens in the memory probe")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory and decode-speed probes")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--figure", help="save perplexity against bits per weight here (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.window_tokens, args.calibration_windows, args.awq_grid = 1, 32, 1, 4
        args.new_tokens, args.repeats = 2, 1
        args.methods = args.methods or ["Q8_0", "Q4_K", "rtn-g128", "gptq-g128", "awq-g128"]
    with blas_threads(args.threads):
        results = run(args)
    report(results)
    if args.json:
        write_report(results, args.json)
    if args.figure and "rows" in results:
        figure(results, args.figure)
    return 0
