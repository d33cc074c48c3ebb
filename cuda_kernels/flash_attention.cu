// Flash attention forward: exact softmax(Q K^T * scale + alibi) V, tile by tile.
//
// The NumPy reference is tinytransformer.flash.flash_attention (and behind it
// attention.scaled_dot_product_attention); tinytransformer/cuda/flash.py
// launches these kernels, and every version is checked against that reference
// (tests/test_cuda.py) before anything is timed (tinytransformer/bench/attention.py).
//
// Versions (each one is the previous plus one idea):
//   v1  naive: one thread per query row, three passes over the keys (max, sum,
//       weighted sum of V), everything in global memory; fp32; any head dim.
//   v2  tiled: a block owns a tile of Br query rows, walks over tiles of Bc keys
//       staged in shared memory, and keeps the online-softmax state (m, l, O) in
//       registers (FlashAttention-2 loop order: query tiles across blocks, key
//       tiles in the inner loop); fp32; head dims padded to 32, 64 or 128.
//   v3  tensor cores: v2's loop with Q K^T and P V on mma.sync.m16n8k16
//       (fp16 or bf16 inputs, fp32 accumulation); each warp owns 16 query rows
//       and keeps S, P and O in the documented mma fragment layout, so P goes
//       from the score accumulators to the A operand without touching shared
//       memory; tiles chosen for head dims 64 and 128 (smaller ones are padded).
//
// Contract (every version): q [B, Hq, T, D], k and v [B, Hkv, S, D], contiguous;
// query head h reads KV head h / (Hq / Hkv) (GQA; MQA when Hkv = 1); query row i
// sits at key position p_i = S - T + i (end-aligned); with causal, key j is
// visible iff j <= p_i; alibi_slopes (nullable, [Hq] fp32) adds
// slope_h * (j - p_i); any T and S, no access past either end. Outputs:
// o [B, Hq, T, D] in the input dtype and lse [B, Hq, T] fp32, the natural-log
// log-sum-exp of each row's scores; a row that sees no key gets o = 0 and
// lse = -inf.
//
// Tile constants (TT_THREADS, V2_BR, V2_BC_D<D>, V3_BR, V3_BC_D<D>, V3_PAD) are
// -D defines from tinytransformer/cuda/build.py, their one source.
//
// Planted bugs (compile-time defines; the property tests must catch each):
//   PLANTED_BUG_NO_RESCALE          the running output is not multiplied by
//                                   exp(m_old - m_new) when the max grows (v2, v3)
//   PLANTED_BUG_CAUSAL_OFF_BY_ONE   the causal boundary lets each row see one
//                                   future key (all versions; common.cuh)
//
// The file compiles with NVRTC (as CuPy does) and with nvcc -std=c++17 for
// sm_80 and sm_90; v3 needs sm_80 or newer (bf16 mma).

#include "common.cuh"

#if !defined(V2_BR) || !defined(V2_BC_D32) || !defined(V2_BC_D64) || !defined(V2_BC_D128) || !defined(V3_BR) || \
    !defined(V3_BC_D64) || !defined(V3_BC_D128) || !defined(V3_PAD)
#error "flash tile constants missing: build with the options of tinytransformer.cuda.build.compile_options()"
#endif

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// ---- the masking and bias rules, shared by every version -------------------------

__device__ __forceinline__ bool key_visible(int i, int j, int T, int S, int causal) {
    return j < S && (!causal || j <= last_visible_key(i, T, S));
}

// ALiBi: slope_h * (j - p_i), or 0 without slopes.
__device__ __forceinline__ float alibi(const float* slopes, int h, int i, int j, int T, int S) {
    return slopes ? slopes[h] * (float)(j - query_position(i, T, S)) : 0.0f;
}

// =====================================================================================
// v1: one thread per query row, full softmax in three passes.
// grid: ceil(B * Hq * T / blockDim.x) blocks; any blockDim.x.
// =====================================================================================

