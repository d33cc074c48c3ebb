// Cached decode attention over a paged KV cache.
//
// The NumPy reference is tinytransformer.paged_cache.paged_decode_attention;
// tinytransformer/cuda/decode.py launches these kernels, and each version is
// checked against that reference (tests/test_cuda.py) before anything is timed
// (tinytransformer/bench/attention.py).
//
// Decoding reads the whole cache to produce one token per sequence: the work is
// tiny (2 * Hq * T * L * D multiply-adds) and the bytes are many (2 * Hkv * L * D
// elements), so the kernel is bound by memory bandwidth and the only goals are
// to read each K/V element once and to keep every SM reading.
//
// Versions:
//   v1  one block per (sequence, KV head): the G = Hq / Hkv query heads of the
//       group (times T query tokens) share every K/V tile the block loads; the
//       tile loop follows the block table page by page; online softmax as in
//       flash_attention.cu v2. Groups with more than DEC_ROWS query rows take
//       several blocks (grid.y).
//   v2  split-K (the FlashDecoding idea): the context is cut into splits of
//       split_len keys, one block per (sequence, KV head, split), so a long
//       context with a small batch still fills the GPU; each block writes its
//       partial output and log-sum-exp, and a second kernel merges them:
//           lse = log sum_s exp(lse_s),  o = sum_s exp(lse_s - lse) o_s.
//
// Contract: q [B, Hq, T, D] (T new tokens per sequence, 1 in plain decoding, a
// few when verifying a speculative draft); k_pool, v_pool [n_blocks, Hkv,
// block_size, D]; block_tables [B, max_blocks] int32; context_lens [B] int32,
// counting the new tokens. Query t of sequence b sits at p = L_b - T + t; with
// causal it sees keys j <= p; alibi_slopes (nullable, [Hq]) adds
// slope_h * (j - p). Element types fp32, fp16, bf16 (q, pools and output alike),
// arithmetic in fp32; head dims padded to 64 or 128.
//
// Tile constants (TT_THREADS, DEC_ROWS, DEC_BC) are -D defines from
// tinytransformer/cuda/build.py, their one source.
//
// Planted bugs (compile-time defines; the property tests must catch each):
//   PLANTED_BUG_NO_RESCALE          the running output is not rescaled by
//                                   exp(m_old - m_new) when the max grows
//   PLANTED_BUG_CAUSAL_OFF_BY_ONE   each query sees one future key (T >= 2; common.cuh)

#include "common.cuh"

// DEC_ROWS: query rows (group heads x new tokens) per block; DEC_BC: keys per tile.
#if !defined(DEC_ROWS) || !defined(DEC_BC)
#error "decode tile constants missing: build with the options of tinytransformer.cuda.build.compile_options()"
#endif

// Query t of a sequence of length L with T new tokens sits at p = L - T + t:
// query_position(t, T, L) and last_visible_key(t, T, L) of common.cuh.

// One K or V tile [DEC_BC keys][D_PAD] of (sequence, KV head) into shared memory as fp32,
// following the block table; zero past key_end and D. When D fills D_PAD and the pool is
// 16-byte aligned, each thread moves 16 bytes from global memory and writes them as float4s
// (LD is a multiple of 4 floats, so the float4 stores are aligned too).
template <typename scalar_t, int D_PAD, int LD>
__device__ __forceinline__ void load_paged_tile(float* dst, const scalar_t* __restrict__ pool,
                                                const int* __restrict__ table, int j0, int key_end,
                                                int hk, int Hkv, int block_size, int D) {
    constexpr int VEC = 16 / sizeof(scalar_t);  // elements per 16-byte load: 4 (fp32) or 8 (fp16, bf16)
    if (D == D_PAD && (reinterpret_cast<unsigned long long>(pool) & 15) == 0) {
        constexpr int PER_ROW = D_PAD / VEC;
#pragma unroll
        for (int it = 0; it < (DEC_BC * PER_ROW + TT_THREADS - 1) / TT_THREADS; ++it) {
            const int idx = threadIdx.x + it * TT_THREADS;
            if (idx >= DEC_BC * PER_ROW) break;
            const int jl = idx / PER_ROW, d = (idx % PER_ROW) * VEC, j = j0 + jl;
            union { uint4 raw; scalar_t x[VEC]; } u;
            u.raw = make_uint4(0u, 0u, 0u, 0u);
            if (j < key_end) {
                const int page = table[j / block_size], slot = j % block_size;  // the paging lookup
                u.raw = *reinterpret_cast<const uint4*>(
                    pool + (((long long)page * Hkv + hk) * block_size + slot) * D + d);
            }
#pragma unroll
            for (int e = 0; e < VEC; e += 4)
                *reinterpret_cast<float4*>(dst + jl * LD + d + e) =
                    make_float4(to_float(u.x[e]), to_float(u.x[e + 1]), to_float(u.x[e + 2]), to_float(u.x[e + 3]));
        }
    } else {
        for (int idx = threadIdx.x; idx < DEC_BC * D_PAD; idx += TT_THREADS) {
            const int jl = idx / D_PAD, d = idx % D_PAD, j = j0 + jl;
            float x = 0.0f;
            if (j < key_end && d < D) {
                const int page = table[j / block_size], slot = j % block_size;
                x = to_float(pool[(((long long)page * Hkv + hk) * block_size + slot) * D + d]);
            }
            dst[jl * LD + d] = x;
        }
    }
}

