"""Benchmark the attention kernels against each other, a naive CuPy attention and torch SDPA.

    python -m tinytransformer.bench attention [--json PATH] [--quick] [--only flash|decode]
                                               [--max-seq N] [--repeats N]

Needs CuPy and a CUDA GPU; torch with CUDA is optional (the SDPA column). For every
configuration it first validates each implementation against the NumPy reference on a
small case, then warms up, then times with CUDA events (median of --repeats) in the same
run, so every ratio compares numbers measured side by side.

Prefill (flash attention): B = 16 / 8 / 4 for T <= 2048 / 4096 / longer, H = 16 query
heads with 16 or 4 KV heads, T = S from 512 to 16,384, D = 64 and 128, causal and not,
fp16 and bf16 (v3, SDPA, naive) and fp32 (v1 up to T = 2048, v2, SDPA, naive).
TFLOP/s uses the usual count 4 * B * H * T * S * D, halved when causal.

Decode (paged cache): one new token per sequence, Hq = 32, Hkv = 8, D = 128, fp16,
block size 16 with a shuffled block table, batch 1 and 8, context 1,024 to 16,384,
versions 1 and 2. GB/s counts the K/V bytes read, 2 * B * Hkv * L * D * 2; the copy
baseline is a device-to-device copy of 1 GiB measured in the same run, counted as
bytes read + bytes written.

Results go to --json PATH, by default benchmarks/results/attention-<device>-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from tinytransformer import cuda

ROOT = Path(__file__).resolve().parents[2]


def attention_flops(B: int, H: int, T: int, S: int, D: int, causal: bool) -> float:
    """4 B H T S D (two matmuls of 2 T S D each), halved under the causal mask."""
    flops = 4.0 * B * H * T * S * D
    return flops / 2 if causal else flops


def decode_bytes(B: int, Hkv: int, L: int, D: int, itemsize: int) -> int:
    """K and V bytes a decode step must read: 2 B Hkv L D itemsize."""
    return 2 * B * Hkv * L * D * itemsize


def prefill_configs(quick: bool = False, max_seq: int = 16384) -> list[dict]:
    """The shapes of the prefill table (see the module docstring)."""
    seqs = (512, 2048) if quick else (512, 1024, 2048, 4096, 8192, 16384)
    configs = []
    for T in (t for t in seqs if t <= max_seq):
        B = 16 if T <= 2048 else (8 if T <= 4096 else 4)
        if quick:
            B = 2
        for D in ((64,) if quick else (64, 128)):
            for Hkv in ((4,) if quick else (16, 4)):
                for causal in (False, True):
                    configs.append(dict(B=B, Hq=16, Hkv=Hkv, T=T, S=T, D=D, causal=causal))
    return configs


def decode_configs(quick: bool = False, max_seq: int = 16384) -> list[dict]:
    contexts = (1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384)
    return [dict(B=B, Hq=32, Hkv=8, D=128, L=L, block_size=16)
            for B in ((1,) if quick else (1, 8)) for L in contexts if L <= max_seq]


# --- timing ----------------------------------------------------------------------------


def time_gpu(cupy, fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() over `repeats` runs, timed with CUDA events after `warmup` runs."""
    for _ in range(warmup):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def copy_bandwidth(cupy, repeats: int) -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / s."""
    n = 1 << 30
    src = cupy.empty(n, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    seconds = time_gpu(cupy, lambda: dst.data.copy_from_device(src.data, n), repeats)  # cudaMemcpy D2D
    del src, dst
    return 2 * n / seconds


# --- the competitors -------------------------------------------------------------------


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


def torch_sdpa():
    """torch.nn.functional.scaled_dot_product_attention when torch has CUDA, else None."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA"
    return torch, torch.__version__


def _as_torch(torch, x, kind):
    t = torch.from_dlpack(x)
    return t.view(torch.bfloat16) if kind == "bfloat16" else t


# --- validation before timing ----------------------------------------------------------