extern "C" __global__ void flash_v1_fp32(const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v, float* __restrict__ o,
                                         float* __restrict__ lse, const float* __restrict__ alibi_slopes,
                                         int B, int Hq, int Hkv, int T, int S, int D, float scale,
                                         int causal) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // (b, h, i) flattened
    if (row >= (long long)B * Hq * T) return;
    const int i = (int)(row % T);
    const int h = (int)((row / T) % Hq);
    const int b = (int)(row / ((long long)T * Hq));
    const int hk = h / (Hq / Hkv);  // GQA: the KV head of this query head
    const float* qi = q + row * D;
    const float* kb = k + ((long long)b * Hkv + hk) * S * D;
    const float* vb = v + ((long long)b * Hkv + hk) * S * D;
    float* oi = o + row * D;

    // pass 1: m = max_j s_ij
    float m = NEG_INF;
    for (int j = 0; j < S; ++j) {
        if (!key_visible(i, j, T, S, causal)) continue;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qi[d] * kb[(long long)j * D + d];
        m = fmaxf(m, s * scale + alibi(alibi_slopes, h, i, j, T, S));  // s_ij = q.k * scale + bias
    }
    for (int d = 0; d < D; ++d) oi[d] = 0.0f;
    if (m == NEG_INF) {  // no visible key: output 0, lse -inf
        lse[row] = NEG_INF;
        return;
    }
    // pass 2: l = sum_j exp(s_ij - m)
    float l = 0.0f;
    for (int j = 0; j < S; ++j) {
        if (!key_visible(i, j, T, S, causal)) continue;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qi[d] * kb[(long long)j * D + d];
        l += expf(s * scale + alibi(alibi_slopes, h, i, j, T, S) - m);
    }
    // pass 3: o = sum_j (exp(s_ij - m) / l) v_j
    for (int j = 0; j < S; ++j) {
        if (!key_visible(i, j, T, S, causal)) continue;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qi[d] * kb[(long long)j * D + d];
        const float p = expf(s * scale + alibi(alibi_slopes, h, i, j, T, S) - m) / l;
        for (int d = 0; d < D; ++d) oi[d] += p * vb[(long long)j * D + d];
    }
    lse[row] = m + logf(l);  // log sum_j exp(s_ij)
}

// =====================================================================================
// v2: tiled in shared memory, online softmax, fp32.
// A block of TT_THREADS threads owns Br = V2_BR = TT_THREADS / 4 query rows of one (b, h): 4 threads per row
// (a "quad": lanes 4r..4r+3 of the warp). Thread (r, c) computes the scores of
// keys c, c+4, c+8, ... of each key tile and owns output columns c, c+4, c+8, ...
// grid: (ceil(T / Br), Hq, B).
// =====================================================================================

// Bc = V2_BC_D<D_PAD> keys per tile (16 at D = 128 keeps shared memory under 48 KB).
template <int D_PAD, int Bc>
__device__ __forceinline__ void flash_v2_body(const float* __restrict__ q, const float* __restrict__ k,
                                              const float* __restrict__ v, float* __restrict__ o,
                                              float* __restrict__ lse, const float* __restrict__ alibi_slopes,
                                              int Hq, int Hkv, int T, int S, int D, float scale, int causal) {
    constexpr int Br = V2_BR;
    static_assert(TT_THREADS == 4 * Br, "v2 gives each query row a quad of 4 threads");
    static_assert(Bc % 4 == 0 && D_PAD % 4 == 0, "a quad splits the keys and the columns four ways");
    constexpr int NJ = Bc / 4;      // scores per thread per key tile
    constexpr int ND = D_PAD / 4;   // output columns per thread
    // +1 pads the rows so that the 8 rows a warp touches fall in different banks
    __shared__ float Qs[Br][D_PAD + 1];
    __shared__ float Ks[Bc][D_PAD + 1];
    __shared__ float Vs[Bc][D_PAD];
    __shared__ float Ps[Br][Bc + 1];

    const int tid = threadIdx.x;
    const int r = tid >> 2, c = tid & 3;  // row in the tile, lane in the quad
    const int i0 = blockIdx.x * Br;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);
    const int i = i0 + r;  // this thread's query row (may be >= T: it still helps load and sync)
    const float* qb = q + ((long long)b * Hq + h) * T * D;
    const float* kb = k + ((long long)b * Hkv + hk) * S * D;
    const float* vb = v + ((long long)b * Hkv + hk) * S * D;

    for (int idx = tid; idx < Br * D_PAD; idx += TT_THREADS) {  // Q tile, zero past T and D
        const int rr = idx / D_PAD, d = idx % D_PAD;
        Qs[rr][d] = (i0 + rr < T && d < D) ? qb[(long long)(i0 + rr) * D + d] : 0.0f;
    }

    float m = NEG_INF, l = 0.0f;  // running max and sum of exp for row i (same in the whole quad)
    float acc[ND];                // unnormalised output O[i, c + 4 dd]