__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }

// The work of one block: query rows [DEC_ROWS * blockIdx.y, +DEC_ROWS) of the group of KV
// head hk of sequence b, against keys [split_begin, split_end). Row r of the block is
// (group member g, token t) = divmod(DEC_ROWS * blockIdx.y + r, T); rows past G * T are
// padding, and the threads that own only padding rows skip their arithmetic (decode is
// memory-bound: shared-memory traffic must stay below the bytes the tile brought in).
// Thread mapping, scores: thread = (row r = tid / 8, keys tid % 8 + 8 jj), dot products
// read 4 floats at a time. Output: thread = (columns 4 cg .. 4 cg + 3, rows rg + RG rr),
// with cg = tid % (D_PAD / 4) and rg = tid / (D_PAD / 4).
// With part_o == nullptr the normalised output is written to out (v1); otherwise the
// split's normalised output and log-sum-exp go to part_o / part_lse (v2).
template <typename scalar_t, int D_PAD>
__device__ __forceinline__ void decode_body(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k_pool, const scalar_t* __restrict__ v_pool,
    const int* __restrict__ block_tables, const int* __restrict__ context_lens,
    const float* __restrict__ alibi_slopes, scalar_t* __restrict__ out, float* __restrict__ part_o,
    float* __restrict__ part_lse, int Hq, int Hkv, int T, int D, int block_size, int max_blocks, float scale,
    int causal, int split_len, int n_splits) {
    static_assert(TT_THREADS == 8 * DEC_ROWS, "decode gives each query row 8 threads for its scores");
    static_assert(DEC_BC % 8 == 0, "the 8 threads of a row split the keys of a tile");
    static_assert(TT_THREADS % (D_PAD / 4) == 0 && DEC_ROWS % (TT_THREADS / (D_PAD / 4)) == 0,
                  "output threads own 4 columns and an equal share of the rows");
    constexpr int NJ = DEC_BC / 8;             // scores per thread per tile
    constexpr int LDK = D_PAD + 4;             // Qs/Ks row length: float4-aligned, rows 4 banks apart
    constexpr int CG = D_PAD / 4;              // output column groups of 4
    constexpr int RG = TT_THREADS / CG;        // output row groups
    constexpr int RPT = DEC_ROWS / RG;         // output rows per thread
    __shared__ __align__(16) float Qs[DEC_ROWS][LDK];
    __shared__ __align__(16) float Ks[DEC_BC][LDK];
    __shared__ __align__(16) float Vs[DEC_BC][D_PAD];
    __shared__ float Ps[DEC_ROWS][DEC_BC + 1];  // +1: the rows a warp reads sit in different banks
    __shared__ float alpha_s[DEC_ROWS], l_s[DEC_ROWS], m_s[DEC_ROWS];

    const int tid = threadIdx.x;
    const int b = blockIdx.x / Hkv, hk = blockIdx.x % Hkv;
    const int G = Hq / Hkv;
    const int n_rows = G * T;  // query rows of this group
    const int row0 = blockIdx.y * DEC_ROWS;
    const int valid_rows = min(DEC_ROWS, n_rows - row0);  // the rest of the block's rows are padding
    const int L = context_lens[b];
    const int* table = block_tables + (long long)b * max_blocks;
    const int split_begin = blockIdx.z * split_len;
    const int split_end = min(L, split_begin + split_len);

    for (int idx = tid; idx < DEC_ROWS * D_PAD; idx += TT_THREADS) {  // Q rows of the group, fp32
        const int r = idx / D_PAD, d = idx % D_PAD, gr = row0 + r;
        float x = 0.0f;
        if (r < valid_rows && d < D) {
            const int h = hk * G + gr / T, t = gr % T;
            x = to_float(q[(((long long)b * Hq + h) * T + t) * D + d]);
        }
        Qs[r][d] = x;
    }

    // this thread's score row and its (head, token, position)
    const int r = tid >> 3, c = tid & 7;
    const bool row_ok = r < valid_rows;
    const int gr = row0 + r;
    const int h = hk * G + (row_ok ? gr / T : 0), t = row_ok ? gr % T : 0;
    const int last = causal ? last_visible_key(t, T, L) : L - 1;  // last visible key of the row
    const float slope = alibi_slopes ? alibi_slopes[h] : 0.0f;
    float m = NEG_INF, l = 0.0f;  // uniform over the 8 lanes of the row

    // this thread's output columns and rows
    const int cg = tid % CG, rg = tid / CG;
    float acc[RPT][4];
#pragma unroll
    for (int rr = 0; rr < RPT; ++rr) acc[rr][0] = acc[rr][1] = acc[rr][2] = acc[rr][3] = 0.0f;

    for (int j0 = split_begin; j0 < split_end; j0 += DEC_BC) {
        __syncthreads();  // the previous K, V, P tiles are consumed (and Qs is written)
        load_paged_tile<scalar_t, D_PAD, LDK>(&Ks[0][0], k_pool, table, j0, split_end, hk, Hkv, block_size, D);
        load_paged_tile<scalar_t, D_PAD, D_PAD>(&Vs[0][0], v_pool, table, j0, split_end, hk, Hkv, block_size, D);
        __syncthreads();  // the tiles are complete before anyone reads them

        float s[NJ];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
            const int jl = c + 8 * jj, j = j0 + jl;
            s[jj] = NEG_INF;
            if (row_ok && j < split_end && j <= last) {
                float dot = 0.0f;
#pragma unroll 8
                for (int d = 0; d < D_PAD; d += 4)
                    dot += dot4(*reinterpret_cast<const float4*>(&Qs[r][d]),
                                *reinterpret_cast<const float4*>(&Ks[jl][d]));
                s[jj] = dot * scale + slope * (float)(j - query_position(t, T, L));  // s = q.k scale + alibi
            }
        }
        // m, l and p = exp(s - m_new) over the row's 8 lanes; alpha = exp(m_old - m_new)
        const float alpha = online_softmax_update<NJ, 8>(s, m, l);
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) Ps[r][c + 8 * jj] = s[jj];
        if (c == 0) alpha_s[r] = alpha;
        __syncthreads();  // P and alpha of every row are visible to the output threads

