"""Building the kernels: CuPy and the GPU, the sources, the tile constants, NVRTC, the module cache.

The `.cu` files live in the top-level folder `cuda_kernels/`, where a student
finds them. setup.cfg installs that folder as the package `tinytransformer.cuda_kernels`
(package_dir), with the sources as its package data, so an installed package keeps
them; `kernel_dir` finds them in a checkout and in an install alike (editable
or not). Both include `common.cuh`; NVRTC compiles a string rather
than a file, so `kernel_source` pastes the header in place of its `#include`
line (which also lets CuPy's compile cache, keyed by the text, see an edit to
the header). nvcc, which compiles the files themselves, finds the header next to
them.

The tile constants are defined here, once, and reach the kernels as `-D`
defines (`tile_defines`); the sources stop with `#error` if they are missing.
`kernel_budget` computes each kernel's shared memory and state registers from
the same constants (the compile tests hold it to ptxas's report).

    >>> tile_defines()[:3]
    ('TT_THREADS=128', 'V2_BR=32', 'V2_BC_D32=32')
    >>> kernel_budget("flash_v2", 64)["smem_bytes"]
    29056
"""
from __future__ import annotations

import functools
import importlib.resources
import os
import re
import shutil
from pathlib import Path

__all__ = [
    "CudaUnavailable", "KERNEL_DIR", "KERNEL_PACKAGE", "kernel_dir", "PLANTED_BUGS", "FLASH_VERSIONS",
    "DECODE_VERSIONS",
    "THREADS", "V2_BR", "V2_BC", "V3_BR", "V3_BC", "V3_PAD", "DEC_ROWS", "DEC_BC",
    "DEC3_ROWS", "DEC3_UNROLL", "DEC3_MIN_BLOCKS",
    "FLASH_HEAD_DIMS", "DECODE_HEAD_DIMS", "tile_defines", "v2_block_k", "v3_block_k", "pad_head_dim",
    "cuda_status", "require_cuda", "kernel_source", "compile_options", "load_module", "kernel_budget",
    "nvcc_path", "nvcc_command", "ptxas_report",
]

KERNEL_PACKAGE = "tinytransformer.cuda_kernels"  # setup.cfg maps it to the folder cuda_kernels/


def kernel_dir() -> Path:
    """The folder of the .cu and .cuh files.

    In a checkout (the package run from its source tree, on PYTHONPATH or installed
    editable) that is cuda_kernels/ beside the package folder: the sources of the
    code that runs, even if another install is on the path. Otherwise the installed
    package KERNEL_PACKAGE, found with importlib.resources.
    """
    checkout = Path(__file__).resolve().parents[2] / "cuda_kernels"
    if (checkout / "common.cuh").is_file():
        return checkout
    try:
        installed = importlib.resources.files(KERNEL_PACKAGE)
    except ModuleNotFoundError:  # neither: _read_kernel_file says where it looked
        return checkout
    return installed if isinstance(installed, Path) else checkout


KERNEL_DIR = kernel_dir()
PLANTED_BUGS = ("PLANTED_BUG_NO_RESCALE", "PLANTED_BUG_CAUSAL_OFF_BY_ONE")
FLASH_VERSIONS = (1, 2, 3)
DECODE_VERSIONS = (1, 2, 3)

# --- the tile constants: their one source ---------------------------------------------

THREADS = 128  # threads per block of every tiled kernel (TT_THREADS)
V2_BR = 32  # flash v2: query rows per block, a quad of 4 threads per row
V2_BC = {32: 32, 64: 32, 128: 16}  # flash v2: keys per tile by padded head dim (16 keeps D = 128 under 48 KB)
V3_BR = 64  # flash v3: query rows per block, 16 per warp
V3_BC = {64: 64, 128: 64}  # flash v3: keys per tile by padded head dim (K and V tiles: 36 KB at D = 128)
V3_PAD = 8  # flash v3: 16-bit elements padding each shared-memory row, so fragment loads hit 32 banks
DEC_ROWS = 16  # decode: query rows (group heads x new tokens) per block, 8 threads per row
DEC_BC = 32  # decode: keys per tile
DEC3_ROWS = 4  # decode v3: query rows per block, held in registers (a group of 4 heads: one block)
DEC3_UNROLL = 4  # decode v3: K loads (and V loads) of 16 bytes each lane has in flight at once
DEC3_MIN_BLOCKS = 3  # decode v3: blocks per SM; __launch_bounds__ holds registers to 65,536 / (3 x 128)
FLASH_HEAD_DIMS = {1: None, 2: tuple(V2_BC), 3: tuple(V3_BC)}  # the padded head dims each version is built for
DECODE_HEAD_DIMS = (64, 128)


