// Cached decode attention over a paged KV cache.
//
// The NumPy reference is tinytransformer.paged_attention.paged_decode_attention;
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
//   v3  v2's splits and combine, with the staging gone: K and V go from global
//       memory straight into registers, 16 bytes per lane, and every warp takes
//       its own keys of the split (v1/v2 stage each tile in shared memory as fp32,
//       and only the threads of real query rows compute scores, so with a group
//       of 4 heads one warp of four does the dot products). A key's D elements
//       are spread over D / (16 bytes) lanes, which reduce the dot product with
//       shuffles; the group's DEC3_ROWS query rows live in registers; each warp
//       keeps its own online softmax, and the four warps merge through shared
//       memory at the end as the splits do (by their maxima). Each lane issues
//       DEC3_UNROLL K loads and DEC3_UNROLL V loads before it uses any, so many
//       bytes are in flight per SM: the point of a memory-bound kernel.
//
// Contract: q [B, Hq, T, D] (T new tokens per sequence, 1 in plain decoding, a
// few when verifying a speculative draft); k_pool, v_pool [n_blocks, Hkv,
// block_size, D]; block_tables [B, max_blocks] int32; context_lens [B] int32,
// counting the new tokens. Query t of sequence b sits at p = L_b - T + t; with
// causal it sees keys j <= p; alibi_slopes (nullable, [Hq]) adds
// slope_h * (j - p). Element types fp32, fp16, bf16 (q, pools and output alike),
// arithmetic in fp32; head dims padded to 64 or 128. Key positions are int32: the
// launcher refuses tables of more than 2**30 positions (max_blocks * block_size)
// and split_len above that, so j0 + a tile and split ends stay below 2**31.
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
// DEC3_ROWS: v3's query rows per block; DEC3_UNROLL: v3's K (and V) loads in flight per lane;
// DEC3_MIN_BLOCKS: v3's blocks per SM, which its registers must allow (its splits are sized for it).
#if !defined(DEC_ROWS) || !defined(DEC_BC) || !defined(DEC3_ROWS) || !defined(DEC3_UNROLL) || \
    !defined(DEC3_MIN_BLOCKS)
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
    const int split_begin = blockIdx.z * split_len;  // int32: the launcher keeps positions <= 2**30
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

// ---- v3: registers instead of shared-memory tiles -----------------------------------

// 16 bytes of key j's row (elements d0 .. d0 + VEC - 1) of KV head hk, following the block
// table; zeros past key_end. vec: one 16-byte load (D fills D_PAD, pool aligned); else
// element by element, zeros past D.
template <typename scalar_t, int VEC>
__device__ __forceinline__ uint4 load_key_slice(const scalar_t* __restrict__ pool, const int* __restrict__ table,
                                                int j, int key_end, int hk, int Hkv, int block_size, int D,
                                                int d0, bool vec) {
    union { uint4 raw; scalar_t x[VEC]; } u;
    u.raw = make_uint4(0u, 0u, 0u, 0u);
    if (j < key_end) {
        const int page = table[j / block_size], slot = j % block_size;  // the paging lookup
        const scalar_t* row = pool + (((long long)page * Hkv + hk) * block_size + slot) * D;
        if (vec) {
            u.raw = *reinterpret_cast<const uint4*>(row + d0);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                if (d0 + e < D) u.x[e] = row[d0 + e];
        }
    }
    return u.raw;
}

// The VEC elements of a 16-byte slice as floats.
template <typename scalar_t, int VEC>
__device__ __forceinline__ void unpack(uint4 raw, float (&x)[VEC]) {
    union { uint4 raw; scalar_t x[VEC]; } u;
    u.raw = raw;
#pragma unroll
    for (int e = 0; e < VEC; ++e) x[e] = to_float(u.x[e]);
}

