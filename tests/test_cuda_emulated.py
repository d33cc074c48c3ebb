"""Opt-in (TT_CUDA_EMULATE=1): the CUDA tests, run against a CPU emulation of the kernels.

Without a GPU the CUDA cases of tests/test_cuda.py skip. This module runs them anyway,
in a subprocess, against the same .cu sources compiled by g++ with a small shim:

- one std::thread per CUDA thread, the blocks of a grid one after another (the
  same threads walk every block, with a barrier between blocks), so `__shared__`
  can be a function-local static; std::barrier for `__syncthreads`, one per warp
  for `__syncwarp` and the shuffles;
- `__half` and `__nv_bfloat16` as 16-bit structs with round-to-nearest-even;
- `mma.sync.m16n8k16` (the only inline PTX) replaced by a function that gathers
  the warp's fragments and multiplies them, using the fragment layout of the PTX ISA;
- a NumPy stand-in for the part of CuPy that tinytransformer/cuda/ uses, so the
  launch code (argument order and widths, grids, dtypes, layouts) runs unchanged;
  the sources arrive as cuda.kernel_source gives them to NVRTC (common.cuh pasted
  in), with the same -D tile defines.

It checks indexing, bounds, masking, the online softmax, synchronisation points and
the launcher; it trusts the documented mma layout and does not model timing,
memory ordering between threads beyond the barriers, or NVRTC. It takes minutes
(every CUDA thread is an OS thread), hence opt-in:

    TT_CUDA_EMULATE=1 python -m pytest tests/test_cuda_emulated.py -q

TT_CUDA_EMULATE_ARGS passes more pytest arguments to the emulated run, for example
`TT_CUDA_EMULATE_ARGS="-k strided"` to run a few laws while working on a kernel.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("TT_CUDA_EMULATE") != "1",
                       reason="the CPU emulation of the CUDA kernels takes minutes; set TT_CUDA_EMULATE=1 to run it"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ (C++20) is needed to build the emulated kernels"),
]

# Stands in for cuda_fp16.h and cuda_bf16.h (both names point here).
EMULATION_HEADER = r"""
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  /* blocks run one at a time */
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void __syncwarp() { warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
inline float __int_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int min(int a, int b) { return a < b ? a : b; }

inline float shuffle_slots[32][32];
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncwarp();
    shuffle_slots[w][l] = v;
    __syncwarp();
    const float r = shuffle_slots[w][l ^ lane_mask];
    __syncwarp();
    return r;
}

struct __half {
    uint16_t bits;
    __half() = default;
    __half(float f) { _Float16 h = (_Float16)f; std::memcpy(&bits, &h, 2); }
    float value() const { _Float16 h; std::memcpy(&h, &bits, 2); return (float)h; }
};
struct __half2 { __half x, y; };
inline float __half2float(__half h) { return h.value(); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }

