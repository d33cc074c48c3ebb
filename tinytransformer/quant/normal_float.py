"""4-bit NormalFloat (NF4) and FP4 with blockwise absmax, and double quantisation of the scales (QLoRA).

Integer grids space their 16 levels evenly, but trained weights are close to
normally distributed: most of them sit near zero, where an even grid has few
levels. NormalFloat (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of
Quantized LLMs") puts the levels at quantiles of N(0, 1) instead, so each level
is used about equally often, and scales them into [-1, 1]:

    block of 64 weights x_i, absmax a = max |x_i| (float32)
    q_i = the index of the code value nearest x_i / a       (4 bits)
    x_i ~ a * code[q_i]

NF4's 16 values: 8 quantiles of the negative half and 9 of the positive half,
from p = 1 - 0.9677083 to 0.9677083, divided by the largest, so that -1, 0 and
+1 are exact:

    -1.0000 -0.6962 -0.5251 -0.3949 -0.2844 -0.1848 -0.0911  0.0000
     0.0796  0.1609  0.2461  0.3379  0.4407  0.5626  0.7230  1.0000

FP4 (for comparison) is a tiny float: 1 sign, 2 exponent and 1 mantissa bit,
magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12, stored in bit-pattern order
(code 8 is -0).

Double quantisation. One float32 absmax per 64 weights costs 32/64 = 0.5 bits
per weight. QLoRA quantises those scales too: subtract their mean, then store
them as 8-bit codes of bitsandbytes' "dynamic" map (a signed 8-bit float-like
code, `dynamic_code()`) with one float32 absmax per 256 scales:

    bits per weight, NF4 blocks of 64:   4 + 32/64                          = 4.5
    with double quantisation:            4 + 8/64 + 32/(64*256) + 32/n      ~ 4.127 (n weights)

Packing: two codes per byte, the *first* value in the *high* nibble
(bitsandbytes' order; ggml's Q4_0 puts value j low and j+16 high). Blocks run
over the flattened tensor; the last block may be short, and an odd count is
padded with one zero code.

Rounding is to the nearest code value; a value exactly halfway goes to the
lower code. x / a is computed as x * (1/a) with a clamped at 1e-38, except in a
short last block, which divides. With that, the 4-bit codes and values equal
bitsandbytes' on the CPU bit for bit, and the scales' 8-bit codes equal its
reference implementation's (the test oracles), given the same code tables and
the same mean. (Its CPU kernel for the 8-bit codes searches the table
approximately and can pick the second-nearest value within a few percent of a
midpoint; its mean of the scales is a float32 sum, ours is rounded once.)

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    >>> nf4 = quantize_nf4(x)
    >>> nf4.packed.shape, nf4.absmax.shape, nf4.bits_per_weight
    ((128,), (4,), 4.5)
    >>> bool(np.abs(nf4.dequantize() - x).max() < 0.2 * np.abs(x).max())
    True
    >>> w = np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32)
    >>> quantize_nf4(w).bits_per_weight, round(quantize_nf4(w, double_quant=True).bits_per_weight, 4)
    (4.5, 4.1271)

Does not handle: bitsandbytes' other block sizes for the scales' codes, 16-bit
inputs or outputs (everything is float32 here), the 4-bit matrix multiply
kernels (`tinytransformer.quant.weights` multiplies by dequantised blocks).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import finite_array, positive_int

__all__ = ["NF4_CODE", "FP4_CODE", "normal_float_code", "dynamic_code", "quantize_4bit", "quantize_nf4",
           "quantize_fp4", "FourBitQuantized", "BlockwiseQuantized", "quantize_blockwise", "nearest_code"]

# QLoRA's NF4 values (Appendix E of the paper; bitsandbytes' table), float32.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=np.float32)

# FP4 (e2m1, exponent bias 2) in bit-pattern order: codes 0..7 positive, 8..15 the same negated.
_FP4_MAGNITUDES = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
FP4_CODE = (np.array(_FP4_MAGNITUDES + [-m for m in _FP4_MAGNITUDES], dtype=np.float32) / np.float32(12))

CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}
CLAMP = np.float32(1e-38)  # the smallest absmax divided by (an all-zero block stays zero)


def normal_float_code(offset: float = 0.9677083) -> np.ndarray:
    """NF4 derived from the normal distribution: quantiles Phi^-1(p) for 8 evenly spaced p
    from `offset` to 1/2 on the positive side (plus zero), 7 on the negative side, over the largest."""
    ppf = statistics.NormalDist().inv_cdf
    positive = [ppf(offset + (0.5 - offset) * i / 8) for i in range(8)]  # 8 values, largest first
    negative = [-ppf(offset + (0.5 - offset) * i / 7) for i in range(7)]
    values = np.sort(np.array(positive + [0.0] + negative))
    return (values / values.max()).astype(np.float32)


def dynamic_code() -> np.ndarray:
    """bitsandbytes' signed 8-bit "dynamic" code (Dettmers, 2016): 256 sorted values in [-1, 1].

    After the sign, a run of zero bits sets a power of ten 10^-6 .. 10^0 and the remaining
    bits split [0.1, 1] evenly: level i has 2^i values 10^(i-6) * (midpoints of i+1..); plus 0 and 1.
    Built in float64 and rounded once; bitsandbytes builds it in float32 steps, so 22 of the
    256 values differ from it in the last bit (pass its table as `code` to match exactly).
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = np.linspace(0.1, 1.0, 2 ** i + 1)
        means = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        values += list(means) + list(-means)
    return np.sort(np.array(values)).astype(np.float32)


