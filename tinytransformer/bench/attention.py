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
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from tinytransformer import cuda
from tinytransformer.bench import best_time, write_report

SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
GOALS = dict(v3_vs_sdpa=0.5, causal_speedup=1.7, decode_of_copy=0.70)  # what the GPU run is held to


def attention_flops(B: int, H: int, T: int, S: int, D: int, causal: bool) -> float:
    """4 B H T S D (two matmuls of 2 T S D each), halved under the causal mask."""
    flops = 4.0 * B * H * T * S * D
    return flops / 2 if causal else flops


def decode_bytes(B: int, Hkv: int, L: int, D: int, itemsize: int) -> int:
    """K and V bytes a decode step must read: 2 B Hkv L D itemsize."""
    return 2 * B * Hkv * L * D * itemsize


# --- the configurations -----------------------------------------------------------------


def prefill_configs(quick: bool = False, max_seq: int = 16384, device: str = "cuda") -> list[dict]:
    """The prefill shapes of the table (see the module docstring)."""
    if device == "cpu":
        seqs = {128: 1, 256: 1} if quick else {256: 1, 1024: 1}
        return [dict(B=B, Hq=4, Hkv=2, T=T, S=T, D=64, causal=causal)
                for T, B in seqs.items() if T <= max_seq for causal in (False, True)]
    seqs = {1024: 2, 4096: 1} if quick else {1024: 16, 4096: 4, 16384: 1}  # T: B
    configs = []
    for T, B in seqs.items():
        if T > max_seq:
            continue
        for D in ((64,) if quick else (64, 128)):
            for Hkv in ((16, 4) if T == 4096 and D == 128 else (16,)):
                for causal in (False, True):
                    configs.append(dict(B=B, Hq=16, Hkv=Hkv, T=T, S=T, D=D, causal=causal))
    return configs


def decode_configs(quick: bool = False, max_seq: int = 16384, device: str = "cuda") -> list[dict]:
    """The decode shapes of the table."""
    if device == "cpu":
        contexts, batches, heads, D = ((128, 256) if quick else (256, 1024)), (4,), (8, 2), 64
    else:
        contexts, batches, heads, D = ((1024, 4096) if quick else (1024, 4096, 16384)), ((1,) if quick else (1, 8)), \
            (32, 8), 128
    return [dict(B=B, Hq=heads[0], Hkv=heads[1], D=D, L=L, block_size=16)
            for B in batches for L in contexts if L <= max_seq]


def _shuffled_tables(B: int, L: int, block_size: int):
    """A block table with the blocks of all sequences shuffled, and each sequence's length."""
    per_seq = -(-L // block_size)
    tables = np.random.default_rng(0).permutation(B * per_seq).astype(np.int32).reshape(B, per_seq)
    return tables, np.full((B,), L, dtype=np.int32)


# --- GPU: timing, competitors, validation --------------------------------------------------


HOLD_SOURCE = r"""
extern "C" __global__ void tt_hold(unsigned long long ns) {  // one thread spins on the global timer
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
}
"""
HOLD_SECONDS = (2e-4, 0.05)  # the GPU-side wait: where it starts, and the most it may grow to


def gpu_hold(cupy):
    """hold(seconds): keep the GPU busy that long, so the host can queue the timed work behind it."""
    kernel = cupy.RawKernel(HOLD_SOURCE, "tt_hold")
    return lambda seconds: kernel((1,), (1,), (np.uint64(int(seconds * 1e9)),))


def time_gpu(cupy, fn, repeats: int, warmup: int = 2, flush=None, hold=None) -> float:
    """Median seconds of fn() over `repeats` calls, timed with CUDA events after `warmup` calls.

    flush, when given, runs before every timed call, outside the timed interval.
    hold, when given (gpu_hold), queues a GPU-side wait before the start event, so that
    fn's launches (Python's argument checks included) are all queued before the GPU reaches
    it: the events then time the GPU's work alone. If the GPU reached the start event
    before fn returned, the wait was too short (the host's time could have leaked in): the
    call is timed again with a wait twice as long.
    """
    for _ in range(warmup):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times, wait = [], HOLD_SECONDS[0]
    while len(times) < repeats:
        if flush is not None:
            flush()
        if hold is not None:
            hold(wait)
        start.record()
        fn()
        stop.record()
        if hold is not None and start.done:  # the GPU was idle, waiting for the host
            stop.synchronize()
            if wait >= HOLD_SECONDS[1]:
                raise RuntimeError(f"the host took longer than {wait * 1e3:.0f} ms to queue one call "
                                   "(does it synchronise?): GPU time cannot be separated from host time")
            wait *= 2
            continue
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def l2_flusher(cupy):
    """A function that evicts the L2 cache by writing a buffer of twice its size (as
    triton.testing.do_bench does), and that size."""
    l2 = int(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id).get("l2CacheSize", 0)) or 64 << 20
    buffer = cupy.empty(2 * l2, dtype=cupy.uint8)
    return (lambda: buffer.fill(0)), l2