def validate_kernels() -> list[str]:
    """Check every flash version and both decode versions against NumPy on small ragged cases."""
    from tinytransformer.attention import scaled_dot_product_attention
    from tinytransformer.paged_cache import paged_decode_attention
    from tinytransformer.testing import assert_close

    failures = []
    rng = np.random.default_rng(0)
    for D in (64, 128):
        q = rng.standard_normal((1, 4, 77, D))
        k, v = rng.standard_normal((2, 1, 2, 150, D))
        for causal in (False, True):
            expected = scaled_dot_product_attention(q, k, v, causal=causal)
            for version, kind in ((1, "float32"), (2, "float32"), (3, "float16"), (3, "bfloat16")):
                if kind == "bfloat16":
                    args, dtype = [cuda.to_bfloat16_bits(x) for x in (q, k, v)], "bfloat16"
                    ref = scaled_dot_product_attention(*(cuda.from_bfloat16_bits(a).astype(np.float64)
                                                         for a in args), causal=causal)
                else:
                    args, dtype = [x.astype(kind) for x in (q, k, v)], None
                    ref = scaled_dot_product_attention(*(a.astype(np.float64) for a in args), causal=causal) \
                        if kind == "float16" else expected
                out = cuda.flash_attention(*args, causal=causal, version=version, dtype=dtype)
                out = cuda.from_bfloat16_bits(out) if kind == "bfloat16" else out
                try:
                    assert_close(out, ref, dtype=kind)
                except AssertionError as error:
                    failures.append(f"flash v{version} {kind} D={D} causal={causal}: {str(error)[:300]}")
        n_blocks, bs = 64, 16
        pool = rng.standard_normal((2, n_blocks, 2, bs, D)).astype(np.float16)
        tables = rng.permutation(n_blocks).astype(np.int32).reshape(2, 32)
        lengths = np.array([500, 37], np.int32)
        qd = rng.standard_normal((2, 8, 2, D)).astype(np.float16)
        ref = paged_decode_attention(qd.astype(np.float64), pool[0].astype(np.float64),
                                     pool[1].astype(np.float64), tables, lengths)
        for version in cuda.DECODE_VERSIONS:
            out = cuda.paged_decode_attention(qd, pool[0], pool[1], tables, lengths, version=version, split_len=64)
            try:
                assert_close(out, ref, dtype="float16")
            except AssertionError as error:
                failures.append(f"decode v{version} D={D}: {str(error)[:300]}")
    return failures


# --- the runs --------------------------------------------------------------------------


