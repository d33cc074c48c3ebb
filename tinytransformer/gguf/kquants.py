"""GGUF's k-quants Q4_K, Q5_K and Q6_K: super-blocks of 256 with quantised scales, as llama.cpp writes them.

The formats of `tinytransformer.gguf.legacy_quants` spend 16 bits on the scale of every
32 weights (0.5 bits per weight). The k-quants (Kawrakow, llama.cpp PR #1684,
2023) group 8 or 16 sub-blocks into a *super-block* of 256 weights and store
the sub-block scales themselves as 6- or 8-bit integers times one float16
super-scale: two levels of scales, and a search for the best ones.

    Q4_K  x = d * sc_j * q - dmin * m_j    q in 0..15, 8 sub-blocks of 32   4.5 bits per weight
    Q5_K  x = d * sc_j * q - dmin * m_j    q in 0..31, 8 sub-blocks of 32   5.5
    Q6_K  x = d * sc_j * (q - 32)          q in 0..63, 16 sub-blocks of 16  6.5625

    sc_j, m_j: 6-bit (Q4_K, Q5_K) or signed 8-bit (Q6_K) integers per sub-block;
    d, dmin: float16 per super-block.

Block layouts, byte offsets on top, one super-block of 256 weights:

    Q4_K (144 bytes)  0    2      4            16                              144
                      | d  | dmin | scales[12] | qs[128]                        |
    Q5_K (176 bytes)  0    2      4            16         48                   176
                      | d  | dmin | scales[12] | qh[32]   | qs[128]            |
    Q6_K (210 bytes)  0                  128           192           208   210
                      | ql[128]          | qh[64]      | scales[16]  | d   |
                                                         (int8 each)

    The 12 scale bytes of Q4_K and Q5_K hold eight 6-bit scales sc_0..7 (A..H) and eight
    6-bit mins m_0..7 (a..h); capitals are scale bits, lower case min bits:

        byte  0..3   EEAAAAAA FFBBBBBB GGCCCCCC HHDDDDDD   sc_0..3, and the top 2 bits of sc_4..7
        byte  4..7   eeaaaaaa ffbbbbbb ggcccccc hhdddddd   m_0..3,  and the top 2 bits of m_4..7
        byte  8..11  eeeeEEEE ffffFFFF ggggGGGG hhhhHHHH   the low 4 bits of sc_4..7 and m_4..7

    Nibble order. Q4_K: qs[32c + l] holds weight 64c + l in its low nibble and
    weight 64c + 32 + l in its high nibble (c = 0..3, l = 0..31): each 32 bytes
    cover two sub-blocks. Q5_K: the same for the low 4 bits, and bit k of qh[l]
    is the fifth bit of weight 32k + l. Q6_K, per half h = 0, 1 of 128 weights
    a_l, b_l, c_l, d_l = weights 128h + l, +32, +64, +96:
        ql[64h + l]      = low4(a_l) | low4(c_l) << 4
        ql[64h + 32 + l] = low4(b_l) | low4(d_l) << 4
        qh[32h + l]      = high2(a_l) | high2(b_l) << 2 | high2(c_l) << 4 | high2(d_l) << 6

How the scales are chosen (which is where implementations disagree):
Q4_K and Q5_K fit each sub-block by weighted least squares (`make_qkx2_quants`:
weights w_i = rms(x) + |x_i|, a grid of 21 or 16 trial scales around
nmax / (max - min), each followed by a closed-form refit of scale and min),
then quantise the eight scales and mins to 6 bits against the largest,
then requantise the weights with the stored scales. Q6_K fits each
sub-block of 16 with weights x_i^2 over 19 trial scales around -32 / x_maxabs
(`make_qx_quants`), and stores the scales as int8 against the largest.
Every rounding is `nearest_int` (to nearest, ties to even, by adding
1.5 * 2^23), every sum runs left to right in float32, as the C loops do, so
our bytes equal llama.cpp's `quantize_row_q*_K_ref` exactly; the `libgguf`
package (bit-exact with that C code) is the test oracle.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    >>> [quantize(x, name).size * 8 / 256 for name in ("Q4_K", "Q5_K", "Q6_K")]   # bits per weight
    [4.5, 5.5, 6.5625]
    >>> errors = [float(np.abs(dequantize(quantize(x, n), n) - x).mean()) for n in ("Q4_K", "Q5_K", "Q6_K")]
    >>> errors == sorted(errors, reverse=True)   # each extra bit roughly halves the error
    True

Shapes: values along the last axis, which must be a multiple of 256; the
quantiser returns flat bytes, the dequantiser flat float32 values.

Does not handle: Q2_K, Q3_K, Q8_K, importance weights (llama.cpp's imatrix,
the `quant_weights` argument of its `quantize_q*_K`), or rows shorter than 256.
"""
from __future__ import annotations

