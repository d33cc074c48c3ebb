// What flash_attention.cu and decode_attention.cu share: the float conversions,
// -inf, the end-aligned causal rule (with its planted bug), and the tile
// constants, which come from Python as -D defines (tinytransformer.cuda.build.TILES;
// tinytransformer.cuda.build.compile_options adds them to every build).
//
// tinytransformer.cuda.build.kernel_source pastes this file in place of the
// #include line before NVRTC sees the text, so a compiled module never depends on
// a file it cannot name; nvcc finds it next to the .cu files.

#ifndef TT_COMMON_CUH
#define TT_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#if !defined(TT_THREADS)
#error "the tile constants are -D defines: build with the options of tinytransformer.cuda.build.compile_options()"
#endif

#define NEG_INF (__int_as_float(0xff800000))

// ---- element types: loads as float, stores rounded to nearest --------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float x, float* dst) { *dst = x; }
__device__ __forceinline__ void from_float(float x, __half* dst) { *dst = __float2half_rn(x); }
__device__ __forceinline__ void from_float(float x, __nv_bfloat16* dst) { *dst = __float2bfloat16_rn(x); }

// ---- positions and the causal rule ------------------------------------------------

// Query row i of the T new rows sits at key position p_i = S - T + i (end-aligned:
// the last query row sees every key).
__device__ __forceinline__ int query_position(int i, int T, int S) { return S - T + i; }

// The last key that query row i may see under the causal mask: j <= p_i.
__device__ __forceinline__ int last_visible_key(int i, int T, int S) {
#ifdef PLANTED_BUG_CAUSAL_OFF_BY_ONE
    return query_position(i, T, S) + 1;  // planted bug: one future key leaks in
#else
    return query_position(i, T, S);
#endif
}

#endif  // TT_COMMON_CUH
