"""Benchmark attention: the CUDA kernels next to torch SDPA on a GPU, the NumPy references on a CPU.

    python -m tinytransformer.bench attention [--device auto|cuda|cpu] [--json PATH] [--quick]
        [--only flash|decode] [--max-seq N] [--repeats N] [--threads N] [--dry-run]
    python -m tinytransformer.bench attention --summary PATH      # the table of a results file

GPU (--device cuda; auto picks it when CuPy sees a GPU). Every kernel version is first
checked against the NumPy reference on small ragged cases; a version (and dtype) that
fails is reported, recorded under "invalid" and left out of the timings, and the rest
run. Then, configuration by configuration and in the same run, the kernels,
torch.nn.functional.scaled_dot_product_attention (when torch has CUDA) and a naive
CuPy attention (matmul, softmax, matmul) are timed with CUDA events: the median of
--repeats calls after 2 warm-up calls. Each timed call is queued behind a short
GPU-side wait (one thread spinning on the GPU's timer), so the events time the GPU's
work alone and not the host's launch work (Python's argument checks take tens of
microseconds, as long as a whole decode step); decode also records the time of a
call as Python sees it (call_seconds).

  prefill  T = S = 1,024 / 4,096 / 16,384 with B = 16 / 4 / 1 (the same tokens per call),
           16 query heads and 16 KV heads (also 4 KV heads at T = 4,096, D = 128),
           D = 64 and 128, causal and not; flash v3 in fp16 and bf16, v2 in fp32, v1 up
           to T = 1,024. TFLOP/s counts 4 B H T S D, halved when causal.
  decode   one new token per sequence, Hq 32, Hkv 8, D 128, fp16, block size 16, a
           shuffled block table, B = 1 and 8, context 1,024 / 4,096 / 16,384, versions
           1, 2 and 3. Before every timed call the L2 cache is flushed (a write of twice its
           size), so the K/V bytes come from memory. GB/s counts the K/V bytes read,
           2 B Hkv L D 2, and is compared with a device-to-device copy of 1 GiB measured
           in the same run (counted as bytes read + bytes written).

CPU (--device cpu, or auto without a GPU): small shapes for the NumPy references,
with torch SDPA on the CPU beside them when torch is installed: prefill B 1, Hq 4,
Hkv 2, T = S = 256 / 1,024, D 64, fp32, causal and not (NumPy sdpa, NumPy flash with
its default 16 x 16 tiles, torch SDPA); decode B 4, Hq 8, Hkv 2, D 64, context
256 / 1,024 (the paged-cache reference against sdpa over contiguous K/V). Wall time
(time.perf_counter), best of --repeats after one warm-up call, with the BLAS threads
stated (--threads sets them; torch gets the same number).

--json PATH writes every measurement (to a temporary file in the same folder, then
renamed into place), after every configuration, so a run cut short keeps what it
measured; the table of the goals and the main figures is printed last,
and --summary PATH prints it again from the file. --dry-run checks the arguments,
prints the plan and exits without measuring.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from tinytransformer import cuda
from tinytransformer.bench.attention_gpu import run_gpu
from tinytransformer.bench.attention_workload import (
    GOALS, SHORT, add_ratio_to_sdpa, attention_flops, decode_bytes, decode_configs, decode_line, prefill_configs,
    prefill_line, report_header, shuffled_tables, torch_sdpa,
)
from tinytransformer.bench.common import best_time, write_report


# --- CPU ----------------------------------------------------------------------------------


def cpu_prefill(torch, config: dict, repeats: int, log) -> list[dict]:
    from tinytransformer.attention import scaled_dot_product_attention
    from tinytransformer.flash import flash_attention

    B, Hq, Hkv, T, S, D, causal = (config[x] for x in ("B", "Hq", "Hkv", "T", "S", "D", "causal"))
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in
               ((B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    impls = {"numpy_sdpa": lambda: scaled_dot_product_attention(q, k, v, causal=causal),
             "numpy_flash": lambda: flash_attention(q, k, v, causal=causal)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        impls["torch_sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
            tq, tk, tv, is_causal=causal, enable_gqa=Hkv != Hq)
    flops = attention_flops(B, Hq, T, S, D, causal)
    rows = []
    for name, fn in impls.items():
        fn()  # warm-up
        seconds = best_time(fn, repeats, clock=time.perf_counter)
        rows.append(dict(config, dtype="float32", impl=name, seconds=seconds, tflops=flops / seconds / 1e12))
    add_ratio_to_sdpa(rows)
    for r in rows:
        log(prefill_line(r))
    return rows


def cpu_decode(config: dict, repeats: int, log) -> list[dict]:
    from tinytransformer.attention import scaled_dot_product_attention
    from tinytransformer.paged_attention import paged_decode_attention

    B, Hq, Hkv, D, L, bs = (config[x] for x in ("B", "Hq", "Hkv", "D", "L", "block_size"))
    tables, lengths = shuffled_tables(B, L, bs)
    rng = np.random.default_rng(0)
    k_pool, v_pool = (rng.standard_normal((tables.size, Hkv, bs, D)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    positions = np.arange(L)
    blocks = tables[:, positions // bs]  # [B, L]
    k, v = (np.ascontiguousarray(np.swapaxes(pool[blocks, :, positions % bs], 1, 2)) for pool in (k_pool, v_pool))
    impls = {"numpy_paged": lambda: paged_decode_attention(q, k_pool, v_pool, tables, lengths),
             "numpy_contiguous": lambda: scaled_dot_product_attention(q, k, v, causal=True)}  # [B, Hkv, L, D]
    nbytes = decode_bytes(B, Hkv, L, D, 4)
    rows = []
    for name, fn in impls.items():
        fn()  # warm-up
        seconds = best_time(fn, repeats, clock=time.perf_counter)
        rows.append(dict(config, dtype="float32", impl=name, seconds=seconds, gbps=nbytes / seconds / 1e9))
        log(decode_line(rows[-1]))
    return rows


def run_cpu(prefill, decode, repeats: int, threads: int | None, checkpoint=lambda results: None) -> dict:
    from tinytransformer.threads import blas_description, blas_threads

    torch, torch_info = torch_sdpa("cpu")
    with blas_threads(threads):
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)
        results = report_header(f"{platform.machine()} CPU, {os.cpu_count()} cores", "cpu",
                          f"wall time, best of {repeats} after 1 warm-up", repeats)
        results.update(blas=blas_description(), torch=torch_info if torch is not None else None,
                       torch_threads=torch.get_num_threads() if torch is not None else None)
        print(f"CPU: {results['device']}; BLAS: {results['blas']}; "
              f"SDPA: {torch_info}" + (f", {results['torch_threads']} thread(s)" if torch is not None else ""))
        if prefill:
            print("prefill (NumPy sdpa, NumPy flash, torch SDPA):")
            for config in prefill:
                results["prefill"] += cpu_prefill(torch, config, repeats, print)
                checkpoint(results)
        if decode:
            print("decode (paged-cache reference, sdpa over contiguous K/V):")
            for config in decode:
                results["decode"] += cpu_decode(config, repeats, print)
                checkpoint(results)
    return results


# --- report ---------------------------------------------------------------------------------


def _find(rows, **match):
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[0] if found else None


def summary(results: dict) -> list[str]:
    """The closing table: the goals (on a GPU) and the main figures, from a results dict."""
    pre, dec = results.get("prefill", []), results.get("decode", [])
    lines = [f"attention benchmark: {results['device']} ({results['backend']}), {results['date']}, "
             f"{results['timing']}"]
    if results.get("invalid"):
        lines.append(f"INVALID, not timed (failed the validation against NumPy): {', '.join(results['invalid'])}")
    if results.get("complete") is False:
        lines.append("INCOMPLETE: the run stopped before its last configuration")
    if results["backend"] == "cuda":
        lines.append(f"goals at T = S = 4096, D = 128, fp16, Hq = Hkv = 16; decode at context 16384 "
                     f"(copy {results.get('copy_gbps', float('nan')):.0f} GB/s):")
        where = dict(T=4096, D=128, Hkv=16, dtype="float16")
        v3, v3c = _find(pre, impl="flash_v3", causal=False, **where), _find(pre, impl="flash_v3", causal=True, **where)
        checks = [("v3 / torch SDPA, not causal", v3 and v3["ratio_to_sdpa"], GOALS["v3_vs_sdpa"], "x"),
                  ("v3 causal speed-up over not causal", v3 and v3c and v3["seconds"] / v3c["seconds"],
                   GOALS["causal_speedup"], "x")]
        for version in (2, 3):
            for B in sorted({r["B"] for r in dec}):
                row = _find(dec, impl=f"decode_v{version}", L=16384, B=B)
                checks.append((f"decode v{version} share of copy, B = {B}", row and row["fraction_of_copy"],
                               GOALS["decode_of_copy"], "%"))
        for what, value, goal, unit in checks:
            shown = "not measured" if value is None else (f"{value:.1%}" if unit == "%" else f"{value:.2f}x")
            goal_text = f">= {goal:.0%}" if unit == "%" else f">= {goal:.2f}x"
            verdict = "" if value is None else ("met" if value >= goal else "MISSED")
            lines.append(f"  {what:38s} {shown:>13s}  goal {goal_text:8s} {verdict}")
    impls = sorted({(r["impl"], r["dtype"]) for r in pre})
    if impls:
        unit = "TFLOP/s" if results["backend"] == "cuda" else "GFLOP/s"
        scale = 1.0 if results["backend"] == "cuda" else 1e3
        lines.append(f"prefill, {unit}:")
        lines.append(f"  {'T':>6s} {'Hkv':>4s} {'D':>4s} {'causal':>6s} "
                     + " ".join(f"{i + ' ' + SHORT[d]:>16s}" for i, d in impls))
        for T, Hkv, D, causal in sorted({(r["T"], r["Hkv"], r["D"], r["causal"]) for r in pre}):
            cells = [_find(pre, T=T, Hkv=Hkv, D=D, causal=causal, impl=i, dtype=d) for i, d in impls]
            lines.append(f"  {T:6d} {Hkv:4d} {D:4d} {str(causal):>6s} " + " ".join(
                f"{c['tflops'] * scale:16.2f}" if c else f"{'-':>16s}" for c in cells))
    if dec:
        names = sorted({r["impl"] for r in dec})
        lines.append("decode, GB/s of K/V read" + (" (share of copy)" if results["backend"] == "cuda" else "") + ":")
        for B, L in sorted({(r["B"], r["L"]) for r in dec}):
            cells = []
            for name in names:
                r = _find(dec, B=B, L=L, impl=name)
                share = f" ({r['fraction_of_copy']:.0%})" if r and "fraction_of_copy" in r else ""
                cells.append(f"{name} {r['gbps']:.1f}{share}" if r else f"{name} -")
            lines.append(f"  B={B} L={L:5d}: " + ", ".join(cells))
    return lines


# --- the command ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench attention",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cuda: the kernels on a GPU (exit 2 without one); cpu: the NumPy references; "
                             "auto: cuda when CuPy sees a GPU, else cpu")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    parser.add_argument("--quick", action="store_true", help="a few small shapes, to check that it runs")
    parser.add_argument("--only", choices=("flash", "decode"), help="run one half of the benchmark")
    parser.add_argument("--max-seq", type=int, default=16384, help="longest T = S and decode context")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement "
                        "(GPU: median of 5 by default; CPU: best of 3)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads on the CPU (default: the "
                        "library's own); torch gets the same number")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments, print the plan, measure nothing")
    parser.add_argument("--summary", type=Path, metavar="PATH", help="print the table of a results file and exit")
    return parser


def plan(args, device: str) -> tuple[list[dict], list[dict]]:
    """The prefill and decode configurations this run measures."""
    prefill = prefill_configs(args.quick, args.max_seq, device) if args.only in (None, "flash") else []
    decode = decode_configs(args.quick, args.max_seq, device) if args.only in (None, "decode") else []
    return prefill, decode


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.summary is not None:
        try:
            results = json.loads(args.summary.read_text())
            print("\n".join(summary(results)))
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--summary: expected a results file written by --json, got {args.summary}: "
                         f"{type(error).__name__}: {error}")
        return 0
    for name in ("repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name}: expected an integer >= 1, got {value}")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: expected a file in an existing folder, got {args.json}")

    ok, why = cuda.cuda_status()
    device = ("cuda" if ok else "cpu") if args.device == "auto" else args.device
    prefill, decode = plan(args, device)
    if not prefill and not decode:
        shortest = min(c["T"] if "T" in c else c["L"] for c in prefill_configs(args.quick, 1 << 30, device)
                       + decode_configs(args.quick, 1 << 30, device))
        parser.error(f"--max-seq: expected at least {shortest} (the shortest length of the table), got {args.max_seq}")
    repeats = args.repeats or (5 if device == "cuda" else 3)

    if args.dry_run:
        print(f"dry run: device {device} ({why if ok else 'no GPU here: ' + why}); {repeats} repeats; "
              f"{len(prefill)} prefill and {len(decode)} decode configurations; "
              f"results to {args.json or '(printed only)'}")
        for c in prefill + decode:
            print("  " + " ".join(f"{k}={v}" for k, v in c.items()))
        if device == "cuda" and not ok:
            print(f"a real run would stop here: --device cuda needs a CUDA GPU and CuPy ({why})")
        return 0
    if device == "cuda" and not ok:
        print(f"bench attention --device cuda needs a CUDA GPU and CuPy: {why}. Nothing was measured.",
              file=sys.stderr)
        return 2
    if args.device == "auto" and device == "cpu":
        print(f"no CUDA backend here ({why}): timing the NumPy references on the CPU")

    def checkpoint(results):  # after every configuration: a temporary file, renamed
        if args.json is not None:
            write_report(dict(results, complete=False), args.json, default=float)

    results = (run_gpu(prefill, decode, repeats, checkpoint) if device == "cuda"
               else run_cpu(prefill, decode, repeats, args.threads, checkpoint))
    results["complete"] = True
    if args.json is not None:
        write_report(results, args.json, default=float)
        print(f"wrote {args.json}")
    print()
    print("\n".join(summary(results)))
    return 1 if results.get("invalid") else 0


if __name__ == "__main__":
    sys.exit(main())
