"""The GPU half of `python -m tinytransformer.bench attention`: CUDA-event timing, competitors, validation.

Every kernel version is first checked against the NumPy reference on small ragged cases
(`validate_kernels`); a version that fails is left out of the timings. Then each
configuration is timed with CUDA events (`time_gpu`): the median of `repeats` calls after
2 warm-ups, each queued behind a short GPU-side wait (`gpu_hold`: one thread spinning on
the GPU's timer), so that the events time the GPU's work alone, not the host's launches.
Prefill rows: our flash kernels, torch SDPA and a naive CuPy attention (matmul, softmax,
matmul); decode rows: the paged-decode versions, with the L2 cache flushed before every
timed call and GB/s compared with a device-to-device copy measured in the same run.

`run_gpu` runs it all; the shapes and units are `attention_workload`'s, the command and
the CPU half are in `attention`.

Does not handle: more than one GPU, CUDA graphs, timing without CuPy.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from tinytransformer import cuda
from tinytransformer.bench.attention_workload import (
    add_ratio_to_sdpa, attention_flops, decode_bytes, decode_line, prefill_line, report_header, shuffled_tables,
    torch_sdpa,
)


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


def as_torch(torch, x, kind):
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
    add_ratio_to_sdpa(rows)
    for r in rows:
        log(prefill_line(r))
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
        tq, tk, tv = (as_torch(torch, x, kind) for x in (q, k, v))
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
    tables, lengths = shuffled_tables(B, L, bs)
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
        log(decode_line(rows[-1]))
    return rows


def run_gpu(prefill, decode, repeats: int, checkpoint=lambda results: None) -> dict:
    """Validate, then time every configuration; checkpoint(results) runs after each one."""
    cupy = cuda.require_cuda()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    torch, torch_info = torch_sdpa("cuda")
    results = report_header(cuda.cuda_status()[1], "cuda", f"CUDA events around the GPU's work (queued behind a "
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