import numpy as np

from tinytransformer.gguf.legacy_quants import (as_blocks, f16_bytes, f16_field, pack_nibbles, raw_blocks,
                                                unpack_nibbles)

__all__ = ["QK_K", "TYPE_SIZES", "quantize", "dequantize", "nearest_int", "make_qkx2_quants", "make_qx_quants",
           "quantize_q4_k", "dequantize_q4_k", "quantize_q5_k", "dequantize_q5_k", "quantize_q6_k",
           "dequantize_q6_k", "QUANTIZERS", "DEQUANTIZERS"]

QK_K = 256  # weights per super-block
TYPE_SIZES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}  # bytes per super-block
GROUP_MAX_EPS = np.float32(1e-15)  # a Q6_K sub-block whose max |x| is below this is all zeros
f32 = np.float32


def nearest_int(v) -> np.ndarray:
    """ggml's rounding: v + 1.5 * 2^23 leaves round(v) (ties to even) in the low mantissa bits.

    Exact for |v| < 2^22, and reproduces the C code bit for bit outside that range too
    (NaN gives 0, +-inf give -2^22), which is what a byte-exact quantiser must do.
    """
    bits = (np.asarray(v, dtype=np.float32) + f32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _running_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 left to right in float32, as `for (i...) s += t[i];` does (np.sum pairs terms)."""
    total = terms[0].copy()
    for term in terms[1:]:
        total += term
    return total


# --- the two scale searches of ggml-quants.c -------------------------------------------

def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Fit x ~ scale * L - the_min with L in 0..nmax for every row of x [m, n] by weighted least squares.

    Start from scale = (max - min) / nmax with min = min(0, min(x)); then for each trial
    iscale = (rmin + rdelta * step + nmax) / (max - min), step = 0..nstep, round to L and refit
    (scale, min) in closed form, keeping the fit with the smallest sum of w (scale L + min - x)^2.
    Returns (scale [m], the_min [m] >= 0, L [m, n] uint8), as the C function does.
    """
    xt, wt = np.ascontiguousarray(x.T), np.ascontiguousarray(weights.T)  # [n, m]: loops run over axis 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lo = np.minimum(xt.min(axis=0), f32(0))  # [m]
        hi = xt.max(axis=0)
        flat = hi == lo
        sum_w = _running_sum(wt)
        sum_x = _running_sum(wt * xt)
        iscale = f32(nmax) / (hi - lo)
        scale = f32(1) / iscale
        L = np.clip(nearest_int(iscale * (xt - lo)), 0, nmax).astype(np.float32)  # [n, m]
        best_error = _running_sum(wt * np.square(scale * L + lo - xt))
        minimum = lo
        for step in range(nstep + 1):
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (hi - minimum)
            trial = np.clip(nearest_int(iscale * (xt - minimum)), 0, nmax).astype(np.float32)
            wl = wt * trial
            sum_l, sum_l2, sum_xl = _running_sum(wl), _running_sum(wl * trial), _running_sum(wl * xt)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0  # the fit wants a positive offset: refit the scale alone, min = 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, f32(0), this_min)
            error = _running_sum(wt * np.square(this_scale * trial + this_min - xt))
            better = (D > 0) & (error < best_error) & ~flat
            L = np.where(better, trial, L)
            best_error = np.where(better, error, best_error)
            scale = np.where(better, this_scale, scale)
            minimum = np.where(better, this_min, minimum)
    scale = np.where(flat, f32(0), scale).astype(np.float32)
    L = np.where(flat, f32(0), L)
    return scale, (-minimum).astype(np.float32), L.T.astype(np.uint8)


def make_qx_quants(x: np.ndarray, nmax: int):
    """Fit x ~ scale * (L - nmax) with L in 0..2 nmax - 1 for every row of x [m, n], weights x^2.

    The first guess puts the value of largest magnitude on -nmax; 18 more trial scales
    -(nmax + 0.1 is) / x_maxabs, is = -9..9, are kept when they raise (sum w x l)^2 / sum w l^2.
    Returns (scale [m], L [m, n] uint8). All-zero rows (max |x| < 1e-15) give scale 0, L 0.
    """
    xt = np.ascontiguousarray(x.T)  # [n, m]
    w = xt * xt
    index = np.abs(xt).argmax(axis=0)  # the first of the largest, as the C loop keeps
    x_maxabs = np.take_along_axis(xt, index[None, :], axis=0)[0]  # [m], sign kept
    zero = np.abs(x_maxabs) < GROUP_MAX_EPS

    def fit(iscale):
        l = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1).astype(np.float32)  # [n, m]
        return l, _running_sum(w * xt * l), _running_sum(w * l * l)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        l, sumlx, suml2 = fit(f32(-nmax) / x_maxabs)
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
        best = scale * sumlx
        L = l + nmax
        for step in [*range(-9, 0), *range(1, 10)]:
            l, sumlx, suml2 = fit(-(f32(nmax) + f32(0.1) * f32(step)) / x_maxabs)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, l + nmax, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    return np.where(zero, f32(0), scale).astype(np.float32), np.where(zero, f32(0), L).T.astype(np.uint8)


