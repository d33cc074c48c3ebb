"""The flash-attention launcher: cuda_kernels/flash_attention.cu with tinytransformer.flash's signature.

    flash_attention(q, k, v, ...)            out [B, Hq, T, D], in the input dtype
    flash_attention_with_lse(q, k, v, ...)   (out, lse [B, Hq, T] float32)

backend="numpy" calls tinytransformer.flash.flash_attention / flash_attention_with_lse
with the same arguments (host NumPy in and out); backend="cuda" validates, picks a
version and a grid, and launches: v1 one thread per query row, v2 and v3 one block per
(query tile, head, batch).
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import attention_scale, attention_shapes
from tinytransformer.cuda.arrays import (NULL, STORAGE, SUFFIX, check_backend, check_contiguous, check_slopes,
                                         check_version, device_small, device_tensor, element_type, host,
                                         host_float, is_cupy, kernel_args, like_input)
from tinytransformer.cuda.build import (FLASH_HEAD_DIMS, FLASH_VERSIONS, THREADS, V2_BR, V3_BR, load_module,
                                        pad_head_dim, require_cuda)

__all__ = ["flash_attention", "flash_attention_with_lse", "check_flash_inputs"]

GRID_LIMIT = 65535  # blocks along grid y (heads) and z (batch)


def check_flash_inputs(q, k, v, *, alibi_slopes=None, version=None, dtype=None):
    """Validate a CUDA flash call; returns (version, element type, (B, Hq, Hkv, T, S, D)).

    The shapes go through tinytransformer._validate.attention_shapes, as in the NumPy
    functions; then what the kernels add: one element type, C-contiguous CuPy tensors,
    v's head dim equal to q's, the grid limits, and a head dim the version is built for.
    """
    kind = element_type((q, k, v), ("q", "k", "v"), dtype)
    B, Hq, Hkv, T, S, D, Dv = attention_shapes(q, k, v)
    if Dv != D:
        raise ValueError(f"v: expected head dim {D} (q's; the kernels need Dv = D), got {Dv}")
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        check_contiguous(x, name)
    if B > GRID_LIMIT or Hq > GRID_LIMIT:
        raise ValueError(f"q: expected B and Hq <= {GRID_LIMIT} (grid limits), got B={B}, Hq={Hq}")
    version = check_version((2 if kind == "float32" else 3) if version is None else version, FLASH_VERSIONS)
    wanted = ("float32",) if version in (1, 2) else ("float16", "bfloat16")
    if kind not in wanted:
        raise ValueError(f"q: flash v{version} takes {' or '.join(wanted)}, got {kind}"
                         + ("; use version=3 for half precision" if version != 3 else "; use version=2 for float32"))
    if version != 1:
        pad_head_dim(D, FLASH_HEAD_DIMS[version], "q")
    check_slopes(alibi_slopes, Hq)
    return version, kind, (B, Hq, Hkv, T, S, D)


def flash_attention(q, k, v, *, causal=False, scale=None, alibi_slopes=None, backend="cuda", version=None,
                    dtype=None, defines=()):
    """Exact attention, as tinytransformer.flash.flash_attention: out [B, Hq, T, D] in the input dtype.

    q [B, Hq, T, D]; k, v [B, Hkv, S, D] (GQA by sharing); causal is end-aligned (query i at
    key position S - T + i); scale defaults to 1/sqrt(D); alibi_slopes: optional [Hq].
    backend: "cuda" runs cuda_kernels/flash_attention.cu; "numpy" runs tinytransformer.flash.
    version: 1 (naive) or 2 (tiled) for float32, 3 (tensor cores) for float16/bfloat16;
    defaults to 2 for float32 and 3 otherwise. dtype="bfloat16" reads uint16 arrays as bf16
    bits (and returns bf16 bits). defines: compile-time defines for the build (the
    planted-bug tests use them). NumPy arrays in give NumPy out, CuPy in give CuPy out.
    """
    check_backend(backend)
    if backend == "numpy":
        from tinytransformer.flash import flash_attention as reference

        q, k, v, slopes, kind = _numpy_inputs(q, k, v, alibi_slopes, dtype)
        return like_input(reference(q, k, v, causal=causal, scale=scale, alibi_slopes=slopes), q, kind)
    return _launch(q, k, v, causal, scale, alibi_slopes, version, dtype, defines)[0]


def flash_attention_with_lse(q, k, v, *, causal=False, scale=None, alibi_slopes=None, backend="cuda",
                             version=None, dtype=None, defines=()):
    """(out, lse): flash_attention and each row's log-sum-exp [B, Hq, T] (float32 from the kernels).

    lse = log sum_j exp(score_j), -inf for a row that sees no key. Arguments as in
    flash_attention; backend="numpy" runs tinytransformer.flash.flash_attention_with_lse.
    """
    check_backend(backend)
    if backend == "numpy":
        from tinytransformer.flash import flash_attention_with_lse as reference

        q, k, v, slopes, kind = _numpy_inputs(q, k, v, alibi_slopes, dtype)
        out, lse = reference(q, k, v, causal=causal, scale=scale, alibi_slopes=slopes)
        return like_input(out, q, kind), lse
    return _launch(q, k, v, causal, scale, alibi_slopes, version, dtype, defines)


def _numpy_inputs(q, k, v, alibi_slopes, dtype):
    """Host arrays for the NumPy backend (bf16 bits decoded) and the element type to return."""
    kind = element_type((q, k, v), ("q", "k", "v"), dtype) if dtype else None
    q, k, v = (host_float(x, dtype) for x in (q, k, v))
    return q, k, v, None if alibi_slopes is None else host(alibi_slopes), kind


def _launch(q, k, v, causal, scale, alibi_slopes, version, dtype, defines):
    """Validate, then run the kernel version; returns (out, lse)."""
    version, kind, (B, Hq, Hkv, T, S, D) = check_flash_inputs(q, k, v, alibi_slopes=alibi_slopes,
                                                              version=version, dtype=dtype)
    scale = attention_scale(scale, D)
    if 0 in (B, T, S):  # nothing to launch: empty output, or rows that see no key (zeros, lse = -inf)
        return _no_keys(q, (B, Hq, T, D), STORAGE[kind])
    cupy = require_cuda()
    qd, kd, vd = (device_tensor(cupy, x) for x in (q, k, v))
    slopes = NULL if alibi_slopes is None else device_small(cupy, alibi_slopes, np.float32)
    out = cupy.empty((B, Hq, T, D), dtype=STORAGE[kind])
    lse = cupy.empty((B, Hq, T), dtype=cupy.float32)
    module = load_module("flash_attention", tuple(defines))
    args = kernel_args(qd, kd, vd, out, lse, slopes, B, Hq, Hkv, T, S, D, scale, int(bool(causal)))
    if version == 1:
        kernel = module.get_function("flash_v1_fp32")
        kernel((-(-B * Hq * T // THREADS),), (THREADS,), args)  # one thread per query row
    elif version == 2:
        kernel = module.get_function(f"flash_v2_fp32_d{pad_head_dim(D, FLASH_HEAD_DIMS[2], 'q')}")
        kernel((-(-T // V2_BR), Hq, B), (THREADS,), args)  # a block per (query tile, head, batch)
    else:
        kernel = module.get_function(f"flash_v3_{SUFFIX[kind]}_d{pad_head_dim(D, FLASH_HEAD_DIMS[3], 'q')}")
        kernel((-(-T // V3_BR), Hq, B), (THREADS,), args)
    if not is_cupy(q):
        return out.get(), lse.get()
    return out, lse


def _no_keys(q, shape, store):
    """The result of attention with no query rows or no keys, without a launch: zeros and lse = -inf."""
    xp = require_cuda() if is_cupy(q) else np
    return xp.zeros(shape, dtype=store), xp.full(shape[:3], -np.inf, dtype=np.float32)