def run_prefill(cupy, torch, config: dict, repeats: int, log) -> list[dict]:
    B, Hq, Hkv, T, S, D, causal = (config[x] for x in ("B", "Hq", "Hkv", "T", "S", "D", "causal"))
    flops = attention_flops(B, Hq, T, S, D, causal)
    scale = 1.0 / math.sqrt(D)
    rows = []
    for kind in ("float16", "bfloat16", "float32"):
        store = {"float16": cupy.float16, "bfloat16": cupy.uint16, "float32": cupy.float32}[kind]
        rng = cupy.random.default_rng(0)
        if kind == "bfloat16":
            q, k, v = (cupy.asarray(cuda.to_bfloat16_bits(cupy.asnumpy(
                rng.standard_normal(shape, dtype=cupy.float32)))) for shape in
                ((B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
        else:
            q, k, v = (rng.standard_normal(shape, dtype=cupy.float32).astype(store) for shape in
                       ((B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
        dtype = "bfloat16" if kind == "bfloat16" else None
        impls = {}
        versions = (3,) if kind != "float32" else ((1, 2) if T <= 2048 else (2,))
        for version in versions:
            impls[f"flash_v{version}"] = (lambda version=version: cuda.flash_attention(
                q, k, v, causal=causal, version=version, dtype=dtype))
        if kind != "bfloat16" and B * Hq * T * S * 4 <= 8 << 30:  # the naive score matrix must fit
            impls["naive_cupy"] = lambda: naive_cupy_attention(cupy, q, k, v, causal, scale)
        if torch is not None:
            tq, tk, tv = (_as_torch(torch, x, kind) for x in (q, k, v))
            impls["torch_sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, is_causal=causal, enable_gqa=Hkv != Hq)
        for name, fn in impls.items():
            try:
                seconds = time_gpu(cupy, fn, repeats)
            except Exception as error:  # out of memory or an unsupported combination: record, go on
                log(f"  {name:11s} {kind:8s} skipped: {type(error).__name__}: {str(error)[:120]}")
                continue
            rows.append(dict(config, dtype=kind, impl=name, seconds=seconds, tflops=flops / seconds / 1e12))
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()
    sdpa = {r["dtype"]: r["tflops"] for r in rows if r["impl"] == "torch_sdpa"}
    for r in rows:
        r["ratio_to_sdpa"] = r["tflops"] / sdpa[r["dtype"]] if r["dtype"] in sdpa else None
        ratio = f"{r['ratio_to_sdpa']:.2f}x SDPA" if r["ratio_to_sdpa"] else ""
        log(f"  B={B:2d} Hq={Hq} Hkv={Hkv:2d} T=S={T:5d} D={D:3d} causal={int(causal)} {r['dtype']:8s} "
            f"{r['impl']:11s} {r['seconds'] * 1e3:9.3f} ms {r['tflops']:7.2f} TFLOP/s {ratio}")
    return rows


def run_decode(cupy, config: dict, copy_bps: float, repeats: int, log) -> list[dict]:
    B, Hq, Hkv, D, L, bs = (config[x] for x in ("B", "Hq", "Hkv", "D", "L", "block_size"))
    per_seq = -(-L // bs)
    n_blocks = B * per_seq
    rng = cupy.random.default_rng(0)
    k_pool = rng.standard_normal((n_blocks, Hkv, bs, D), dtype=cupy.float32).astype(cupy.float16)
    v_pool = rng.standard_normal((n_blocks, Hkv, bs, D), dtype=cupy.float32).astype(cupy.float16)
    tables = cupy.asarray(np.random.default_rng(0).permutation(n_blocks).astype(np.int32).reshape(B, per_seq))
    lengths = cupy.full((B,), L, dtype=cupy.int32)
    q = rng.standard_normal((B, Hq, 1, D), dtype=cupy.float32).astype(cupy.float16)
    nbytes = decode_bytes(B, Hkv, L, D, 2)
    rows = []
    for version in cuda.DECODE_VERSIONS:
        seconds = time_gpu(cupy, lambda: cuda.paged_decode_attention(q, k_pool, v_pool, tables, lengths,
                                                                     version=version, check_tables=False), repeats)
        gbps = nbytes / seconds / 1e9
        rows.append(dict(config, dtype="float16", impl=f"decode_v{version}", seconds=seconds, gbps=gbps,
                         fraction_of_copy=gbps * 1e9 / copy_bps))
        log(f"  B={B:2d} Hq={Hq} Hkv={Hkv} D={D} L={L:5d} decode_v{version} {seconds * 1e6:9.1f} us "
            f"{gbps:8.1f} GB/s = {gbps * 1e9 / copy_bps:5.1%} of copy")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytransformer.bench attention",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    parser.add_argument("--quick", action="store_true", help="a few small shapes, to check that it runs")
    parser.add_argument("--only", choices=("flash", "decode"), help="run one half of the benchmark")
    parser.add_argument("--max-seq", type=int, default=16384, help="longest T = S and decode context")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    args = parser.parse_args(argv)

    ok, why = cuda.cuda_status()
    if not ok:
        print(f"bench attention needs a CUDA GPU and CuPy: {why}. Nothing was measured.", file=sys.stderr)
        return 2
    cupy = cuda.require_cuda()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = why
    torch, torch_info = torch_sdpa()
    log = print
    log(f"device: {device}, {props['multiProcessorCount']} SMs; cupy {cupy.__version__}; SDPA: {torch_info}")

    log("validating every kernel version against the NumPy reference ...")
    failures = validate_kernels()
    if failures:
        for f in failures:
            print(f"INVALID {f}", file=sys.stderr)
        print("validation failed: nothing was timed", file=sys.stderr)
        return 1
    log("all versions match the reference")

    results = dict(device=device, sms=int(props["multiProcessorCount"]), cupy=cupy.__version__,
                   torch=torch_info if torch is not None else None,
                   date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), repeats=args.repeats,
                   prefill=[], decode=[])
    if args.only in (None, "flash"):
        log("prefill (flash attention):")
        for config in prefill_configs(args.quick, args.max_seq):
            results["prefill"].append(run_prefill(cupy, torch, config, args.repeats, log))
        results["prefill"] = [r for rows in results["prefill"] for r in rows]
    if args.only in (None, "decode"):
        copy_bps = copy_bandwidth(cupy, args.repeats)
        results["copy_gbps"] = copy_bps / 1e9
        log(f"decode (paged cache); device-to-device copy: {copy_bps / 1e9:.1f} GB/s (read + write)")
        for config in decode_configs(args.quick, args.max_seq):
            results["decode"] += run_decode(cupy, config, copy_bps, args.repeats, log)

    path = args.json
    if path is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
        path = ROOT / "benchmarks" / "results" / f"attention-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