inline uint16_t float_to_bf16_bits(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return 0x7FC0;
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
struct __nv_bfloat16 {
    uint16_t bits;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : bits(float_to_bf16_bits(f)) {}
    float value() const { uint32_t u = (uint32_t)bits << 16; float r; std::memcpy(&r, &u, 4); return r; }
};
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __bfloat162float(__nv_bfloat16 h) { return h.value(); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: lane 4g + t holds
// A rows g, g+8 x cols 2t, 2t+1, 8+2t, 9+2t; B rows 2t, 2t+1, 8+2t, 9+2t of col g; C/D rows g, g+8 x cols 2t, 2t+1.
struct WarpFragments { unsigned a[32][4]; unsigned b[32][2]; float c[32][4]; };
inline WarpFragments fragment_slots[32];
template <int BF16>
inline float half_of(unsigned reg, int high) {
    const uint16_t bits = high ? (reg >> 16) : (reg & 0xffff);
    if (BF16) { __nv_bfloat16 x; x.bits = bits; return x.value(); }
    __half x; x.bits = bits; return x.value();
}
template <int BF16>
inline void emulated_mma(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    WarpFragments& s = fragment_slots[w];
    __syncwarp();
    for (int i = 0; i < 4; ++i) { s.a[l][i] = a[i]; s.c[l][i] = c[i]; }
    s.b[l][0] = b0; s.b[l][1] = b1;
    __syncwarp();
    float A[16][16], B[16][8], C[16][8];
    for (int L = 0; L < 32; ++L) {
        const int g = L >> 2, t = L & 3;
        for (int e = 0; e < 2; ++e) {
            A[g][2 * t + e] = half_of<BF16>(s.a[L][0], e);
            A[g + 8][2 * t + e] = half_of<BF16>(s.a[L][1], e);
            A[g][2 * t + 8 + e] = half_of<BF16>(s.a[L][2], e);
            A[g + 8][2 * t + 8 + e] = half_of<BF16>(s.a[L][3], e);
            B[2 * t + e][g] = half_of<BF16>(s.b[L][0], e);
            B[2 * t + 8 + e][g] = half_of<BF16>(s.b[L][1], e);
            C[g][2 * t + e] = s.c[L][e];
            C[g + 8][2 * t + e] = s.c[L][2 + e];
        }
    }
    const int g = l >> 2, t = l & 3;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int e = 0; e < 4; ++e) {
        float acc = C[rows[e]][cols[e]];
        for (int k = 0; k < 16; ++k) acc += A[rows[e]][k] * B[k][cols[e]];
        c[e] = acc;
    }
    __syncwarp();
}

template <class F>
inline void emulated_launch(dim3 grid, dim3 block, F body) {
    gridDim = grid;
    blockDim = block;
    const int n = block.x;
    std::barrier<> bar(n);
    block_barrier = &bar;
    warp_barriers.clear();
    for (int w = 0; w < (n + 31) / 32; ++w)
        warp_barriers.emplace_back(new std::barrier<>(n - 32 * w < 32 ? n - 32 * w : 32));
    std::vector<std::thread> threads;  // one OS thread per CUDA thread, reused for every block
    for (int t = 0; t < n; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {(unsigned)t, 0, 0};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = {bx, by, bz};
                        body();
                        bar.arrive_and_wait();  // the whole block is done before the next one reuses __shared__
                    }
        });
    for (auto& th : threads) th.join();
}
"""

# The NumPy stand-in for CuPy. It compiles a RawModule's code with g++ (asm mma -> emulated_mma,
# plus one extern "C" launcher per kernel family) and calls the kernels through ctypes.
FAKE_CUPY = r'''
import ctypes, hashlib, os, re, subprocess
import numpy as np
from tinytransformer import cuda as tt

__version__ = "cpu-emulation"
float16, float32, uint16, int32, uint8, inf = np.float16, np.float32, np.uint16, np.int32, np.uint8, np.inf
BUILD = os.environ["TT_EMU_DIR"]


class ndarray(np.ndarray):
    def get(self):
        return np.array(self, copy=True)


def asarray(x, dtype=None):
    return np.array(x, dtype=dtype, copy=True, order="C").view(ndarray)


def ascontiguousarray(x, dtype=None):  # a copy only when the layout or the dtype differ, as in CuPy
    return np.ascontiguousarray(x, dtype=dtype).view(ndarray)


def empty(shape, dtype=np.float32):  # poisoned, so that an unwritten output shows
    return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0xFFFF, dtype=dtype).view(ndarray)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype).view(ndarray)


def full(shape, value, dtype=None):
    return np.full(shape, value, dtype=dtype).view(ndarray)


class cuda:
    class runtime:
        getDeviceCount = staticmethod(lambda: 1)
        getDeviceProperties = staticmethod(lambda i: {"name": b"CPU emulation", "multiProcessorCount": 4})

    class Device:
        id = 0

    get_cuda_path = staticmethod(lambda: "/nonexistent")


TYPES = {"fp32": "float", "fp16": "__half", "bf16": "__nv_bfloat16"}


def _launchers(code):
    if "flash_v1_fp32" in code:
        names = ["flash_v1_fp32"] + [f"flash_v2_fp32_d{d}" for d in tt.FLASH_HEAD_DIMS[2]] + [
            f"flash_v3_{t}_d{d}" for t in ("fp16", "bf16") for d in tt.FLASH_HEAD_DIMS[3]]
        cases = [f'if (n == "{n}") {{ emulated_launch(grid, block, [&] {{ {n}((const {T}*)q, (const {T}*)k, '
                 f'(const {T}*)v, ({T}*)o, lse, slopes, B, Hq, Hkv, T, S, D, scale, causal); }}); return 0; }}'
                 for n in names for T in [TYPES[n.split("_")[2]]]]
        head = ('extern "C" int emulated_flash(const char* name, void* q, void* k, void* v, void* o, float* lse, '
                "const float* slopes, int B, int Hq, int Hkv, int T, int S, int D, float scale, int causal, ")
    else:
        cases = []
        for t, T in TYPES.items():
            cases += [f'if (n == "{f}_{t}_d{d}") {{ emulated_launch(grid, block, [&] {{ {f}_{t}_d{d}('
                      f"(const {T}*)q, (const {T}*)k, (const {T}*)v, tables, lens, slopes, ({T}*)o, part_o, "
                      "part_lse, Hq, Hkv, T, D, bs, max_blocks, scale, causal, split_len, n_splits); }); return 0; }"
                      for f in ("decode", "decode3") for d in tt.DECODE_HEAD_DIMS]
            cases.append(f'if (n == "decode_combine_{t}") {{ emulated_launch(grid, block, [&] {{ '
                         f"decode_combine_{t}(part_o, part_lse, ({T}*)o, D, n_splits); }}); return 0; }}")
        head = ('extern "C" int emulated_decode(const char* name, void* q, void* k, void* v, const int* tables, '
                "const int* lens, const float* slopes, void* o, float* part_o, float* part_lse, int Hq, int Hkv, "
                "int T, int D, int bs, int max_blocks, float scale, int causal, int split_len, int n_splits, ")
    return (head + "unsigned gx, unsigned gy, unsigned gz, unsigned threads) {\n"
            "  std::string n(name); dim3 grid{gx, gy, gz}, block{threads, 1, 1};\n  "
            + "\n  ".join(cases) + "\n  return 1;\n}\n")


class RawModule:
    def __init__(self, code, options=()):
        self.flash = "flash_v1_fp32" in code
        source = re.sub(r"asm volatile\(.*?\);",
                        lambda m: f"emulated_mma<{int('bf16.bf16' in m.group(0))}>(c, a, b0, b1);", code, flags=re.S)
        source += _launchers(code)
        defines = [o for o in options if o.startswith("-D")]
        key = hashlib.sha256((source + " ".join(defines)).encode()).hexdigest()[:16]
        so = os.path.join(BUILD, f"{key}.so")
        if not os.path.exists(so):
            cpp = os.path.join(BUILD, f"{key}.cpp")
            open(cpp, "w").write(source)
            subprocess.run(["g++", "-O1", "-std=c++20", "-shared", "-fPIC", "-pthread", f"-I{BUILD}", *defines,
                            "-x", "c++", cpp, "-o", so], check=True)
        self.lib = ctypes.CDLL(so)

    def get_function(self, name):
        return Kernel(name, self)


class Kernel:
    def __init__(self, name, module):
        self.name, self.module = name, module

    def __call__(self, grid, block, args):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.uint64) and a == 0:
                values.append(ctypes.c_void_p(None))
            elif isinstance(a, np.int32):
                values.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.float32):
                values.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"{self.name}: kernel argument {a!r} of type {type(a).__name__} has no CUDA width")
        if self.name.startswith("decode_combine"):  # (part_o, part_lse, out, D, n_splits) into the decode launcher
            null, part_o, part_lse, out, D, n_splits = ctypes.c_void_p(None), *values
            values = [null] * 6 + [out, part_o, part_lse] + [ctypes.c_int(1)] * 3 + [D] + [ctypes.c_int(1)] * 2 + [
                ctypes.c_float(1.0), ctypes.c_int(0), ctypes.c_int(1), n_splits]
        entry = self.module.lib.emulated_flash if self.module.flash else self.module.lib.emulated_decode
        entry.restype = ctypes.c_int
        rc = entry(self.name.encode(), *values, *(ctypes.c_uint(g) for g in grid), ctypes.c_uint(block[0]))
        assert rc == 0, f"no emulated launcher for kernel {self.name}"
'''

PLUGIN = '''
from hypothesis import HealthCheck, settings
settings.register_profile("emulation", max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
'''


def test_cuda_laws_and_planted_bugs_hold_for_the_emulated_kernels(tmp_path):
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    for header in ("cuda_fp16.h", "cuda_bf16.h"):
        (tmp_path / header).write_text(EMULATION_HEADER)
    (tmp_path / "emulation_profile.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "TT_EMU_DIR": str(tmp_path),
           "HYPOTHESIS_PROFILE": "emulation"}
    extra = shlex.split(os.environ.get("TT_CUDA_EMULATE_ARGS", ""))
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-rs", "-p", "no:cacheprovider",
                           "-p", "emulation_profile", *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3000)
    tail = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert "no CUDA backend here" not in done.stdout, "the CUDA cases skipped instead of running emulated:\n" + tail
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= (1 if extra else 85), tail
