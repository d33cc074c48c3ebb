"""What crosses into a kernel: element types, layouts, device copies and argument widths.

A kernel receives raw pointers and reads element `i` at `pointer + i`: it assumes
C order and its own element type. So every array is checked or converted here
before a launch. The big tensors (q, k, v, the pools) must already be
C-contiguous when they are CuPy arrays (a silent copy would hide its cost);
the small ones (block tables, lengths, slopes) are copied to C order and the
kernel's dtype whenever they are not.

    >>> import numpy as np
    >>> element_type((np.zeros(2, np.float16),), ("q",), None)
    'float16'
    >>> [type(a).__name__ for a in kernel_args(3, 0.5, True)]   # the widths the kernels declare
    ['int32', 'float32', 'int32']
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import is_integer, is_real
from tinytransformer.bfloat16 import from_bfloat16_bits, to_bfloat16_bits

BACKENDS = ("numpy", "cuda")
STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # element type -> array dtype
SUFFIX = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # element type -> kernel name suffix


def is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def element_type(arrays, names, dtype) -> str:
    """The element type the arrays share: float32, float16 or bfloat16 (uint16 bits with dtype='bfloat16')."""
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
            raise ValueError(f"{names[0]}: expected uint16 arrays of bf16 bit patterns with dtype='bfloat16' "
                             f"(see to_bfloat16_bits), got dtype {kind}")
        return "bfloat16"
    if kind == "uint16":
        raise ValueError(f"{names[0]}: expected dtype='bfloat16' with uint16 arrays (they are read as bf16 "
                         "bit patterns only then), got dtype=None")
    if kind not in ("float32", "float16"):
        raise ValueError(f"{names[0]}: expected float32, float16 or bfloat16 (uint16 bits with "
                         f"dtype='bfloat16'), got dtype {kind}")
    return kind


def check_version(version, versions: tuple) -> int:
    """version as an int, or ValueError unless it is one of the integers in versions (not a bool, not 3.0)."""
    if not is_integer(version) or version not in versions:
        kind = "" if is_integer(version) else f" (a {type(version).__name__}, not an integer)"
        raise ValueError(f"version: expected one of {versions}, got {version!r}{kind}")
    return int(version)


def check_slopes(alibi_slopes, n_heads: int):
    """alibi_slopes must be None or a floating-point array [Hq] (the kernels read it as float32)."""
    if alibi_slopes is None:
        return
    shape = tuple(np.shape(alibi_slopes))
    if shape != (n_heads,):
        raise ValueError(f"alibi_slopes: expected shape [Hq] = [{n_heads}], got {shape}")
    dtype = np.dtype(alibi_slopes.dtype) if hasattr(alibi_slopes, "dtype") else np.asarray(alibi_slopes).dtype
    if dtype.kind != "f":
        raise ValueError(f"alibi_slopes: expected None or a floating-point array [Hq] = [{n_heads}], "
                         f"got dtype {dtype}")


def check_contiguous(x, name: str):
    """A CuPy tensor must be C-contiguous (NumPy ones are copied to the GPU in C order anyway)."""
    if is_cupy(x) and not x.flags["C_CONTIGUOUS"]:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {tuple(x.strides)} for shape "
                         f"{tuple(x.shape)}; call cupy.ascontiguousarray({name}) first")


def device_tensor(cupy, x):
    """A checked tensor (q, k, v, a pool) on the device: CuPy as it is, NumPy copied over in C order."""
    return x if is_cupy(x) else cupy.asarray(np.ascontiguousarray(x))


def device_small(cupy, x, dtype):
    """A small array (block table, lengths, slopes) on the device, C-contiguous, in the kernel's dtype."""
    if is_cupy(x):
        return cupy.ascontiguousarray(x, dtype=dtype)  # a copy only if the layout or dtype differ
    return cupy.asarray(np.ascontiguousarray(x, dtype=dtype))


def host(x) -> np.ndarray:
    return x.get() if is_cupy(x) else np.asarray(x)


def host_float(x, dtype) -> np.ndarray:
    """A host float array for the NumPy backend (bf16 bits decoded to float32)."""
    x = host(x)
    return from_bfloat16_bits(x) if dtype == "bfloat16" else x


def like_input(out, q, kind):
    """The NumPy backend's output in the input's storage: bf16 bits back to uint16, else q's dtype."""
    if kind == "bfloat16":
        return to_bfloat16_bits(out)
    return np.asarray(out).astype(q.dtype, copy=False) if q.dtype.kind == "f" else out


NULL = np.uint64(0)  # a kernel pointer argument packed as 8 zero bytes: nullptr


def kernel_args(*values) -> tuple:
    """Python ints -> int32, floats -> float32, as the kernels declare them; arrays and NULL as they are."""
    out = []
    for x in values:
        if isinstance(x, np.uint64):  # NULL: keep all 8 bytes
            out.append(x)
        elif isinstance(x, (bool, np.bool_)):
            out.append(np.int32(int(x)))
        elif is_integer(x):
            out.append(np.int32(x))
        elif is_real(x):  # a float: integers were taken above
            out.append(np.float32(x))
        else:
            out.append(x)
    return tuple(out)