def tile_defines() -> tuple[str, ...]:
    """The tile constants as the NAME=VALUE defines the .cu files read."""
    return (f"TT_THREADS={THREADS}", f"V2_BR={V2_BR}", *(f"V2_BC_D{d}={bc}" for d, bc in V2_BC.items()),
            f"V3_BR={V3_BR}", *(f"V3_BC_D{d}={bc}" for d, bc in V3_BC.items()), f"V3_PAD={V3_PAD}",
            f"DEC_ROWS={DEC_ROWS}", f"DEC_BC={DEC_BC}", f"DEC3_ROWS={DEC3_ROWS}", f"DEC3_UNROLL={DEC3_UNROLL}",
            f"DEC3_MIN_BLOCKS={DEC3_MIN_BLOCKS}")


def pad_head_dim(head_dim: int, choices, name: str) -> int:
    """The smallest head dim in `choices` that holds head_dim, or ValueError naming `name`."""
    for c in choices:
        if head_dim <= c:
            return c
    raise ValueError(f"{name}: expected a head dim <= {max(choices)} (the kernels are built for "
                     f"{', '.join(map(str, choices))}), got {head_dim}")


def v2_block_k(head_dim: int) -> int:
    """Keys per tile of flash v2 at this head dim (after padding)."""
    return V2_BC[pad_head_dim(head_dim, FLASH_HEAD_DIMS[2], "head_dim")]


def v3_block_k(head_dim: int) -> int:
    """Keys per tile of flash v3 at this head dim (after padding)."""
    return V3_BC[pad_head_dim(head_dim, FLASH_HEAD_DIMS[3], "head_dim")]


class CudaUnavailable(RuntimeError):
    """The CUDA backend was asked for but CuPy, a GPU or the kernel sources are missing."""


# --- CuPy and the GPU ------------------------------------------------------------------


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


# --- sources and compilation -----------------------------------------------------------

_LOCAL_INCLUDE = re.compile(r'#include "([^"]+)"\s*')


def _read_kernel_file(filename: str) -> str:
    path = KERNEL_DIR / filename
    if not path.is_file():
        raise CudaUnavailable(f"kernel source {path} not found: the .cu and .cuh files ship inside the "
                              f"package ({KERNEL_PACKAGE}, from cuda_kernels/); reinstall tinytransformer")
    return path.read_text()


def kernel_source(name: str) -> str:
    """The text of cuda_kernels/NAME.cu with its `#include "..."` headers pasted in: what NVRTC compiles.

    `#line` directives keep compiler messages pointing at the right file and line.
    """
    return _paste_includes(f"{name}.cu", set())


def _paste_includes(filename: str, pasted: set) -> str:
    lines = []
    for number, line in enumerate(_read_kernel_file(filename).splitlines(), start=1):
        match = _LOCAL_INCLUDE.fullmatch(line)
        if match is None:
            lines.append(line)
        elif match.group(1) not in pasted:  # each header once, like #pragma once
            pasted.add(match.group(1))
            lines += [f'#line 1 "{match.group(1)}"', _paste_includes(match.group(1), pasted),
                      f'#line {number + 1} "{filename}"']
    return "\n".join(lines) + "\n"


def _cuda_include_dirs() -> list[str]:
    candidates = [os.environ.get(v) for v in ("CUDA_PATH", "CUDA_HOME")] + ["/usr/local/cuda"]
    try:
        import cupy

        candidates.insert(0, cupy.cuda.get_cuda_path())
    except Exception:
        pass
    return [str(Path(c) / "include") for c in candidates if c and (Path(c) / "include" / "cuda_fp16.h").is_file()][:1]


def compile_options(defines=(), *, include_dirs=None) -> tuple[str, ...]:
    """NVRTC/nvcc options: C++17, the CUDA include folder for cuda_fp16.h, the tile constants
    and the extra defines (planted bugs), all as -D."""
    dirs = _cuda_include_dirs() if include_dirs is None else list(include_dirs)
    return ("-std=c++17",) + tuple(f"-I{d}" for d in dirs) + tuple(f"-D{d}" for d in tile_defines() + tuple(defines))


@functools.lru_cache(maxsize=None)
def load_module(name: str, defines: tuple = ()):
    """cupy.RawModule for cuda_kernels/NAME.cu built with `defines`; compiled once, then cached."""
    cupy = require_cuda()
    unknown = [d for d in defines if d not in PLANTED_BUGS]
    if unknown:
        raise ValueError(f"defines: expected names from {PLANTED_BUGS}, got {unknown}")
    return cupy.RawModule(code=kernel_source(name), options=compile_options(defines))


# --- nvcc and ptxas's report (no GPU needed) ---------------------------------------------

ARCHS = ("sm_80", "sm_90")


def nvcc_path() -> str | None:
    """The nvcc on PATH, or CUDA's default install, or None."""
    default = Path("/usr/local/cuda/bin/nvcc")
    return shutil.which("nvcc") or (str(default) if default.is_file() else None)