// The work of one v3 block: query rows [DEC3_ROWS * blockIdx.y, +DEC3_ROWS) of the group of
// KV head hk of sequence b, against keys [split_begin, split_end).
// Lane mapping: a key's row of D_PAD elements is KL = D_PAD / VEC lanes of 16 bytes each;
// a warp load covers KPL = 32 / KL keys (lane = key kg * KL + slice); a warp step takes
// U = DEC3_UNROLL loads, KPL * U keys, and warp w takes steps w, w + 4, w + 8, ... of the split.
// m, l (per row) are the same on every lane of a warp; acc[r] holds the lane's slice of
// the output, summed over the keys of its kg (the kg are summed at the end).
template <typename scalar_t, int D_PAD>
__device__ __forceinline__ void decode_v3_body(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k_pool, const scalar_t* __restrict__ v_pool,
    const int* __restrict__ block_tables, const int* __restrict__ context_lens,
    const float* __restrict__ alibi_slopes, scalar_t* __restrict__ out, float* __restrict__ part_o,
    float* __restrict__ part_lse, int Hq, int Hkv, int T, int D, int block_size, int max_blocks, float scale,
    int causal, int split_len, int n_splits) {
    constexpr int VEC = 16 / sizeof(scalar_t);  // elements per 16-byte load: 4 (fp32) or 8 (fp16, bf16)
    constexpr int KL = D_PAD / VEC;             // lanes per key
    constexpr int KPL = 32 / KL;                // keys per warp load
    constexpr int R = DEC3_ROWS, U = DEC3_UNROLL, WARPS = TT_THREADS / 32;
    constexpr int STEP = KPL * U;               // keys per warp step
    static_assert(KL <= 32 && 32 % KL == 0, "a key's row is a whole number of lanes, and a warp whole keys");
    static_assert(TT_THREADS % 32 == 0, "whole warps");
    __shared__ float Ms[WARPS][R], Ls[WARPS][R];  // each warp's softmax statistics ...
    __shared__ __align__(16) float Os[WARPS][R][D_PAD];  // ... and its output, unnormalised

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kg = lane / KL, d0 = (lane % KL) * VEC;  // this lane's key of a load, and its columns
    const int b = blockIdx.x / Hkv, hk = blockIdx.x % Hkv;
    const int G = Hq / Hkv;
    const int row0 = blockIdx.y * R;
    const int valid_rows = min(R, G * T - row0);
    const int L = context_lens[b];
    const int* table = block_tables + (long long)b * max_blocks;
    const int split_begin = blockIdx.z * split_len;  // int32: the launcher keeps positions <= 2**30
    const int split_end = min(L, split_begin + split_len);
    const bool vec = D == D_PAD && ((reinterpret_cast<unsigned long long>(k_pool) |
                                     reinterpret_cast<unsigned long long>(v_pool)) & 15) == 0;

    // the block's query rows: this lane's slice of each, in registers, and each row's mask
    float qr[R][VEC];
    int last[R], pos[R];
    float slope[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int gr = row0 + r, h = hk * G + (r < valid_rows ? gr / T : 0), t = r < valid_rows ? gr % T : 0;
#pragma unroll
        for (int e = 0; e < VEC; ++e)
            qr[r][e] = r < valid_rows && d0 + e < D ? to_float(q[(((long long)b * Hq + h) * T + t) * D + d0 + e]) : 0.0f;
        pos[r] = query_position(t, T, L);
        last[r] = r >= valid_rows ? -1 : (causal ? last_visible_key(t, T, L) : L - 1);  // padding sees nothing
        slope[r] = alibi_slopes && r < valid_rows ? alibi_slopes[h] : 0.0f;
    }
    float m[R], l[R], acc[R][VEC];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[r][e] = 0.0f;
    }

    for (int j0 = split_begin + warp * STEP; j0 < split_end; j0 += WARPS * STEP) {
        uint4 kraw[U], vraw[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {  // every load of the step is in flight before any is used
            const int j = j0 + u * KPL + kg;
            kraw[u] = load_key_slice<scalar_t, VEC>(k_pool, table, j, split_end, hk, Hkv, block_size, D, d0, vec);
            vraw[u] = load_key_slice<scalar_t, VEC>(v_pool, table, j, split_end, hk, Hkv, block_size, D, d0, vec);
        }
        float s[R][U];  // s = q.k scale + alibi, for this lane's key of each load
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kx[VEC];
            unpack<scalar_t, VEC>(kraw[u], kx);
            const int j = j0 + u * KPL + kg;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < VEC; ++e) dot += qr[r][e] * kx[e];
#pragma unroll
                for (int off = 1; off < KL; off <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);  // over the key's lanes
                s[r][u] = j < split_end && j <= last[r] ? dot * scale + slope[r] * (float)(j - pos[r]) : NEG_INF;
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {  // the online softmax of row r over the warp's STEP keys
            float step_max = NEG_INF;
#pragma unroll
            for (int u = 0; u < U; ++u) step_max = fmaxf(step_max, s[r][u]);
#pragma unroll
            for (int off = KL; off < 32; off <<= 1)  // over the keys of the load (the key's lanes agree already)
                step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, off));
            const float m_new = fmaxf(m[r], step_max);            // m_new = max(m, rowmax(s))
            const float m_safe = m_new == NEG_INF ? 0.0f : m_new;  // nothing seen yet: avoid inf - inf
            const float alpha = expf(m[r] - m_safe);              // exp(m - m_new)
            float row_sum = 0.0f;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                s[r][u] = expf(s[r][u] - m_safe);  // p = exp(s - m_new); masked -> 0
                row_sum += s[r][u];
            }