def nearest_code(scaled: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The index of the code value nearest each scaled value; halfway goes to the lower code.

    The code may be in any order (FP4 is in bit-pattern order): sort it (stably, so of two equal
    values the lower index comes first), cut at the midpoints, map back.
    """
    order = np.argsort(code, kind="stable")
    ordered = code[order]
    midpoints = (ordered[:-1] + ordered[1:]) / np.float32(2)  # float32
    return order[np.searchsorted(midpoints, scaled, side="left")].astype(np.uint8)


# --- blockwise 8-bit codes (used for the double-quantised scales) -----------------------

@dataclass(frozen=True)
class BlockwiseQuantized:
    """8-bit codes of a 1-D float32 array in blocks, each with a float32 absmax."""

    codes: np.ndarray  # uint8 [n]
    absmax: np.ndarray  # float32 [n_blocks]
    code: np.ndarray  # float32 [256]
    block_size: int

    def dequantize(self) -> np.ndarray:
        values = self.code[self.codes]  # [n]
        scales = np.repeat(self.absmax, self.block_size)[:values.size]
        return values * scales


def scale_blocks(flat: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat values -> (x / absmax of its block, clipped to [-1, 1]; absmax per block [n_blocks]).

    Full blocks multiply by 1 / max(absmax, 1e-38); a short last block divides by its clamped
    absmax, as bitsandbytes' reference implementation does (so that our codes equal its codes).
    """
    n = flat.size
    full = n - n % block_size
    blocks = flat[:full].reshape(-1, block_size)  # [n_full, block_size]
    absmax = np.abs(blocks).max(axis=1)  # [n_full]
    scaled = [(blocks * (np.float32(1) / np.maximum(absmax, CLAMP))[:, None]).reshape(-1)]
    if full < n:
        tail = np.maximum(np.abs(flat[full:]).max(), CLAMP)
        absmax = np.append(absmax, tail)
        scaled.append(flat[full:] / tail)
    return np.clip(np.concatenate(scaled), -1, 1), absmax.astype(np.float32)


def quantize_blockwise(x, *, code=None, block_size: int = 256) -> BlockwiseQuantized:
    """Flat float32 values -> the nearest `code` value (dynamic_code() by default) of x / absmax per block."""
    code = dynamic_code() if code is None else np.asarray(code, dtype=np.float32)
    block_size = positive_int(block_size, "block_size")
    x = finite_array(x, "x").reshape(-1)
    if x.size == 0:
        raise ValueError("x: expected at least one value, got an empty array")
    scaled, absmax = scale_blocks(x, block_size)
    return BlockwiseQuantized(nearest_code(scaled, code), absmax, code, block_size)


# --- NF4 / FP4 ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FourBitQuantized:
    """A tensor in 4-bit codes: packed bytes, block absmax (or its double quantisation), the code table."""

    packed: np.ndarray  # uint8 [ceil(n / 2)]: first value in the high nibble
    absmax: np.ndarray  # float32 [n_blocks]; empty when double_quant is set
    shape: tuple
    kind: str  # "nf4" or "fp4"
    block_size: int
    double_quant: BlockwiseQuantized | None = None
    offset: float = 0.0  # the mean subtracted from the scales before their 8-bit quantisation

    @property
    def codes(self) -> np.ndarray:
        """The unpacked 4-bit codes [n] (uint8, 0..15)."""
        n = int(np.prod(self.shape))
        return np.stack([self.packed >> 4, self.packed & 0x0F], axis=1).reshape(-1)[:n]

    def scales(self) -> np.ndarray:
        """The absmax of every block as dequantisation uses it (decoded when double-quantised)."""
        if self.double_quant is None:
            return self.absmax
        return self.double_quant.dequantize() + np.float32(self.offset)

    def dequantize(self) -> np.ndarray:
        values = CODES[self.kind][self.codes]  # [n]
        scales = np.repeat(self.scales(), self.block_size)[:values.size]
        return (values * scales).reshape(self.shape)

    @property
    def bits_per_weight(self) -> float:
        n = int(np.prod(self.shape))
        if self.double_quant is None:
            scale_bits = 32 * self.absmax.size
        else:  # 8-bit codes, a float32 absmax per 256 of them, and the float32 offset
            scale_bits = 8 * self.double_quant.codes.size + 32 * self.double_quant.absmax.size + 32
        return (4 * n + scale_bits) / n


def quantize_4bit(x, kind: str = "nf4", *, block_size: int = 64, double_quant: bool = False,
                  scale_code=None) -> FourBitQuantized:
    """Quantise x (any shape, flattened) to 4-bit codes of `kind` ("nf4" or "fp4") in blocks.

    double_quant: store the block absmax as 8-bit codes (blocks of 256, `scale_code` or
    `dynamic_code()`), after subtracting their mean, as QLoRA does.
    """
    if kind not in CODES:
        raise ValueError(f"kind: expected one of {sorted(CODES)}, got {kind!r}")
    block_size = positive_int(block_size, "block_size")
    x = finite_array(x, "x")
    if x.size == 0:
        raise ValueError(f"x: expected at least one value, got shape {x.shape}")
    scaled, absmax = scale_blocks(x.reshape(-1), block_size)
    q = nearest_code(scaled, CODES[kind])  # [n]
    if q.size % 2:  # pad with the code of zero
        q = np.append(q, nearest_code(np.zeros(1, np.float32), CODES[kind]))
    packed = (q[0::2] << 4) | q[1::2]  # first value high, second low
    if not double_quant:
        return FourBitQuantized(packed, absmax, x.shape, kind, block_size)
    offset = np.float32(absmax.mean(dtype=np.float64))
    scales = quantize_blockwise(absmax - offset, code=scale_code, block_size=256)
    return FourBitQuantized(packed, np.zeros(0, np.float32), x.shape, kind, block_size, scales, float(offset))


def quantize_nf4(x, *, block_size: int = 64, double_quant: bool = False, scale_code=None) -> FourBitQuantized:
    """NF4 codes of x in blocks of `block_size` (see `quantize_4bit`)."""
    return quantize_4bit(x, "nf4", block_size=block_size, double_quant=double_quant, scale_code=scale_code)


def quantize_fp4(x, *, block_size: int = 64, double_quant: bool = False, scale_code=None) -> FourBitQuantized:
    """FP4 codes of x in blocks of `block_size` (see `quantize_4bit`)."""
    return quantize_4bit(x, "fp4", block_size=block_size, double_quant=double_quant, scale_code=scale_code)