#pragma unroll
        for (int rr = 0; rr < RPT; ++rr) {
            const int orow = rg + RG * rr;
            if (orow >= valid_rows) continue;  // padding row: nothing to accumulate
            const float a = alpha_s[orow];
#ifndef PLANTED_BUG_NO_RESCALE
            acc[rr][0] *= a;  // O = exp(m - m_new) O ...
            acc[rr][1] *= a;
            acc[rr][2] *= a;
            acc[rr][3] *= a;
#endif
#pragma unroll 8
            for (int jl = 0; jl < DEC_BC; ++jl) {  // ... + P V
                const float p = Ps[orow][jl];
                const float4 vv = *reinterpret_cast<const float4*>(&Vs[jl][4 * cg]);
                acc[rr][0] += p * vv.x;
                acc[rr][1] += p * vv.y;
                acc[rr][2] += p * vv.z;
                acc[rr][3] += p * vv.w;
            }
        }
    }

    if (c == 0) {
        l_s[r] = l;
        m_s[r] = m;
    }
    __syncthreads();  // the row statistics are visible to the output threads

#pragma unroll
    for (int rr = 0; rr < RPT; ++rr) {
        const int orow = rg + RG * rr, ogr = row0 + orow;
        if (orow >= valid_rows) continue;
        const int oh = hk * G + ogr / T, ot = ogr % T;
        const long long row = ((long long)b * Hq + oh) * T + ot;  // (b, h, t) flattened
        const float lr = l_s[orow];
        const float inv_l = lr > 0.0f ? 1.0f / lr : 0.0f;  // O / l; a row that saw nothing gets 0
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int d = 4 * cg + e;
            if (d >= D) continue;
            if (part_o == nullptr) {
                from_float(acc[rr][e] * inv_l, out + row * D + d);
            } else {
                part_o[(row * n_splits + blockIdx.z) * D + d] = acc[rr][e] * inv_l;
            }
        }
        if (part_o != nullptr && cg == 0)
            part_lse[row * n_splits + blockIdx.z] = lr > 0.0f ? m_s[orow] + logf(lr) : NEG_INF;
    }
}