def copy_bandwidth(cupy, repeats: int) -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / s."""
    n = 1 << 30
    src = cupy.empty(n, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    seconds = time_gpu(cupy, lambda: dst.data.copy_from_device(src.data, n), repeats)  # cudaMemcpy D2D
    return 2 * n / seconds


def naive_cupy_attention(cupy, q, k, v, causal, scale):
    """matmul, softmax, matmul in CuPy: the [B, Hq, T, S] score matrix in fp32 memory."""
    G = q.shape[1] // k.shape[1]
    k, v = cupy.repeat(k, G, axis=1), cupy.repeat(v, G, axis=1)  # [B, Hkv, S, D] -> [B, Hq, S, D]
    s = cupy.matmul(q, k.swapaxes(-1, -2)).astype(cupy.float32) * scale  # [B, Hq, T, S]
    if causal:
        T, S = s.shape[-2:]
        s = cupy.where(cupy.arange(S)[None, :] <= (S - T + cupy.arange(T))[:, None], s, -cupy.inf)
    s = cupy.exp(s - s.max(axis=-1, keepdims=True))
    p = (s / s.sum(axis=-1, keepdims=True)).astype(q.dtype)
    return cupy.matmul(p, v)


def torch_sdpa(device: str):
    """(torch, description) when torch can run SDPA on `device` ("cuda" or "cpu"), else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if device == "cuda" and not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA"
    return torch, f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if device == "cuda" else "")


def _as_torch(torch, x, kind):
    t = torch.from_dlpack(x)
    return t.view(torch.bfloat16) if kind == "bfloat16" else t


def validate_kernels() -> list[tuple[str, str]]:
    """Check every flash version and every decode version (cuda.DECODE_VERSIONS) against NumPy on small ragged cases.

    Returns the failures as (implementation, message) pairs; the implementation is named as
    in the timings ("flash_v3 float16", "decode_v2 float16"), so a failed one can be left out.
    """
    from tinytransformer.attention import scaled_dot_product_attention
    from tinytransformer.paged_attention import paged_decode_attention
    from tinytransformer.testing import assert_close

    failures = []
    rng = np.random.default_rng(0)
    for D in (64, 128):
        q = rng.standard_normal((1, 4, 77, D))
        k, v = rng.standard_normal((2, 1, 2, 150, D))
        for causal in (False, True):
            for version, kind in ((1, "float32"), (2, "float32"), (3, "float16"), (3, "bfloat16")):
                if kind == "bfloat16":
                    args, dtype = [cuda.to_bfloat16_bits(x) for x in (q, k, v)], "bfloat16"
                    exact = [cuda.from_bfloat16_bits(a).astype(np.float64) for a in args]
                else:
                    args, dtype = [x.astype(kind) for x in (q, k, v)], None
                    exact = [a.astype(np.float64) for a in args]
                ref = scaled_dot_product_attention(*exact, causal=causal)
                try:
                    out = cuda.flash_attention(*args, causal=causal, version=version, dtype=dtype)
                    out = cuda.from_bfloat16_bits(out) if kind == "bfloat16" else out
                    assert_close(out, ref, dtype=kind)
                except Exception as error:  # wrong values, or a launch that failed on this GPU
                    failures.append((f"flash_v{version} {kind}", f"D={D} causal={causal}: {str(error)[:300]}"))
        n_blocks, bs = 64, 16
        pool = rng.standard_normal((2, n_blocks, 2, bs, D)).astype(np.float16)
        tables = rng.permutation(n_blocks).astype(np.int32).reshape(2, 32)
        lengths = np.array([500, 37], np.int32)
        qd = rng.standard_normal((2, 8, 2, D)).astype(np.float16)
        ref = paged_decode_attention(qd.astype(np.float64), pool[0].astype(np.float64),
                                     pool[1].astype(np.float64), tables, lengths)
        for version in cuda.DECODE_VERSIONS:
            try:
                out = cuda.paged_decode_attention(qd, pool[0], pool[1], tables, lengths, version=version,
                                                  split_len=64)
                assert_close(out, ref, dtype="float16")
            except Exception as error:
                failures.append((f"decode_v{version} float16", f"D={D}: {str(error)[:300]}"))
    return failures