#pragma unroll
    for (int dd = 0; dd < ND; ++dd) acc[dd] = 0.0f;

    int kv_end = S;  // causal: no key tile past the last key visible to the tile's last row
    if (causal) kv_end = min(S, last_visible_key(min(i0 + Br, T) - 1, T, S) + 1);

    for (int j0 = 0; j0 < kv_end; j0 += Bc) {
        __syncthreads();  // every thread is done with the previous K, V and P tiles (and Qs is written)
        for (int idx = tid; idx < Bc * D_PAD; idx += TT_THREADS) {  // K_j, V_j tiles, zero past S and D
            const int jj = idx / D_PAD, d = idx % D_PAD;
            const bool in = j0 + jj < S && d < D;
            Ks[jj][d] = in ? kb[(long long)(j0 + jj) * D + d] : 0.0f;
            Vs[jj][d] = in ? vb[(long long)(j0 + jj) * D + d] : 0.0f;
        }
        __syncthreads();  // the tiles are complete before anyone reads them

        // S_ij = Q_i K_j^T * scale + bias, masked to -inf
        float s[NJ];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            const int jl = c + 4 * jj, j = j0 + jl;
            float dot = 0.0f;
#pragma unroll 4  // (fully unrolled, ptxas spills at D_PAD = 32 on sm_80)
            for (int d = 0; d < D_PAD; ++d) dot += Qs[r][d] * Ks[jl][d];
            s[jj] = (i < T && key_visible(i, j, T, S, causal))
                        ? dot * scale + alibi(alibi_slopes, h, i, j, T, S) : NEG_INF;
        }
        // m, l and P = exp(S_ij - m_new) over the quad; alpha = exp(m_old - m_new)
        const float alpha = online_softmax_update<NJ, 4>(s, m, l);
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) Ps[r][c + 4 * jj] = s[jj];
        __syncwarp();  // row r of Ps was written by this quad, which is in this warp

#ifndef PLANTED_BUG_NO_RESCALE
#pragma unroll
        for (int dd = 0; dd < ND; ++dd) acc[dd] *= alpha;  // O = exp(m - m_new) O ...
#endif
        for (int jl = 0; jl < Bc; ++jl) {  // ... + P V_j
            const float p = Ps[r][jl];
#pragma unroll
            for (int dd = 0; dd < ND; ++dd) acc[dd] += p * Vs[jl][c + 4 * dd];
        }
    }

    if (i < T) {
        const long long row = ((long long)b * Hq + h) * T + i;
        const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;  // a row that saw nothing outputs 0
#pragma unroll
        for (int dd = 0; dd < ND; ++dd) {
            const int d = c + 4 * dd;
            if (d < D) o[row * D + d] = acc[dd] * inv_l;  // O / l
        }
        if (c == 0) lse[row] = l > 0.0f ? m + logf(l) : NEG_INF;
    }
}

#define FLASH_V2_ENTRY(D_PAD)                                                                          \
    extern "C" __global__ void __launch_bounds__(TT_THREADS) flash_v2_fp32_d##D_PAD(                     \
        const float* q, const float* k, const float* v, float* o, float* lse, const float* alibi_slopes, \
        int B, int Hq, int Hkv, int T, int S, int D, float scale, int causal) {                          \
        flash_v2_body<D_PAD, V2_BC_D##D_PAD>(q, k, v, o, lse, alibi_slopes, Hq, Hkv, T, S, D, scale, causal); \
    }
FLASH_V2_ENTRY(32)
FLASH_V2_ENTRY(64)
FLASH_V2_ENTRY(128)

