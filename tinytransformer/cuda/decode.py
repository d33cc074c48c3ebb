"""The paged-decode launcher: cuda_kernels/decode_attention.cu with paged_decode_attention's signature.

    paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, ...)   [B, Hq, T, D]

backend="numpy" calls tinytransformer.paged_attention.paged_decode_attention; backend="cuda"
validates with the same checker (paged_attention.check_paged_decode_inputs), then launches
v1 (a block per sequence, KV head and 16 query rows), v2 (the same, split along the
context, then a combine kernel that merges the splits by their log-sum-exp) or v3 (v2's
splits with K and V read into registers, a block per 4 query rows; the default).
"""
from __future__ import annotations

import functools

import numpy as np

from tinytransformer._validate import attention_scale, is_integer
from tinytransformer.cuda.arrays import (NULL, STORAGE, SUFFIX, check_backend, check_contiguous, check_slopes,
                                         check_version, device_small, device_tensor, element_type, host,
                                         host_float, is_cupy, kernel_args, like_input)
from tinytransformer.cuda.build import (DEC3_MIN_BLOCKS, DEC3_ROWS, DEC_BC, DEC_ROWS, DECODE_HEAD_DIMS,
                                        DECODE_VERSIONS, THREADS, load_module, pad_head_dim, require_cuda)

__all__ = ["paged_decode_attention", "check_decode_inputs", "decode_split_len", "DECODE_BLOCKS_PER_SM",
           "DECODE3_BLOCKS_PER_SM"]

# The kernels index key positions in int32 (a tile past the last key, a split's end): a table's
# capacity max_blocks * block_size, and so every context length and split_len, stays <= 2**30.
DECODE_MAX_POSITIONS = 2**30

DECODE_BLOCKS_PER_SM = 4  # decode is memory-bound: keep several blocks (4 warps each) per SM reading
# v3 is compiled for DEC3_MIN_BLOCKS = 3 blocks of 128 threads per SM (its __launch_bounds__
# holds it to 170 registers a thread; it uses 168 in fp16 and bf16)
DECODE3_BLOCKS_PER_SM = DEC3_MIN_BLOCKS


