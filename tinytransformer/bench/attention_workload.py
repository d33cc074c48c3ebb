"""What the attention benchmark measures: the shapes, the work each one counts, and its rows.

The table's shapes follow the layout [B, H, T, D] (batch, heads, query positions, head
dim; S key positions, L a decode context). Two units make a time comparable:

    prefill   FLOPs = 4 B H T S D   (two matmuls of 2 T S D each), halved under the causal mask
    decode    bytes = 2 B Hkv L D itemsize   (every K and V value read once)

    >>> attention_flops(1, 16, 1024, 1024, 64, causal=False) / 1e9
    4.294967296
    >>> decode_bytes(1, 8, 1024, 128, 2)
    4194304

Each measurement is a row: its configuration, dtype, implementation and seconds, with
TFLOP/s (prefill) or GB/s (decode); `prefill_line` and `decode_line` print one. The GPU
half (`attention_gpu`) and the command with its CPU half (`attention`) both build on these.

Does not handle: shapes outside the table (ragged batches are in the validation only).
"""
from __future__ import annotations

import platform
import time

import numpy as np

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


def shuffled_tables(B: int, L: int, block_size: int):
    """A block table with the blocks of all sequences shuffled, and each sequence's length."""
    per_seq = -(-L // block_size)
    tables = np.random.default_rng(0).permutation(B * per_seq).astype(np.int32).reshape(B, per_seq)
    return tables, np.full((B,), L, dtype=np.int32)


def torch_sdpa(device: str):
    """(torch, description) when torch can run SDPA on `device` ("cuda" or "cpu"), else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if device == "cuda" and not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA"
    return torch, f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if device == "cuda" else "")


def add_ratio_to_sdpa(rows):
    sdpa = {r["dtype"]: r["tflops"] for r in rows if r["impl"] == "torch_sdpa"}
    for r in rows:
        r["ratio_to_sdpa"] = r["tflops"] / sdpa[r["dtype"]] if r["dtype"] in sdpa else None


def prefill_line(r) -> str:
    ratio = f" {r['ratio_to_sdpa']:.2f}x SDPA" if r.get("ratio_to_sdpa") else ""
    return (f"  B={r['B']:2d} Hq={r['Hq']} Hkv={r['Hkv']:2d} T=S={r['T']:5d} D={r['D']:3d} causal={int(r['causal'])} "
            f"{r['dtype']:8s} {r['impl']:11s} {r['seconds'] * 1e3:10.3f} ms {r['tflops']:9.4f} TFLOP/s{ratio}")


def decode_line(r) -> str:
    share = f" = {r['fraction_of_copy']:5.1%} of copy" if "fraction_of_copy" in r else ""
    call = f" (a call from Python: {r['call_seconds'] * 1e6:.1f} us)" if "call_seconds" in r else ""
    return (f"  B={r['B']:2d} Hq={r['Hq']} Hkv={r['Hkv']} D={r['D']} L={r['L']:5d} {r['impl']:16s} "
            f"{r['seconds'] * 1e6:10.1f} us {r['gbps']:8.2f} GB/s{share}{call}")


def report_header(device: str, backend: str, timing: str, repeats: int) -> dict:
    return dict(device=device, backend=backend, timing=timing, repeats=repeats, numpy=np.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                prefill=[], decode=[])