// =====================================================================================
// v3: tensor cores (mma.sync.m16n8k16, fp16/bf16 in, fp32 accumulate).
// A block of TT_THREADS / 32 warps owns Br = V3_BR query rows; warp w owns rows 16w..16w+15. Per key
// tile of Bc keys: S = Q K^T (Bc/8 accumulators of 16x8), online softmax on the
// accumulators, P V (D_PAD/8 accumulators of 16x8). Fragment layout of one 16x8
// fp32 accumulator for lane = 4 g + t (PTX ISA, "mma.m16n8k16"):
//   c[0], c[1] -> row g,     columns 2t, 2t+1
//   c[2], c[3] -> row g + 8, columns 2t, 2t+1
// The A operand (16x16, row-major) of lane 4g + t holds rows g and g+8, columns
// 2t, 2t+1 and 8+2t, 8+2t+1: exactly the accumulators of two adjacent 16x8 score
// tiles, so P is repacked in registers. The B operand (16x8, "col") holds k rows
// 2t, 2t+1 and 8+2t, 8+2t+1 of column g: for Q K^T that is K[g][2t..], contiguous (one
// 32-bit load); for P V it is V[2t][g] and V[2t+1][g], two 16-bit loads packed into one
// register. K and V tiles arrive as they are in memory, 16 bytes per load; the Q
// fragments are read once from global memory into registers, so shared memory holds only
// the K and V tiles. grid: (ceil(T / Br), Hq, B).
// =====================================================================================

// V3_PAD = 8 elements (16 bytes) pad every shared-memory row, so that the fragment loads of a
// warp hit distinct banks; Bc = V3_BC_D<D_PAD> keys per tile (K and V tiles of Bc x (D_PAD + 8)).

__device__ __forceinline__ void mma_16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1, __half) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1,
                                          __nv_bfloat16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one 32-bit register holding two 16-bit values, `lo` in the low half.
__device__ __forceinline__ unsigned pack2(float lo, float hi, __half) {
    __half2 x = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&x);
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, __nv_bfloat16) {
    __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&x);
}

// Two consecutive 16-bit elements of a shared-memory tile as one 32-bit register.
template <typename scalar_t>
__device__ __forceinline__ unsigned load_pair(const scalar_t* p) {
    return *reinterpret_cast<const unsigned*>(p);
}

// Two 16-bit elements as one 32-bit register, `lo` in the low half.
template <typename scalar_t>
__device__ __forceinline__ unsigned pack_elements(scalar_t lo, scalar_t hi) {
    union { scalar_t x[2]; unsigned u; } p;
    p.x[0] = lo;
    p.x[1] = hi;
    return p.u;
}

// Q[i][c], Q[i][c + 1] of a [T, D] matrix as one register, zero past T and D (any alignment).
template <typename scalar_t>
__device__ __forceinline__ unsigned load_q_pair(const scalar_t* qb, int i, int c, int T, int D) {
    const scalar_t zero = scalar_t(0.0f);
    const scalar_t* row = qb + (long long)i * D;
    return pack_elements(i < T && c < D ? row[c] : zero, i < T && c + 1 < D ? row[c + 1] : zero);
}

// rows [0, ROWS) of a [*, D] global matrix starting at src -> dst[ROWS][LD], zero past n_rows and D.
// 16-byte vector loads when every row is 16-byte aligned and D fills the padded width.
template <typename scalar_t, int ROWS, int D_PAD, int LD>
__device__ __forceinline__ void load_tile(scalar_t* dst, const scalar_t* src, int n_rows, int D) {
    constexpr int VEC = 8;  // 8 x 16-bit = 16 bytes
    if (D == D_PAD && (reinterpret_cast<unsigned long long>(src) & 15) == 0) {
        for (int idx = threadIdx.x; idx < ROWS * (D_PAD / VEC); idx += blockDim.x) {
            const int r = idx / (D_PAD / VEC), d = (idx % (D_PAD / VEC)) * VEC;
            uint4 x = make_uint4(0u, 0u, 0u, 0u);
            if (r < n_rows) x = *reinterpret_cast<const uint4*>(src + (long long)r * D + d);
            *reinterpret_cast<uint4*>(dst + r * LD + d) = x;
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * D_PAD; idx += blockDim.x) {
            const int r = idx / D_PAD, d = idx % D_PAD;
            dst[r * LD + d] = (r < n_rows && d < D) ? src[(long long)r * D + d] : scalar_t(0.0f);
        }
    }
}