def gpu_prefill(cupy, torch, config: dict, repeats: int, log, invalid=frozenset(), hold=None) -> list[dict]:
    rows = []
    for kind in ("float16", "bfloat16", "float32"):
        rows += _gpu_prefill_rows(cupy, torch, config, kind, repeats, log, invalid, hold)
        cupy.get_default_memory_pool().free_all_blocks()  # that dtype's arrays are gone with the call
    _add_ratio_to_sdpa(rows)
    for r in rows:
        log(_prefill_line(r))
    return rows


def _gpu_prefill_rows(cupy, torch, config: dict, kind: str, repeats: int, log, invalid=frozenset(),
                      hold=None) -> list[dict]:
    B, Hq, Hkv, T, S, D, causal = (config[x] for x in ("B", "Hq", "Hkv", "T", "S", "D", "causal"))
    flops = attention_flops(B, Hq, T, S, D, causal)
    shapes = ((B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D))
    rng = cupy.random.default_rng(0)
    if kind == "bfloat16":
        q, k, v = (cupy.asarray(cuda.to_bfloat16_bits(cupy.asnumpy(rng.standard_normal(shape, dtype=cupy.float32))))
                   for shape in shapes)
    else:
        q, k, v = (rng.standard_normal(shape, dtype=cupy.float32).astype(kind) for shape in shapes)
    dtype = "bfloat16" if kind == "bfloat16" else None
    impls = {}
    for version in ((3,) if kind != "float32" else ((1, 2) if T <= 1024 else (2,))):
        if f"flash_v{version} {kind}" in invalid:  # failed the validation: its time would mean nothing
            continue
        impls[f"flash_v{version}"] = (lambda version=version: cuda.flash_attention(
            q, k, v, causal=causal, version=version, dtype=dtype))
    if kind != "bfloat16" and B * Hq * T * S * 4 <= 8 << 30:  # the naive score matrix must fit
        impls["naive_cupy"] = lambda: naive_cupy_attention(cupy, q, k, v, causal, 1.0 / math.sqrt(D))
    if torch is not None:
        tq, tk, tv = (_as_torch(torch, x, kind) for x in (q, k, v))
        impls["torch_sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
            tq, tk, tv, is_causal=causal, enable_gqa=Hkv != Hq)
    rows = []
    for name, fn in impls.items():
        try:
            seconds = time_gpu(cupy, fn, repeats, hold=hold)
        except Exception as error:  # out of memory or an unsupported combination: record, go on
            log(f"  {name:11s} {kind:8s} not measured: {type(error).__name__}: {str(error)[:120]}")
            continue
        rows.append(dict(config, dtype=kind, impl=name, seconds=seconds, tflops=flops / seconds / 1e12))
    return rows


def gpu_decode(cupy, config: dict, copy_bps: float, flush, repeats: int, log, invalid=frozenset(),
               hold=None) -> list[dict]:
    B, Hq, Hkv, D, L, bs = (config[x] for x in ("B", "Hq", "Hkv", "D", "L", "block_size"))
    tables, lengths = _shuffled_tables(B, L, bs)
    rng = cupy.random.default_rng(0)
    k_pool, v_pool = (rng.standard_normal((tables.size, Hkv, bs, D), dtype=cupy.float32).astype(cupy.float16)
                      for _ in range(2))
    q = rng.standard_normal((B, Hq, 1, D), dtype=cupy.float32).astype(cupy.float16)
    tables, lengths = cupy.asarray(tables), cupy.asarray(lengths)
    nbytes = decode_bytes(B, Hkv, L, D, 2)
    rows = []
    for version in cuda.DECODE_VERSIONS:
        if f"decode_v{version} float16" in invalid:
            continue
        def call(version=version):
            return cuda.paged_decode_attention(q, k_pool, v_pool, tables, lengths, version=version,
                                               check_tables=False)

        try:
            seconds = time_gpu(cupy, call, repeats, flush=flush, hold=hold)  # the GPU's work alone
            call_seconds = time_gpu(cupy, call, repeats, flush=flush)  # with the host's launch work
        except Exception as error:  # out of memory or a failed launch: record, go on
            log(f"  decode_v{version} B={B} L={L} not measured: {type(error).__name__}: {str(error)[:120]}")
            continue
        gbps = nbytes / seconds / 1e9
        rows.append(dict(config, dtype="float16", impl=f"decode_v{version}", seconds=seconds, gbps=gbps,
                         fraction_of_copy=gbps * 1e9 / copy_bps, call_seconds=call_seconds))
        log(_decode_line(rows[-1]))
    return rows


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
    _add_ratio_to_sdpa(rows)
    for r in rows:
        log(_prefill_line(r))
    return rows