def nvcc_command(nvcc: str, name: str, output, *, defines=(), ptx: bool = False) -> list[str]:
    """nvcc building cuda_kernels/NAME.cu with the options CuPy gets.

    Default: machine code for every arch in ARCHS from one compute_80 front-end pass,
    with ptxas -v (registers, spills, shared memory per kernel). ptx=True: compute_80 PTX.
    """
    source = str(KERNEL_DIR / f"{name}.cu")
    options = compile_options(defines, include_dirs=[])
    if ptx:
        return [nvcc, *options, "-ptx", "-arch=compute_80", "-o", str(output), source]
    return [nvcc, *options, "--fatbin", f"-gencode=arch=compute_80,code=[{','.join(ARCHS)}]", "-Xptxas", "-v",
            "-o", str(output), source]


def ptxas_report(text: str, arch: str) -> dict:
    """{kernel: {"registers", "spill_bytes", "smem"}} from the ptxas -v output of one arch."""
    report = {}
    for chunk in text.split("Compiling entry function")[1:]:
        m = re.match(r" '(\w+)' for '(\w+)'", chunk)
        if not m or m.group(2) != arch:
            continue
        regs = re.search(r"Used (\d+) registers", chunk)
        smem = re.search(r"(\d+) bytes smem", chunk)
        spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", chunk)
        report[m.group(1)] = {"registers": int(regs.group(1)), "smem": int(smem.group(1)) if smem else 0,
                              "spill_bytes": sum(map(int, spills))}
    return report


# --- the resource budget of each kernel, from the tile constants ----------------------


def kernel_budget(kernel: str, head_dim: int) -> dict:
    """Threads, tile shape, static shared memory and per-thread state of one kernel version.

    kernel: "flash_v1", "flash_v2", "flash_v3", "decode" (v1 and v2) or "decode_v3"; head_dim: D (padded as the
    launcher pads it). state_floats counts the 32-bit registers holding the online-softmax
    state and the operand fragments the kernel keeps across its key loop (a lower bound
    on the registers ptxas reports).
    """
    f32, f16 = 4, 2
    if kernel == "flash_v1":
        return dict(threads=THREADS, rows_per_block=THREADS, keys_per_tile=None, head_dim_pad=head_dim,
                    smem_bytes=0, state_floats=2)  # m and l; everything else is read from global memory
    if kernel == "flash_v2":
        D = pad_head_dim(head_dim, FLASH_HEAD_DIMS[2], "head_dim")
        Br, Bc = V2_BR, V2_BC[D]
        smem = (Br * (D + 1) + Bc * (D + 1) + Bc * D + Br * (Bc + 1)) * f32  # Qs, Ks, Vs, Ps
        return dict(threads=THREADS, rows_per_block=Br, keys_per_tile=Bc, head_dim_pad=D, smem_bytes=smem,
                    state_floats=2 + D // 4 + Bc // 4)  # m, l; O columns; scores of the tile
    if kernel == "flash_v3":
        D = pad_head_dim(head_dim, FLASH_HEAD_DIMS[3], "head_dim")
        Br, Bc = V3_BR, V3_BC[D]
        smem = 2 * Bc * (D + V3_PAD) * f16  # Ks, Vs (Q goes straight to registers)
        # per lane: Q fragments (D/16 x 4 regs), O (D/8 x 4), S/P (Bc/8 x 4), m and l of 2 rows
        return dict(threads=THREADS, rows_per_block=Br, keys_per_tile=Bc, head_dim_pad=D, smem_bytes=smem,
                    state_floats=D // 16 * 4 + D // 8 * 4 + Bc // 8 * 4 + 4)
    if kernel == "decode":
        D = pad_head_dim(head_dim, DECODE_HEAD_DIMS, "head_dim")
        smem = (DEC_ROWS * (D + 4) + DEC_BC * (D + 4) + DEC_BC * D + DEC_ROWS * (DEC_BC + 1) + 3 * DEC_ROWS) * f32
        return dict(threads=THREADS, rows_per_block=DEC_ROWS, keys_per_tile=DEC_BC, head_dim_pad=D,
                    smem_bytes=smem, state_floats=2 + DEC_BC // 8 + DEC_ROWS * D // THREADS)
    if kernel == "decode_v3":
        D = pad_head_dim(head_dim, DECODE_HEAD_DIMS, "head_dim")
        warps, vec = THREADS // 32, 8  # vec: 16-bit elements per 16-byte load (fp32: 4)
        smem = (2 * warps * DEC3_ROWS + warps * DEC3_ROWS * D) * f32  # Ms, Ls; Os
        # per lane: Q slices, output slices and scores of its rows, the raw K and V loads in flight
        return dict(threads=THREADS, rows_per_block=DEC3_ROWS, keys_per_tile=None, head_dim_pad=D,
                    smem_bytes=smem, state_floats=2 * DEC3_ROWS * vec + DEC3_ROWS * DEC3_UNROLL + 8 * DEC3_UNROLL)
    raise ValueError(f"kernel: expected one of 'flash_v1', 'flash_v2', 'flash_v3', 'decode', 'decode_v3', "
                     f"got {kernel!r}")
