"""CUDA kernels for attention, loaded through CuPy, with the NumPy functions' signatures.

The NumPy modules say what attention computes; the kernels in
`cuda_kernels/` (top level) show how a GPU computes it fast, and the property
tests check that the two agree. This package is the bridge: it reads a `.cu`
file, compiles it once per set of defines with NVRTC (`cupy.RawModule`),
validates the arguments, picks a kernel version and a launch configuration, and
launches.

    flash_attention            cuda_kernels/flash_attention.cu    v1 naive, v2 tiled fp32,
    flash_attention_with_lse   (like tinytransformer.flash)       v3 tensor cores fp16/bf16
    paged_decode_attention     cuda_kernels/decode_attention.cu   v1 block per (seq, KV head),
                               (like paged_attention's)           v2 split context, v3 v2 from registers

One module per concern: `build` (CuPy and the GPU, the sources and their shared
header `common.cuh`, the tile constants passed as -D defines, NVRTC, the module
cache, the resource budget), `arrays` (element types, layouts, device copies,
argument widths), `flash` and `decode` (the launchers).

Backend switch: each function takes `backend="cuda"` (the default here) or
`backend="numpy"`, which calls the NumPy reference with the same arguments, so
one test body, parametrised over the backend, checks both. The NumPy modules
themselves never dispatch: a student reading `flash.py` sees only NumPy.

Arrays: NumPy arrays in -> copied to the GPU, results copied back as NumPy;
CuPy arrays in -> CuPy arrays out, no copies of q, k, v or the pools (which must
be C-contiguous). bfloat16: NumPy and CuPy have no bfloat16 dtype, so bf16
tensors travel as uint16 arrays of bit patterns with `dtype="bfloat16"`
(`tinytransformer.bfloat16` converts). Outputs come in the input dtype (uint16
bits for bf16); the log-sum-exp is float32.

Without CuPy or a GPU the CUDA backend raises CudaUnavailable with the reason;
the argument checks run first, so they work (and are tested) on any machine.

    >>> import numpy as np
    >>> q = k = v = np.ones((1, 2, 3, 4), np.float32)
    >>> flash_attention(q, k, v, causal=True, backend="numpy").shape
    (1, 2, 3, 4)
    >>> from_bfloat16_bits(to_bfloat16_bits(np.array([1.0, 3.0, 1 / 3]))).tolist()
    [1.0, 3.0, 0.333984375]

`python -m tinytransformer.cuda` says whether the CUDA backend works here;
`python -m tinytransformer.cuda --ptxas` compiles every kernel with nvcc and
prints ptxas's registers, spills and shared memory per kernel.

Does not handle: the backward pass, boolean masks other than causal, sliding
windows, head dims above 128, CUDA graphs or streams other than the current one.
"""
from __future__ import annotations

from tinytransformer.bfloat16 import from_bfloat16_bits, to_bfloat16_bits
from tinytransformer.cuda.build import (DEC3_MIN_BLOCKS, DEC3_ROWS, DEC3_UNROLL, DEC_BC, DEC_ROWS, DECODE_HEAD_DIMS,
                                        DECODE_VERSIONS, FLASH_HEAD_DIMS, FLASH_VERSIONS, KERNEL_DIR, KERNEL_PACKAGE,
                                        PLANTED_BUGS,
                                        THREADS, V2_BC, V2_BR, V3_BC,
                                        V3_BR, V3_PAD, CudaUnavailable, compile_options, cuda_status,
                                        kernel_budget, kernel_source, load_module, require_cuda, tile_defines,
                                        v2_block_k, v3_block_k)
from tinytransformer.cuda.decode import (DECODE3_BLOCKS_PER_SM, DECODE_BLOCKS_PER_SM, check_decode_inputs,
                                         decode_split_len,
                                         paged_decode_attention)
from tinytransformer.cuda.flash import check_flash_inputs, flash_attention, flash_attention_with_lse

__all__ = [
    "CudaUnavailable",
    "KERNEL_DIR",
    "KERNEL_PACKAGE",
    "PLANTED_BUGS",
    "FLASH_VERSIONS",
    "DECODE_VERSIONS",
    "FLASH_HEAD_DIMS",
    "DECODE_HEAD_DIMS",
    "THREADS", "V2_BR", "V2_BC", "V3_BR", "V3_BC", "V3_PAD", "DEC_ROWS", "DEC_BC",
    "DEC3_ROWS", "DEC3_UNROLL", "DEC3_MIN_BLOCKS",
    "DECODE_BLOCKS_PER_SM",
    "DECODE3_BLOCKS_PER_SM",
    "cuda_status",
    "require_cuda",
    "kernel_source",
    "compile_options",
    "tile_defines",
    "load_module",
    "kernel_budget",
    "v2_block_k",
    "v3_block_k",
    "to_bfloat16_bits",
    "from_bfloat16_bits",
    "check_flash_inputs",
    "check_decode_inputs",
    "decode_split_len",
    "flash_attention",
    "flash_attention_with_lse",
    "paged_decode_attention",
]