template <typename scalar_t, int D_PAD, int Bc>
__device__ __forceinline__ void flash_v3_body(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                              const scalar_t* __restrict__ v, scalar_t* __restrict__ o,
                                              float* __restrict__ lse, const float* __restrict__ alibi_slopes,
                                              int Hq, int Hkv, int T, int S, int D, float scale, int causal) {
    constexpr int Br = V3_BR;
    static_assert(TT_THREADS / 32 * 16 == Br, "v3 gives each warp 16 query rows (one mma tile high)");
    static_assert(Bc % 16 == 0 && D_PAD % 16 == 0, "mma.m16n8k16 steps through keys and columns by 16");
    constexpr int LD = D_PAD + V3_PAD;  // row length of Ks and Vs (elements)
    constexpr int NK = D_PAD / 16;      // k-steps of Q K^T
    constexpr int NS = Bc / 8;          // 16x8 score tiles per key tile
    constexpr int NO = D_PAD / 8;       // 16x8 output tiles
    __shared__ __align__(16) scalar_t Ks[Bc * LD];  // K_j, as in memory
    __shared__ __align__(16) scalar_t Vs[Bc * LD];  // V_j, as in memory

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;  // fragment row group and column pair
    const int i0 = blockIdx.x * Br;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);
    const scalar_t* qb = q + ((long long)b * Hq + h) * T * D;
    const scalar_t* kb = k + ((long long)b * Hkv + hk) * S * D;
    const scalar_t* vb = v + ((long long)b * Hkv + hk) * S * D;
    const scalar_t tag = scalar_t(0.0f);  // selects the fp16 or bf16 overloads
    const float scale_log2 = scale * LOG2E;  // exp(x) = exp2(x log2 e): scores kept in log2 units
    const float slope_log2 = alibi_slopes ? alibi_slopes[h] * LOG2E : 0.0f;
    const int row_a = i0 + warp * 16 + g, row_b = row_a + 8;  // the two query rows of this lane

    unsigned qf[NK][4];  // this warp's 16 x D_PAD slice of Q as A fragments, kept for the whole loop
#pragma unroll
    for (int kk = 0; kk < NK; ++kk) {  // rows g, g + 8 of the warp's 16; columns 2t, 2t + 1 and 8 + 2t, 9 + 2t
        qf[kk][0] = load_q_pair(qb, row_a, kk * 16 + 2 * t, T, D);
        qf[kk][1] = load_q_pair(qb, row_b, kk * 16 + 2 * t, T, D);
        qf[kk][2] = load_q_pair(qb, row_a, kk * 16 + 8 + 2 * t, T, D);
        qf[kk][3] = load_q_pair(qb, row_b, kk * 16 + 8 + 2 * t, T, D);
    }

    float m[2] = {NEG_INF, NEG_INF};  // running max of rows a and b (log2 units), uniform in the quad
    float l[2] = {0.0f, 0.0f};        // running sums, this lane's columns only (reduced at the end)
    float acc[NO][4];                 // unnormalised O, 16 x D_PAD per warp
#pragma unroll
    for (int n = 0; n < NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    int kv_end = S;
    if (causal) kv_end = min(S, last_visible_key(min(i0 + Br, T) - 1, T, S) + 1);

    for (int j0 = 0; j0 < kv_end; j0 += Bc) {
        __syncthreads();  // every warp is done with the previous Ks and Vs
        load_tile<scalar_t, Bc, D_PAD, LD>(Ks, kb + (long long)j0 * D, S - j0, D);
        load_tile<scalar_t, Bc, D_PAD, LD>(Vs, vb + (long long)j0 * D, S - j0, D);
        __syncthreads();  // the tiles are complete before the fragment loads

        // S_ij = Q_i K_j^T: NS accumulators of 16 x 8
        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < NK; ++kk) {
                const scalar_t* base = Ks + (n * 8 + g) * LD + kk * 16 + 2 * t;  // K[j = 8n + g][2t..]
                mma_16816(s[n], qf[kk], load_pair(base), load_pair(base + 8), tag);
            }
        }

        // scale, bias, mask; tile max of rows a and b
        float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < NS; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e < 2 ? row_a : row_b;
                const int j = j0 + n * 8 + 2 * t + (e & 1);
                const bool ok = i < T && key_visible(i, j, T, S, causal);
                s[n][e] = ok ? s[n][e] * scale_log2 + slope_log2 * (float)(j - query_position(i, T, S)) : NEG_INF;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[n][e]);
            }
        }
        float alpha[2], m_safe[2];