def cpu_decode(config: dict, repeats: int, log) -> list[dict]:
    from tinytransformer.attention import scaled_dot_product_attention
    from tinytransformer.paged_attention import paged_decode_attention

    B, Hq, Hkv, D, L, bs = (config[x] for x in ("B", "Hq", "Hkv", "D", "L", "block_size"))
    tables, lengths = _shuffled_tables(B, L, bs)
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
        log(_decode_line(rows[-1]))
    return rows


# --- report ---------------------------------------------------------------------------------


def _add_ratio_to_sdpa(rows):
    sdpa = {r["dtype"]: r["tflops"] for r in rows if r["impl"] == "torch_sdpa"}
    for r in rows:
        r["ratio_to_sdpa"] = r["tflops"] / sdpa[r["dtype"]] if r["dtype"] in sdpa else None


def _prefill_line(r) -> str:
    ratio = f" {r['ratio_to_sdpa']:.2f}x SDPA" if r.get("ratio_to_sdpa") else ""
    return (f"  B={r['B']:2d} Hq={r['Hq']} Hkv={r['Hkv']:2d} T=S={r['T']:5d} D={r['D']:3d} causal={int(r['causal'])} "
            f"{r['dtype']:8s} {r['impl']:11s} {r['seconds'] * 1e3:10.3f} ms {r['tflops']:9.4f} TFLOP/s{ratio}")


def _decode_line(r) -> str:
    share = f" = {r['fraction_of_copy']:5.1%} of copy" if "fraction_of_copy" in r else ""
    call = f" (a call from Python: {r['call_seconds'] * 1e6:.1f} us)" if "call_seconds" in r else ""
    return (f"  B={r['B']:2d} Hq={r['Hq']} Hkv={r['Hkv']} D={r['D']} L={r['L']:5d} {r['impl']:16s} "
            f"{r['seconds'] * 1e6:10.1f} us {r['gbps']:8.2f} GB/s{share}{call}")


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


def _header(device: str, backend: str, timing: str, repeats: int) -> dict:
    return dict(device=device, backend=backend, timing=timing, repeats=repeats, numpy=np.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                prefill=[], decode=[])


def run_gpu(prefill, decode, repeats: int, checkpoint=lambda results: None) -> dict:
    """Validate, then time every configuration; checkpoint(results) runs after each one."""
    cupy = cuda.require_cuda()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    torch, torch_info = torch_sdpa("cuda")
    results = _header(cuda.cuda_status()[1], "cuda", f"CUDA events around the GPU's work (queued behind a "
                      f"GPU-side wait), median of {repeats} after 2 warm-ups", repeats)
    results.update(sms=int(props["multiProcessorCount"]), cupy=cupy.__version__,
                   cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), driver=cupy.cuda.runtime.driverGetVersion(),
                   torch=torch_info if torch is not None else None)
    print(f"device: {results['device']}, {results['sms']} SMs; cupy {cupy.__version__}; SDPA: {torch_info}")
    print("validating every kernel version against the NumPy reference ...")
    failures = validate_kernels()
    for name, message in failures:
        print(f"INVALID {name}: {message}", file=sys.stderr)
    invalid = frozenset(name for name, _ in failures)
    results["invalid"] = sorted(invalid)
    print(f"left out of the timings, having failed the validation: {', '.join(sorted(invalid))}" if invalid
          else "all versions match the reference")
    hold = gpu_hold(cupy)
    if prefill:
        print("prefill (flash attention):")
        for config in prefill:
            results["prefill"] += gpu_prefill(cupy, torch, config, repeats, print, invalid, hold)
            checkpoint(results)
    if decode:
        copy_bps = copy_bandwidth(cupy, repeats)
        flush, l2 = l2_flusher(cupy)
        results.update(copy_gbps=copy_bps / 1e9, l2_bytes=l2)
        print(f"decode (paged cache); device-to-device copy: {copy_bps / 1e9:.1f} GB/s (read + write); "
              f"L2 ({l2 / 2**20:.0f} MiB) flushed before every timed call")
        for config in decode:
            results["decode"] += gpu_decode(cupy, config, copy_bps, flush, repeats, print, invalid, hold)
            checkpoint(results)
    return results


def run_cpu(prefill, decode, repeats: int, threads: int | None, checkpoint=lambda results: None) -> dict:
    from tinytransformer.threads import blas_description, blas_threads

    torch, torch_info = torch_sdpa("cpu")
    with blas_threads(threads):
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)
        results = _header(f"{platform.machine()} CPU, {os.cpu_count()} cores", "cpu",
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


if __name__ == "__main__":
    sys.exit(main())
