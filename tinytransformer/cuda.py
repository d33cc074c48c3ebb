"""CUDA kernels for attention, loaded through CuPy, with the NumPy functions' signatures.

The NumPy modules say what attention computes; the kernels in `cuda_kernels/`
show how a GPU computes it fast, and the property tests check that the two
agree. This module is the bridge: it reads a `.cu` file, compiles it once per
set of defines with NVRTC (`cupy.RawModule`), validates the arguments, picks a
kernel version and a launch configuration, and launches.

    flash_attention        cuda_kernels/flash_attention.cu    v1 naive, v2 tiled fp32,
                           (like flash.flash_attention)        v3 tensor cores fp16/bf16
    paged_decode_attention cuda_kernels/decode_attention.cu   v1 block per (seq, KV head),
                           (like paged_cache.paged_decode_attention)  v2 split context

Backend switch: each function takes `backend="cuda"` (the default here) or
`backend="numpy"`, which calls the NumPy reference with the same arguments, so
one test body, parametrised over the backend, checks both. The NumPy modules
themselves never dispatch: a student reading `flash.py` sees only NumPy.

Arrays: NumPy arrays in -> copied to the GPU, results copied back as NumPy;
CuPy arrays in -> CuPy arrays out, no copies (they must be C-contiguous).
bfloat16: NumPy and CuPy have no bfloat16 dtype, so bf16 tensors travel as
uint16 arrays of bit patterns with `dtype="bfloat16"`; `to_bfloat16_bits` and
`from_bfloat16_bits` convert. Outputs come in the input dtype (uint16 bits for
bf16); the log-sum-exp is float32.

Without CuPy or a GPU the CUDA backend raises CudaUnavailable with the reason;
the argument checks run first, so they work (and are tested) on any machine.

    >>> import numpy as np
    >>> from_bfloat16_bits(to_bfloat16_bits(np.array([1.0, 3.0, 1 / 3]))).tolist()
    [1.0, 3.0, 0.333984375]

Does not handle: the backward pass, boolean masks other than causal, sliding
windows, head dims above 128, CUDA graphs or streams other than the current one.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "CudaUnavailable",
    "KERNEL_DIR",
    "PLANTED_BUGS",
    "FLASH_VERSIONS",
    "DECODE_VERSIONS",
    "cuda_status",
    "require_cuda",
    "kernel_source",
    "compile_options",
    "load_module",
    "kernel_budget",
    "to_bfloat16_bits",
    "from_bfloat16_bits",
    "flash_attention",
    "paged_decode_attention",
]

KERNEL_DIR = Path(__file__).resolve().parent.parent / "cuda_kernels"
PLANTED_BUGS = ("PLANTED_BUG_NO_RESCALE", "PLANTED_BUG_CAUSAL_OFF_BY_ONE")
FLASH_VERSIONS = (1, 2, 3)
DECODE_VERSIONS = (1, 2)
BACKENDS = ("numpy", "cuda")

# Tile constants, mirrored from the #defines of the .cu files (a test checks that they agree).
THREADS = 128
V2_BR = 32
V3_BR = 64
V3_PAD = 8
DEC_ROWS = 16
DEC_BC = 32
FLASH_HEAD_DIMS = {1: None, 2: (32, 64, 128), 3: (64, 128)}  # padded head dims per version
DECODE_HEAD_DIMS = (64, 128)


def v2_block_k(head_dim_pad: int) -> int:
    return 16 if head_dim_pad >= 128 else 32  # V2_BC in flash_attention.cu


def v3_block_k(head_dim_pad: int) -> int:
    return 32 if head_dim_pad >= 128 else 64  # V3_BC in flash_attention.cu


class CudaUnavailable(RuntimeError):
    """The CUDA backend was asked for but CuPy, a GPU or the kernel sources are missing."""


# --- CuPy, sources and compilation ----------------------------------------------------


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(True, device name) when CuPy and a GPU are usable, else (False, why not)."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install cupy-cuda12x, or cupy-cuda13x on a CUDA 13 driver)"
    except Exception as error:  # a broken CuPy install raises all sorts of things at import
        return False, f"CuPy failed to import: {error}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return False, f"CuPy found no usable CUDA driver or GPU: {error}"
    if n < 1:
        return False, "CuPy found no CUDA GPU"
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return True, name


def require_cuda():
    """Import and return cupy, or raise CudaUnavailable saying why it cannot be used."""
    ok, why = cuda_status()
    if not ok:
        raise CudaUnavailable(f"the CUDA backend needs CuPy and a GPU: {why}; use backend='numpy'")
    import cupy

    return cupy


def kernel_source(name: str) -> str:
    """The text of cuda_kernels/NAME.cu."""
    path = KERNEL_DIR / f"{name}.cu"
    if not path.is_file():
        raise CudaUnavailable(f"kernel source {path} not found (the cuda_kernels/ folder of a source checkout)")
    return path.read_text()


def _cuda_include_dirs() -> list[str]:
    candidates = [os.environ.get(v) for v in ("CUDA_PATH", "CUDA_HOME")] + ["/usr/local/cuda"]
    try:
        import cupy

        candidates.insert(0, cupy.cuda.get_cuda_path())
    except Exception:
        pass
    return [str(Path(c) / "include") for c in candidates if c and (Path(c) / "include" / "cuda_fp16.h").is_file()][:1]


def compile_options(defines=(), *, include_dirs=None) -> tuple[str, ...]:
    """NVRTC/nvcc options: C++17, the CUDA include folder for cuda_fp16.h, and -D defines."""
    dirs = _cuda_include_dirs() if include_dirs is None else list(include_dirs)
    return ("-std=c++17",) + tuple(f"-I{d}" for d in dirs) + tuple(f"-D{d}" for d in defines)


@functools.lru_cache(maxsize=None)
def load_module(name: str, defines: tuple = ()):
    """cupy.RawModule for cuda_kernels/NAME.cu built with `defines`; compiled once, then cached."""
    cupy = require_cuda()
    unknown = [d for d in defines if d not in PLANTED_BUGS]
    if unknown:
        raise ValueError(f"defines: expected names from {PLANTED_BUGS}, got {unknown}")
    return cupy.RawModule(code=kernel_source(name), options=compile_options(defines))


# --- the resource budget of each kernel, from the tile constants ----------------------


def kernel_budget(kernel: str, head_dim: int) -> dict:
    """Threads, tile shape, static shared memory and per-thread state of one kernel version.

    kernel: "flash_v1", "flash_v2", "flash_v3" or "decode"; head_dim: D (padded as the
    launcher pads it). state_floats counts the 32-bit registers holding the online-softmax
    state and the operand fragments the kernel keeps across its key loop (a lower bound
    on the registers ptxas reports).
    """
    f32, f16 = 4, 2
    if kernel == "flash_v1":
        return dict(threads=THREADS, rows_per_block=THREADS, keys_per_tile=None, head_dim_pad=head_dim,
                    smem_bytes=0, state_floats=2)  # m and l; everything else is read from global memory
    if kernel == "flash_v2":
        D = _pad(head_dim, FLASH_HEAD_DIMS[2], "head_dim")
        Br, Bc = V2_BR, v2_block_k(D)
        smem = (Br * (D + 1) + Bc * (D + 1) + Bc * D + Br * (Bc + 1)) * f32  # Qs, Ks, Vs, Ps
        return dict(threads=THREADS, rows_per_block=Br, keys_per_tile=Bc, head_dim_pad=D, smem_bytes=smem,
                    state_floats=2 + D // 4 + Bc // 4)  # m, l; O columns; scores of the tile
    if kernel == "flash_v3":
        D = _pad(head_dim, FLASH_HEAD_DIMS[3], "head_dim")
        Br, Bc = V3_BR, v3_block_k(D)
        smem = (Br * (D + V3_PAD) + Bc * (D + V3_PAD) + D * (Bc + V3_PAD)) * f16  # Qs, Ks, Vt
        # per lane: Q fragments (D/16 x 4 regs), O (D/8 x 4), S/P (Bc/8 x 4), m and l of 2 rows
        return dict(threads=THREADS, rows_per_block=Br, keys_per_tile=Bc, head_dim_pad=D, smem_bytes=smem,
                    state_floats=D // 16 * 4 + D // 8 * 4 + Bc // 8 * 4 + 4)
    if kernel == "decode":
        D = _pad(head_dim, DECODE_HEAD_DIMS, "head_dim")
        smem = (DEC_ROWS * (D + 4) + DEC_BC * (D + 4) + DEC_BC * D + DEC_ROWS * (DEC_BC + 1) + 3 * DEC_ROWS) * f32
        return dict(threads=THREADS, rows_per_block=DEC_ROWS, keys_per_tile=DEC_BC, head_dim_pad=D,
                    smem_bytes=smem, state_floats=2 + DEC_BC // 8 + DEC_ROWS * D // THREADS)
    raise ValueError(f"kernel: expected one of 'flash_v1', 'flash_v2', 'flash_v3', 'decode', got {kernel!r}")


def _pad(head_dim: int, choices, name: str) -> int:
    for c in choices:
        if head_dim <= c:
            return c
    raise ValueError(f"{name}: expected a head dim <= {max(choices)} (the kernels are built for "
                     f"{', '.join(map(str, choices))}), got {head_dim}")


# --- bfloat16 as uint16 bit patterns -------------------------------------------------


def to_bfloat16_bits(x) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the bits as uint16."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round the low 16 bits away, ties to even
    rounded = np.where(np.isnan(x), 0x7FC0, rounded)  # keep NaN a NaN
    return rounded.astype(np.uint16)


def from_bfloat16_bits(bits) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 values (exact)."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise ValueError(f"bits: expected a uint16 array of bfloat16 bit patterns, got dtype {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)


# --- argument checks (no GPU needed) ---------------------------------------------------

_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _element_type(arrays, names, dtype) -> str:
    """The element type name shared by the arrays: float32, float16 or bfloat16 (uint16 bits)."""
    for x, name in zip(arrays, names):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    kinds = {np.dtype(x.dtype).name for x in arrays}
    if len(kinds) != 1:
        got = ", ".join(f"{n}={np.dtype(x.dtype).name}" for x, n in zip(arrays, names))
        raise ValueError(f"{', '.join(names)}: expected one dtype for all, got {got}")
    kind = kinds.pop()
    if dtype is not None and dtype != "bfloat16":
        raise ValueError(f"dtype: expected None or 'bfloat16', got {dtype!r}")
    if dtype == "bfloat16":
        if kind != "uint16":
            raise ValueError(f"{names[0]}: dtype='bfloat16' expects uint16 arrays of bf16 bit patterns "
                             f"(see to_bfloat16_bits), got dtype {kind}")
        return "bfloat16"
    if kind == "uint16":
        raise ValueError(f"{names[0]}: uint16 arrays are read as bfloat16 only with dtype='bfloat16'")
    if kind not in ("float32", "float16"):
        raise ValueError(f"{names[0]}: expected float32, float16 or bfloat16 (uint16 bits with "
                         f"dtype='bfloat16'), got dtype {kind}")
    return kind


def _check_contiguous(x, name):
    flags = getattr(x, "flags", None)
    if flags is not None and not flags["C_CONTIGUOUS"] and type(x).__module__.startswith("cupy"):
        raise ValueError(f"{name}: expected a C-contiguous array; call cupy.ascontiguousarray({name}) first")


def _check_scale(scale, D):
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale!r}")
    return float(scale)


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def check_flash_inputs(q, k, v, *, alibi_slopes=None, version=None, dtype=None):
    """Validate a flash_attention call for the CUDA backend; returns (version, element type, shapes)."""
    kind = _element_type((q, k, v), ("q", "k", "v"), dtype)
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if len(x.shape) != 4:
            raise ValueError(f"{name}: expected rank 4 [B, H, T, D], got shape {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"{name}: expected every dimension >= 1, got shape {tuple(x.shape)}")
        _check_contiguous(x, name)
    B, Hq, T, D = q.shape
    _, Hkv, S, _ = k.shape
    if k.shape[0] != B:
        raise ValueError(f"k: batch size {k.shape[0]} does not match q's batch size {B}")
    if k.shape[3] != D:
        raise ValueError(f"k: head dim {k.shape[3]} does not match q's head dim {D}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if Hq % Hkv:
        raise ValueError(f"q has {Hq} heads but k has {Hkv}; n_heads must be a multiple of n_kv_heads")
    if B > 65535 or Hq > 65535:
        raise ValueError(f"q: expected B and Hq <= 65535 (grid limits), got B={B}, Hq={Hq}")
    if version is None:
        version = 2 if kind == "float32" else 3
    if version not in FLASH_VERSIONS:
        raise ValueError(f"version: expected one of {FLASH_VERSIONS}, got {version!r}")
    wanted = ("float32",) if version in (1, 2) else ("float16", "bfloat16")
    if kind not in wanted:
        raise ValueError(f"q: flash v{version} takes {' or '.join(wanted)}, got {kind}"
                         + ("; use version=3 for half precision" if version != 3 else "; use version=2 for float32"))
    if version != 1:
        _pad(D, FLASH_HEAD_DIMS[version], "q")
    if alibi_slopes is not None and tuple(np.shape(alibi_slopes)) != (Hq,):
        raise ValueError(f"alibi_slopes: expected shape [Hq] = [{Hq}], got {tuple(np.shape(alibi_slopes))}")
    return version, kind, (B, Hq, Hkv, T, S, D)


def check_decode_inputs(q, k_pool, v_pool, block_tables, context_lens, *, alibi_slopes=None, version=None,
                        dtype=None, check_tables=True):
    """Validate a paged_decode_attention call for the CUDA backend; returns (version, element type, shapes).

    check_tables=False checks the shapes and dtypes of block_tables and context_lens but not
    their values, which would need a copy to the host (and a synchronisation) on every call.
    """
    from tinytransformer.paged_cache import check_paged_decode_inputs

    kind = _element_type((q, k_pool, v_pool), ("q", "k_pool", "v_pool"), dtype)
    for x, name in ((q, "q"), (k_pool, "k_pool"), (v_pool, "v_pool")):
        _check_contiguous(x, name)
    if check_tables:
        tables, lens = _host(block_tables), _host(context_lens)
    else:  # stand-ins with the right shapes and dtypes and harmless values
        tables = np.zeros(tuple(block_tables.shape), dtype=np.dtype(block_tables.dtype))
        lens = np.ones(tuple(context_lens.shape), dtype=np.dtype(context_lens.dtype))
    B, Hq, T, D, Hkv, block_size = check_paged_decode_inputs(q, k_pool, v_pool, tables, lens, alibi_slopes)
    if 0 in q.shape:
        raise ValueError(f"q: expected every dimension >= 1, got shape {tuple(q.shape)}")
    if B * Hkv > 2**31 - 1:
        raise ValueError(f"q: B * Hkv = {B * Hkv} exceeds the grid limit")
    version = 2 if version is None else version
    if version not in DECODE_VERSIONS:
        raise ValueError(f"version: expected one of {DECODE_VERSIONS}, got {version!r}")
    _pad(D, DECODE_HEAD_DIMS, "q")
    return version, kind, (B, Hq, Hkv, T, D, block_size, tables.shape[1])


def _host(x) -> np.ndarray:
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


# --- the launchers -------------------------------------------------------------------


def _to_device(cupy, x, dtype=None):
    if type(x).__module__.startswith("cupy"):
        return x if dtype is None else x.astype(dtype, copy=False)
    return cupy.asarray(np.ascontiguousarray(x if dtype is None else np.asarray(x, dtype=dtype)))


def _null_pointer():
    return np.uint64(0)  # a kernel pointer argument packed as 8 zero bytes: nullptr


def _kernel_args(*values):
    """Python ints -> int32, floats -> float32, as the kernels declare them."""
    out = []
    for x in values:
        if isinstance(x, np.uint64):  # a null pointer from _null_pointer: keep all 8 bytes
            out.append(x)
        elif isinstance(x, (bool, np.bool_)):
            out.append(np.int32(int(x)))
        elif isinstance(x, (int, np.integer)):
            out.append(np.int32(x))
        elif isinstance(x, (float, np.floating)):
            out.append(np.float32(x))
        else:
            out.append(x)
    return tuple(out)


def flash_attention(q, k, v, *, causal=False, scale=None, alibi_slopes=None, return_lse=False,
                    backend="cuda", version=None, dtype=None, defines=()):
    """Exact attention, as flash.flash_attention: out [B, Hq, T, D] (and lse [B, Hq, T] fp32).

    backend: "cuda" runs cuda_kernels/flash_attention.cu; "numpy" runs flash.flash_attention.
    version: 1 (naive) or 2 (tiled) for float32, 3 (tensor cores) for float16/bfloat16;
    defaults to 2 for float32 and 3 otherwise. dtype="bfloat16" reads uint16 arrays as bf16
    bits. defines: compile-time defines for the build (the planted-bug tests use them).
    """
    _check_backend(backend)
    if backend == "numpy":
        from tinytransformer.flash import flash_attention_with_lse as reference

        kind = _element_type((q, k, v), ("q", "k", "v"), dtype) if dtype else None
        q, k, v = (_host_float(x, dtype) for x in (q, k, v))
        out, lse = reference(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
        return (_like_input(out, q, kind), lse) if return_lse else _like_input(out, q, kind)

    version, kind, (B, Hq, Hkv, T, S, D) = check_flash_inputs(q, k, v, alibi_slopes=alibi_slopes,
                                                              version=version, dtype=dtype)
    scale = _check_scale(scale, D)
    cupy = require_cuda()
    on_host = not type(q).__module__.startswith("cupy")
    store = np.float32 if kind == "float32" else (np.float16 if kind == "float16" else np.uint16)
    qd, kd, vd = (_to_device(cupy, x) for x in (q, k, v))
    slopes = _null_pointer() if alibi_slopes is None else _to_device(cupy, alibi_slopes, np.float32)
    out = cupy.empty((B, Hq, T, D), dtype=store)
    lse = cupy.empty((B, Hq, T), dtype=cupy.float32)
    module = load_module("flash_attention", tuple(defines))
    args = _kernel_args(qd, kd, vd, out, lse, slopes, B, Hq, Hkv, T, S, D, scale, int(bool(causal)))
    if version == 1:
        kernel = module.get_function("flash_v1_fp32")
        kernel(((B * Hq * T + THREADS - 1) // THREADS,), (THREADS,), args)
    elif version == 2:
        pad = _pad(D, FLASH_HEAD_DIMS[2], "q")
        kernel = module.get_function(f"flash_v2_fp32_d{pad}")
        kernel(((T + V2_BR - 1) // V2_BR, Hq, B), (THREADS,), args)
    else:
        pad = _pad(D, FLASH_HEAD_DIMS[3], "q")
        kernel = module.get_function(f"flash_v3_{_DTYPE_NAMES[kind]}_d{pad}")
        kernel(((T + V3_BR - 1) // V3_BR, Hq, B), (THREADS,), args)
    if on_host:
        out, lse = out.get(), lse.get()
    return (out, lse) if return_lse else out


DECODE_BLOCKS_PER_SM = 4  # decode is memory-bound: keep several blocks (4 warps each) per SM reading


def decode_split_len(max_context: int, n_blocks_without_split: int, n_sms: int) -> int:
    """v2's keys per split: enough splits for DECODE_BLOCKS_PER_SM blocks per SM, whole tiles each."""
    tiles = -(-max_context // DEC_BC)
    n_splits = max(1, min(tiles, -(-DECODE_BLOCKS_PER_SM * n_sms // max(1, n_blocks_without_split))))
    return -(-tiles // n_splits) * DEC_BC


def paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None,
                           alibi_slopes=None, backend="cuda", version=None, dtype=None, split_len=None,
                           check_tables=True, defines=()):
    """Decode attention over a paged cache, as paged_cache.paged_decode_attention: [B, Hq, T, D].

    backend: "cuda" runs cuda_kernels/decode_attention.cu; "numpy" the reference.
    version: 1 (one block per sequence and KV head) or 2 (context split, default).
    split_len: v2's keys per split (a multiple of 32); chosen from the SM count when None.
    check_tables=False skips checking the values of block_tables and context_lens (which
    costs a copy to the host per call, as in a timing loop); wrong values then read wrong memory.
    dtype="bfloat16" reads uint16 arrays as bf16 bits; defines as in flash_attention.
    """
    _check_backend(backend)
    if backend == "numpy":
        from tinytransformer.paged_cache import paged_decode_attention as reference

        kind = _element_type((q, k_pool, v_pool), ("q", "k_pool", "v_pool"), dtype) if dtype else None
        q, k_pool, v_pool = (_host_float(x, dtype) for x in (q, k_pool, v_pool))
        out = reference(q, k_pool, v_pool, _host(block_tables), _host(context_lens), causal=causal,
                        scale=scale, alibi_slopes=alibi_slopes)
        return _like_input(out, q, kind)

    version, kind, (B, Hq, Hkv, T, D, block_size, max_blocks) = check_decode_inputs(
        q, k_pool, v_pool, block_tables, context_lens, alibi_slopes=alibi_slopes, version=version, dtype=dtype,
        check_tables=check_tables)
    scale = _check_scale(scale, D)
    if split_len is not None and (isinstance(split_len, bool) or not isinstance(split_len, (int, np.integer))
                                  or split_len < DEC_BC or split_len % DEC_BC):
        raise ValueError(f"split_len: expected a positive multiple of {DEC_BC}, got {split_len!r}")
    cupy = require_cuda()
    on_host = not type(q).__module__.startswith("cupy")
    store = np.float32 if kind == "float32" else (np.float16 if kind == "float16" else np.uint16)
    qd, kd, vd = (_to_device(cupy, x) for x in (q, k_pool, v_pool))
    td = _to_device(cupy, block_tables, np.int32)
    ld = _to_device(cupy, context_lens, np.int32)
    slopes = _null_pointer() if alibi_slopes is None else _to_device(cupy, alibi_slopes, np.float32)
    out = cupy.empty((B, Hq, T, D), dtype=store)
    G = Hq // Hkv
    row_chunks = -(-G * T // DEC_ROWS)
    module = load_module("decode_attention", tuple(defines))
    pad = _pad(D, DECODE_HEAD_DIMS, "q")
    kernel = module.get_function(f"decode_{_DTYPE_NAMES[kind]}_d{pad}")
    common = (Hq, Hkv, T, D, block_size, max_blocks, scale, int(bool(causal)))
    if version == 1:
        args = _kernel_args(qd, kd, vd, td, ld, slopes, out, _null_pointer(), _null_pointer(), *common,
                            2**31 - 1, 1)
        kernel((B * Hkv, row_chunks, 1), (THREADS,), args)
    else:
        max_len = max_blocks * block_size  # the table's capacity: no copy of context_lens to the host
        if split_len is None:
            split_len = decode_split_len(max_len, B * Hkv * row_chunks, _sm_count())
        n_splits = -(-max_len // split_len)
        part_o = cupy.empty((B, Hq, T, n_splits, D), dtype=cupy.float32)
        part_lse = cupy.empty((B, Hq, T, n_splits), dtype=cupy.float32)
        args = _kernel_args(qd, kd, vd, td, ld, slopes, out, part_o, part_lse, *common, int(split_len), n_splits)
        kernel((B * Hkv, row_chunks, n_splits), (THREADS,), args)
        combine = module.get_function(f"decode_combine_{_DTYPE_NAMES[kind]}")
        combine((B * Hq * T,), (THREADS,), _kernel_args(part_o, part_lse, out, D, n_splits))
    return out.get() if on_host else out


def _like_input(out, q, kind):
    """The NumPy backend's output in the input's storage: bf16 bits back to uint16, else q's dtype."""
    if kind == "bfloat16":
        return to_bfloat16_bits(out)
    return np.asarray(out).astype(q.dtype, copy=False) if q.dtype.kind == "f" else out


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    cupy = require_cuda()
    return int(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["multiProcessorCount"])


def _host_float(x, dtype):
    """A host float array for the NumPy backend (bf16 bits decoded to float32)."""
    x = _host(x)
    if dtype == "bfloat16":
        return from_bfloat16_bits(x)
    return x
