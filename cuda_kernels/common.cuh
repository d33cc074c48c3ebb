// What flash_attention.cu and decode_attention.cu share: the float conversions,
// -inf, the end-aligned causal rule (with its planted bug), the online-softmax
// update of a row (flash v2 and decode), and the check that the tile constants
// came as -D defines (tinytransformer/cuda/build.py defines them, and its
// compile_options adds them to every build).
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

// ---- the online softmax of one query row ---------------------------------------

// One key tile's update of a query row whose scores are spread over LANES adjacent
// lanes of a warp (lane c holds keys c, c + LANES, c + 2 LANES, ...):
//     m_new = max(m, rowmax(s)),   p = exp(s - m_new),   l = exp(m - m_new) l + rowsum(p)
// s becomes p in place (masked scores, -inf, become 0); m and l are updated in place
// and stay equal on the LANES lanes. Returns alpha = exp(m_old - m_new), the factor
// that rescales the output accumulated under the old maximum (0 on the first tile).
template <int NJ, int LANES>
__device__ __forceinline__ float online_softmax_update(float (&s)[NJ], float& m, float& l) {
    float tile_max = NEG_INF;
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) tile_max = fmaxf(tile_max, s[jj]);
#pragma unroll
    for (int off = 1; off < LANES; off <<= 1)  // max over the row's lanes
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
    const float m_new = fmaxf(m, tile_max);               // m_new = max(m, rowmax(s))
    const float m_safe = m_new == NEG_INF ? 0.0f : m_new;  // nothing seen yet: avoid inf - inf
    const float alpha = expf(m - m_safe);                 // exp(m - m_new), 0 on the first tile
    float row_sum = 0.0f;
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) {
        s[jj] = expf(s[jj] - m_safe);  // p = exp(s - m_new); masked -> 0
        row_sum += s[jj];
    }
#pragma unroll
    for (int off = 1; off < LANES; off <<= 1) row_sum += __shfl_xor_sync(0xffffffffu, row_sum, off);
    l = alpha * l + row_sum;  // l = exp(m - m_new) l + rowsum(p)
    m = m_new;
    return alpha;
}

#endif  // TT_COMMON_CUH