// v2's second pass: one block per (b, h, t) row merges the n_splits partial results.
// lse = M + log sum_s exp(lse_s - M) with M = max_s lse_s; o = sum_s exp(lse_s - lse) o_s.
template <typename scalar_t>
__device__ __forceinline__ void decode_combine_body(const float* __restrict__ part_o,
                                                    const float* __restrict__ part_lse,
                                                    scalar_t* __restrict__ out, int D, int n_splits) {
    const long long row = blockIdx.x;
    const float* lse_row = part_lse + row * n_splits;
    float M = NEG_INF;
    for (int s = 0; s < n_splits; ++s) M = fmaxf(M, lse_row[s]);
    float total = 0.0f;
    for (int s = 0; s < n_splits; ++s) total += lse_row[s] == NEG_INF ? 0.0f : expf(lse_row[s] - M);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float value = 0.0f;
        if (M != NEG_INF) {
            for (int s = 0; s < n_splits; ++s) {
                if (lse_row[s] == NEG_INF) continue;  // an empty split (past the end of a short sequence)
                value += expf(lse_row[s] - M) * part_o[(row * n_splits + s) * D + d];
            }
            value /= total;
        }
        from_float(value, out + row * D + d);
    }
}

// One kernel serves both versions; they differ in the launch (tinytransformer/cuda/decode.py):
//   v1: grid (B * Hkv, ceil(G * T / DEC_ROWS), 1), split_len >= max context, part_o = nullptr:
//       the block writes the normalised output to out.
//   v2: grid (B * Hkv, ceil(G * T / DEC_ROWS), n_splits), then decode_combine_* over B * Hq * T rows.
#define DECODE_ENTRY(NAME, SCALAR, D_PAD)                                                                \
    extern "C" __global__ void __launch_bounds__(TT_THREADS) decode_##NAME##_d##D_PAD(                    \
        const SCALAR* q, const SCALAR* k_pool, const SCALAR* v_pool, const int* block_tables,            \
        const int* context_lens, const float* alibi_slopes, SCALAR* out, float* part_o, float* part_lse, \
        int Hq, int Hkv, int T, int D, int block_size, int max_blocks, float scale, int causal,          \
        int split_len, int n_splits) {                                                                   \
        decode_body<SCALAR, D_PAD>(q, k_pool, v_pool, block_tables, context_lens, alibi_slopes, out,     \
                                   part_o, part_lse, Hq, Hkv, T, D, block_size, max_blocks, scale,       \
                                   causal, split_len, n_splits);                                         \
    }

#define DECODE_COMBINE_ENTRY(NAME, SCALAR)                                                               \
    extern "C" __global__ void decode_combine_##NAME(const float* part_o, const float* part_lse,        \
                                                     SCALAR* out, int D, int n_splits) {                \
        decode_combine_body<SCALAR>(part_o, part_lse, out, D, n_splits);                                 \
    }

#define DECODE_ALL_DIMS(NAME, SCALAR) \
    DECODE_ENTRY(NAME, SCALAR, 64)    \
    DECODE_ENTRY(NAME, SCALAR, 128)   \
    DECODE_COMBINE_ENTRY(NAME, SCALAR)

DECODE_ALL_DIMS(fp32, float)
DECODE_ALL_DIMS(fp16, __half)
DECODE_ALL_DIMS(bf16, __nv_bfloat16)