#pragma unroll
        for (int x = 0; x < 2; ++x) {
            tile_max[x] = fmaxf(tile_max[x], __shfl_xor_sync(0xffffffffu, tile_max[x], 1));  // quad max
            tile_max[x] = fmaxf(tile_max[x], __shfl_xor_sync(0xffffffffu, tile_max[x], 2));
            const float m_new = fmaxf(m[x], tile_max[x]);    // m_new = max(m, rowmax(S_ij))
            m_safe[x] = m_new == NEG_INF ? 0.0f : m_new;     // nothing seen yet: avoid inf - inf
            alpha[x] = exp2f(m[x] - m_safe[x]);              // exp(m - m_new)
            m[x] = m_new;
        }
        float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < NS; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2f(s[n][e] - m_safe[e >> 1]);  // P = exp(S_ij - m_new), in place
                row_sum[e >> 1] += s[n][e];
            }
        }
#pragma unroll
        for (int x = 0; x < 2; ++x) l[x] = alpha[x] * l[x] + row_sum[x];  // l = exp(m - m_new) l + rowsum(P)

#ifndef PLANTED_BUG_NO_RESCALE
#pragma unroll
        for (int n = 0; n < NO; ++n) {  // O = exp(m - m_new) O ...
            acc[n][0] *= alpha[0];
            acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1];
            acc[n][3] *= alpha[1];
        }
#endif
        // ... + P V_j: the score accumulators of tiles 2kk, 2kk+1 are the A fragment of P[:, 16kk..]
#pragma unroll
        for (int kk = 0; kk < Bc / 16; ++kk) {
            unsigned pf[4];
            pf[0] = pack2(s[2 * kk][0], s[2 * kk][1], tag);
            pf[1] = pack2(s[2 * kk][2], s[2 * kk][3], tag);
            pf[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], tag);
            pf[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], tag);
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const scalar_t* base = Vs + (kk * 16 + 2 * t) * LD + n * 8 + g;  // V[16kk + 2t][8n + g]
                mma_16816(acc[n], pf, pack_elements(base[0], base[LD]), pack_elements(base[8 * LD], base[9 * LD]),
                          tag);
            }
        }
    }

    // l: sum the four lanes of the quad; O / l; lse = (m + log2 l) ln 2
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
        l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    }
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        const int i = x == 0 ? row_a : row_b;
        if (i >= T) continue;
        const long long row = ((long long)b * Hq + h) * T + i;
        const float inv_l = l[x] > 0.0f ? 1.0f / l[x] : 0.0f;
#pragma unroll
        for (int n = 0; n < NO; ++n) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int d = n * 8 + 2 * t + e;
                if (d < D) from_float(acc[n][2 * x + e] * inv_l, o + row * D + d);
            }
        }
        if (t == 0) lse[row] = l[x] > 0.0f ? (m[x] + log2f(l[x])) * LN2 : NEG_INF;
    }
}

#define FLASH_V3_ENTRY(NAME, SCALAR, D_PAD)                                                            \
    extern "C" __global__ void __launch_bounds__(TT_THREADS) flash_v3_##NAME##_d##D_PAD(                 \
        const SCALAR* q, const SCALAR* k, const SCALAR* v, SCALAR* o, float* lse,                      \
        const float* alibi_slopes, int B, int Hq, int Hkv, int T, int S, int D, float scale, int causal) { \
        flash_v3_body<SCALAR, D_PAD, V3_BC_D##D_PAD>(q, k, v, o, lse, alibi_slopes, Hq, Hkv, T, S, D, scale, \
                                                     causal);                                          \
    }
FLASH_V3_ENTRY(fp16, __half, 64)
FLASH_V3_ENTRY(fp16, __half, 128)
FLASH_V3_ENTRY(bf16, __nv_bfloat16, 64)
FLASH_V3_ENTRY(bf16, __nv_bfloat16, 128)