def decode_split_len(max_context: int, n_blocks_without_split: int, n_sms: int,
                     blocks_per_sm: int = DECODE_BLOCKS_PER_SM) -> int:
    """v2's and v3's keys per split, whole tiles each: as many splits as fit in one wave of
    blocks_per_sm blocks per SM. One block more than a wave holds would run in a second
    wave, alone, and take as long as the whole first one."""
    tiles = -(-max_context // DEC_BC)
    n_splits = max(1, min(tiles, blocks_per_sm * n_sms // max(1, n_blocks_without_split)))
    return -(-tiles // n_splits) * DEC_BC


def check_decode_inputs(q, k_pool, v_pool, block_tables, context_lens, *, alibi_slopes=None, version=None,
                        dtype=None, check_tables=True, split_len=None):
    """Validate a CUDA paged-decode call; returns (version, element type, (B, Hq, Hkv, T, D, block_size, max_blocks)).

    The table's capacity (max_blocks * block_size, which bounds every context length) and
    split_len must fit the kernels' int32 positions: at most DECODE_MAX_POSITIONS.

    check_tables=False checks the shapes and dtypes of block_tables and context_lens but not
    their values, which would need a copy to the host (and a synchronisation) on every call.
    """
    from tinytransformer.paged_attention import check_paged_decode_inputs

    kind = element_type((q, k_pool, v_pool), ("q", "k_pool", "v_pool"), dtype)
    for x, name in ((q, "q"), (k_pool, "k_pool"), (v_pool, "v_pool")):
        check_contiguous(x, name)
    if check_tables:
        tables, lens = host(block_tables), host(context_lens)
    else:  # stand-ins with the right shapes and dtypes and harmless values
        tables = np.zeros(tuple(block_tables.shape), dtype=np.dtype(block_tables.dtype))
        lens = np.ones(tuple(context_lens.shape), dtype=np.dtype(context_lens.dtype))
    B, Hq, T, D, Hkv, block_size = check_paged_decode_inputs(q, k_pool, v_pool, tables, lens, alibi_slopes)
    if B * Hkv > 2**31 - 1:
        raise ValueError(f"q: expected B * Hkv <= 2**31 - 1 (the grid limit), got {B * Hkv}")
    capacity = tables.shape[1] * block_size
    if capacity > DECODE_MAX_POSITIONS:
        raise ValueError(f"block_tables: expected max_blocks * block_size <= 2**30 = {DECODE_MAX_POSITIONS} "
                         f"positions (the kernels index keys in int32), got {tables.shape[1]} * {block_size} "
                         f"= {capacity}")
    check_slopes(alibi_slopes, Hq)
    version = check_version(3 if version is None else version, DECODE_VERSIONS)
    if split_len is not None and (not is_integer(split_len) or not DEC_BC <= split_len <= DECODE_MAX_POSITIONS
                                  or split_len % DEC_BC):
        raise ValueError(f"split_len: expected None or a multiple of {DEC_BC} in [{DEC_BC}, 2**30], "
                         f"got {split_len!r}")
    pad_head_dim(D, DECODE_HEAD_DIMS, "q")
    return version, kind, (B, Hq, Hkv, T, D, block_size, tables.shape[1])


def paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                           alibi_slopes=None, backend="cuda", version=None, dtype=None, split_len=None,
                           check_tables=True, defines=()):
    """Decode attention over a paged cache, as paged_attention.paged_decode_attention: [B, Hq, T, D].

    q [B, Hq, T, D]; k_pool, v_pool [n_blocks, Hkv, block_size, D]; block_tables
    [B, max_blocks] int; context_lens [B] int, counting the T new tokens (query t of
    sequence b sits at context_lens[b] - T + t). Output in the input dtype; an empty
    batch (B = 0) gives an empty [0, Hq, T, D] at once, on any machine.
    backend: "cuda" runs cuda_kernels/decode_attention.cu; "numpy" the reference.
    version: 1 (one block per sequence and KV head), 2 (context split) or 3 (v2 through
    registers, the default).
    split_len: v2's and v3's keys per split (a multiple of 32); chosen from the SM count when None.
    check_tables=False skips checking the values of block_tables and context_lens (which
    costs a copy to the host per call, as in a timing loop); wrong values then read wrong memory.
    dtype="bfloat16" reads uint16 arrays as bf16 bits; defines as in flash_attention.
    """
    check_backend(backend)
    if backend == "numpy":
        from tinytransformer.paged_attention import paged_decode_attention as reference

        kind = element_type((q, k_pool, v_pool), ("q", "k_pool", "v_pool"), dtype) if dtype else None
        q, k_pool, v_pool = (host_float(x, dtype) for x in (q, k_pool, v_pool))
        out = reference(q, k_pool, v_pool, host(block_tables), host(context_lens), causal=causal, scale=scale,
                        alibi_slopes=None if alibi_slopes is None else host(alibi_slopes))
        return like_input(out, q, kind)

    version, kind, (B, Hq, Hkv, T, D, block_size, max_blocks) = check_decode_inputs(
        q, k_pool, v_pool, block_tables, context_lens, alibi_slopes=alibi_slopes, version=version, dtype=dtype,
        check_tables=check_tables, split_len=split_len)
    scale = attention_scale(scale, D)
    if 0 in (B, T):  # an empty batch: nothing to launch
        xp = require_cuda() if is_cupy(q) else np
        return xp.zeros((B, Hq, T, D), dtype=STORAGE[kind])
    cupy = require_cuda()
    qd, kd, vd = (device_tensor(cupy, x) for x in (q, k_pool, v_pool))
    td = device_small(cupy, block_tables, np.int32)  # read by raw pointer: C order, int32, always
    ld = device_small(cupy, context_lens, np.int32)
    slopes = NULL if alibi_slopes is None else device_small(cupy, alibi_slopes, np.float32)
    out = cupy.empty((B, Hq, T, D), dtype=STORAGE[kind])
    G = Hq // Hkv
    rows = DEC3_ROWS if version == 3 else DEC_ROWS
    row_chunks = -(-G * T // rows)  # blocks along y: the group's G * T query rows, `rows` at a time
    module = load_module("decode_attention", tuple(defines))
    family = "decode3" if version == 3 else "decode"
    kernel = module.get_function(f"{family}_{SUFFIX[kind]}_d{pad_head_dim(D, DECODE_HEAD_DIMS, 'q')}")
    common = (Hq, Hkv, T, D, block_size, max_blocks, scale, int(bool(causal)))
    max_len = max_blocks * block_size  # the table's capacity: no copy of context_lens to the host
    if version == 1:
        split_len, n_splits = 2**31 - 1, 1
    else:
        if split_len is None:
            split_len = decode_split_len(max_len, B * Hkv * row_chunks, _sm_count(),
                                         DECODE3_BLOCKS_PER_SM if version == 3 else DECODE_BLOCKS_PER_SM)
        n_splits = -(-max_len // split_len)
    if n_splits == 1 and version != 2:  # one split: the blocks write the output themselves
        args = kernel_args(qd, kd, vd, td, ld, slopes, out, NULL, NULL, *common, int(split_len), 1)
        kernel((B * Hkv, row_chunks, 1), (THREADS,), args)
    else:
        part_o = cupy.empty((B, Hq, T, n_splits, D), dtype=cupy.float32)
        part_lse = cupy.empty((B, Hq, T, n_splits), dtype=cupy.float32)
        args = kernel_args(qd, kd, vd, td, ld, slopes, out, part_o, part_lse, *common, int(split_len), n_splits)
        kernel((B * Hkv, row_chunks, n_splits), (THREADS,), args)
        combine = module.get_function(f"decode_combine_{SUFFIX[kind]}")
        combine((B * Hq * T,), (THREADS,), kernel_args(part_o, part_lse, out, D, n_splits))
    return out if is_cupy(q) else out.get()


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    cupy = require_cuda()
    return int(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["multiProcessorCount"])