# --- Q4_K and Q5_K: 8 sub-blocks of 32, 6-bit scales and mins ---------------------------

def _pack_scales_mins(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins per super-block [n, 8] -> the 12 bytes drawn above."""
    low = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)  # bytes 0..3
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)  # bytes 4..7
    high = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)  # bytes 8..11
    return np.concatenate([low, mid, high], axis=1).astype(np.uint8)


def unpack_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes [n, 12] -> (scales [n, 8], mins [n, 8]) as 6-bit integers."""
    low, mid, high = packed[:, :4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([low & 0x3F, (high & 0x0F) | ((low >> 6) << 4)], axis=1)
    m = np.concatenate([mid & 0x3F, (high >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, m


def _quantize_scale_min(x, nmax: int, rmin: float, rdelta: float, nstep: int):
    """The shared half of Q4_K and Q5_K: -> (d, dmin as float16 bytes [n, 2] each, 12 scale bytes, L [n, 256])."""
    sub = as_blocks(x, QK_K).reshape(-1, 32)  # [n*8, 32]
    n = sub.shape[0] // 8
    av_x = np.sqrt(_running_sum(np.ascontiguousarray((sub * sub).T)) / f32(32))  # [n*8]: rms of the sub-block
    weights = av_x[:, None] + np.abs(sub)  # [n*8, 32]
    scales, mins, L_fit = make_qkx2_quants(sub, weights, nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1, keepdims=True), f32(0))  # [n, 1]
    max_min = np.maximum(mins.max(axis=1, keepdims=True), f32(0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
        ls = np.minimum(nearest_int(inv_scale * scales) & 0xFF, 63).astype(np.uint8)  # uint8_t, then MIN(63, .)
        lm = np.minimum(nearest_int(inv_min * mins) & 0xFF, 63).astype(np.uint8)
        d, dmin = f16_bytes(max_scale / f32(63)), f16_bytes(max_min / f32(63))
        # requantise with the scales as stored: d_j = d * sc_j, dm_j = dmin * m_j
        d_j = (np.ascontiguousarray(d).view("<f2").astype(np.float32) * ls)[:, :, None]  # [n, 8, 1]
        dm_j = (np.ascontiguousarray(dmin).view("<f2").astype(np.float32) * lm)[:, :, None]
        L = np.clip(nearest_int((sub.reshape(n, 8, 32) + dm_j) / d_j), 0, nmax)
    L = np.where(d_j == 0, L_fit.reshape(n, 8, 32), L).astype(np.uint8)  # a zero scale keeps the fit's L
    return d, dmin, _pack_scales_mins(ls, lm), L.reshape(n, QK_K)


def quantize_q4_k(x) -> np.ndarray:
    """float values (last axis a multiple of 256) -> Q4_K bytes (`quantize_row_q4_K_ref`)."""
    d, dmin, scales, L = _quantize_scale_min(x, 15, -1.0, 0.1, 20)
    qs = pack_nibbles(L.reshape(-1, 4, 64)).reshape(-1, 128)  # [n, 128]
    return np.concatenate([d, dmin, scales, qs], axis=1).reshape(-1)


def quantize_q5_k(x) -> np.ndarray:
    """float values (last axis a multiple of 256) -> Q5_K bytes (`quantize_row_q5_K_ref`)."""
    d, dmin, scales, L = _quantize_scale_min(x, 31, -0.5, 0.1, 15)
    qs = pack_nibbles((L & 0x0F).reshape(-1, 4, 64)).reshape(-1, 128)  # [n, 128]
    high = (L >> 4).reshape(-1, 8, 32)  # [n, 8, 32]: the fifth bit, sub-block k at position l
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)  # bit k of qh[l]
    return np.concatenate([d, dmin, scales, qh, qs], axis=1).reshape(-1)


def _dequantize_scale_min(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x = (d sc_j) q - dmin m_j for [n, 8, 32] values q, in the gguf package's order of float ops."""
    d, dmin = f16_field(blocks, 0), f16_field(blocks, 2)  # [n, 1]
    sc, m = unpack_scales_mins(blocks[:, 4:16])  # [n, 8]
    scale = (d * sc.astype(np.float32))[:, :, None]  # [n, 8, 1]
    offset = (dmin * m.astype(np.float32))[:, :, None]
    return (scale * q.astype(np.float32) - offset).reshape(-1)


def dequantize_q4_k(raw) -> np.ndarray:
    """Q4_K bytes -> float32 values."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q4_K"], "Q4_K")
    q = unpack_nibbles(blocks[:, 16:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    return _dequantize_scale_min(blocks, q)


def dequantize_q5_k(raw) -> np.ndarray:
    """Q5_K bytes -> float32 values."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q5_K"], "Q5_K")
    low = unpack_nibbles(blocks[:, 48:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    high = (blocks[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # [n, 8, 32]
    return _dequantize_scale_min(blocks, low | (high << 4))


# --- Q6_K: 16 sub-blocks of 16, int8 scales ---------------------------------------------

def quantize_q6_k(x) -> np.ndarray:
    """float values (last axis a multiple of 256) -> Q6_K bytes (`quantize_row_q6_K_ref`)."""
    sub = as_blocks(x, QK_K).reshape(-1, 16)  # [n*16, 16]
    n = sub.shape[0] // 16
    scales, L_fit = make_qx_quants(sub, 32)
    scales = scales.reshape(n, 16)
    index = np.abs(scales).argmax(axis=1)[:, None]
    max_scale = np.take_along_axis(scales, index, axis=1)  # [n, 1]: the largest |scale|, sign kept
    zero = np.abs(max_scale) < GROUP_MAX_EPS  # the whole super-block is zero: all bytes 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f32(-128) / np.where(zero, f32(1), max_scale)
        d = f16_bytes(f32(1) / iscale)  # [n, 2]
        sc = np.minimum(nearest_int(iscale * scales), 127).astype(np.int8)  # [n, 16]
        d_j = (np.ascontiguousarray(d).view("<f2").astype(np.float32) * sc)[:, :, None]  # [n, 16, 1]
        L = np.clip(nearest_int(sub.reshape(n, 16, 16) / d_j), -32, 31) + 32
    L = np.where(d_j == 0, L_fit.reshape(n, 16, 16), L).astype(np.uint8).reshape(n, 2, 4, 32)  # [n, half, abcd, l]
    a, b, c, e = L[:, :, 0], L[:, :, 1], L[:, :, 2], L[:, :, 3]  # [n, 2, 32] each: weights l, +32, +64, +96
    ql = np.concatenate([(a & 0x0F) | ((c & 0x0F) << 4), (b & 0x0F) | ((e & 0x0F) << 4)], axis=2)  # [n, 2, 64]
    qh = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)  # [n, 2, 32]
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d], axis=1)
    out[zero[:, 0]] = 0
    return out.reshape(-1)


def dequantize_q6_k(raw) -> np.ndarray:
    """Q6_K bytes -> float32 values: x = d * sc_j * (q - 32)."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q6_K"], "Q6_K")
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8)[:, None]  # [n, 2, 2, 64]
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]  # [n, 2, 4, 32]
    q = ((ql & 0x0F).reshape(n, 2, 4, 32) | ((qh & 0x03) << 4)).astype(np.int8) - np.int8(32)  # [n, 2, 4, 32]
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)  # [n, 16]
    scale = (f16_field(blocks, 208) * sc)[:, :, None]  # [n, 16, 1]
    return (scale * q.reshape(n, 16, 16).astype(np.float32)).reshape(-1)


QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}
DEQUANTIZERS = {"Q4_K": dequantize_q4_k, "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k}


def quantize(x, name: str) -> np.ndarray:
    """float values -> bytes of the k-quant `name` ("Q4_K", "Q5_K" or "Q6_K")."""
    if name not in QUANTIZERS:
        raise ValueError(f"name: expected one of {sorted(QUANTIZERS)}, got {name!r}")
    return QUANTIZERS[name](x)


def dequantize(raw, name: str) -> np.ndarray:
    """bytes of the k-quant `name` -> float32 values (flat)."""
    if name not in DEQUANTIZERS:
        raise ValueError(f"name: expected one of {sorted(DEQUANTIZERS)}, got {name!r}")
    return DEQUANTIZERS[name](raw)