#pragma unroll
            for (int off = KL; off < 32; off <<= 1) row_sum += __shfl_xor_sync(0xffffffffu, row_sum, off);
            l[r] = alpha * l[r] + row_sum;  // l = exp(m - m_new) l + rowsum(p)
            m[r] = m_new;
#ifndef PLANTED_BUG_NO_RESCALE
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[r][e] *= alpha;  // O = exp(m - m_new) O ...
#endif
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {  // ... + P V, this lane's key of each load
            float vx[VEC];
            unpack<scalar_t, VEC>(vraw[u], vx);
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[r][e] += s[r][u] * vx[e];
        }
    }

    // the warp's output: sum the slices of its KPL keys (lanes with the same columns), then
    // lanes of kg 0 hold it; the warps meet in shared memory
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
#pragma unroll
            for (int off = KL; off < 32; off <<= 1) acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], off);
    if (kg == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < VEC; ++e) Os[warp][r][d0 + e] = acc[r][e];
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            Ms[warp][r] = m[r];
            Ls[warp][r] = l[r];
        }
    }
    __syncthreads();

    // merge the warps as the combine kernel merges splits: M = max_w m_w,
    // l = sum_w exp(m_w - M) l_w, o = sum_w exp(m_w - M) O_w / l
    for (int idx = threadIdx.x; idx < R * D_PAD; idx += TT_THREADS) {
        const int r = idx / D_PAD, d = idx % D_PAD;
        if (r >= valid_rows || d >= D) continue;
        float M = NEG_INF;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) M = fmaxf(M, Ms[w][r]);
        float lsum = 0.0f, o = 0.0f;
        if (M != NEG_INF) {
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                const float f = expf(Ms[w][r] - M);  // a warp that saw nothing: exp(-inf) = 0
                lsum += f * Ls[w][r];
                o += f * Os[w][r][d];
            }
        }
        const float value = lsum > 0.0f ? o / lsum : 0.0f;  // a row that saw nothing gets 0
        const int gr = row0 + r;
        const long long row = ((long long)b * Hq + hk * G + gr / T) * T + gr % T;  // (b, h, t) flattened
        if (part_o == nullptr) {
            from_float(value, out + row * D + d);
        } else {
            part_o[(row * n_splits + blockIdx.z) * D + d] = value;
            if (d == 0) part_lse[row * n_splits + blockIdx.z] = lsum > 0.0f ? M + logf(lsum) : NEG_INF;
        }
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

// v3: grid (B * Hkv, ceil(G * T / DEC3_ROWS), n_splits); with n_splits = 1 and part_o = nullptr the
// block writes out directly, else decode_combine_* follows as in v2.
#define DECODE3_ENTRY(NAME, SCALAR, D_PAD)                                                               \
    extern "C" __global__ void __launch_bounds__(TT_THREADS, DEC3_MIN_BLOCKS) decode3_##NAME##_d##D_PAD(  \
        const SCALAR* q, const SCALAR* k_pool, const SCALAR* v_pool, const int* block_tables,            \
        const int* context_lens, const float* alibi_slopes, SCALAR* out, float* part_o, float* part_lse, \
        int Hq, int Hkv, int T, int D, int block_size, int max_blocks, float scale, int causal,          \
        int split_len, int n_splits) {                                                                   \
        decode_v3_body<SCALAR, D_PAD>(q, k_pool, v_pool, block_tables, context_lens, alibi_slopes, out,  \
                                      part_o, part_lse, Hq, Hkv, T, D, block_size, max_blocks, scale,    \
                                      causal, split_len, n_splits);                                      \
    }

#define DECODE_COMBINE_ENTRY(NAME, SCALAR)                                                               \
    extern "C" __global__ void decode_combine_##NAME(const float* part_o, const float* part_lse,        \
                                                     SCALAR* out, int D, int n_splits) {                \
        decode_combine_body<SCALAR>(part_o, part_lse, out, D, n_splits);                                 \
    }

#define DECODE_ALL_DIMS(NAME, SCALAR) \
    DECODE_ENTRY(NAME, SCALAR, 64)    \
    DECODE_ENTRY(NAME, SCALAR, 128)   \
    DECODE3_ENTRY(NAME, SCALAR, 64)   \
    DECODE3_ENTRY(NAME, SCALAR, 128)  \
    DECODE_COMBINE_ENTRY(NAME, SCALAR)

DECODE_ALL_DIMS(fp32, float)
DECODE_ALL_DIMS(fp16, __half)
DECODE_ALL_DIMS(bf16, __nv_bfloat16)
