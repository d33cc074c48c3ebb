"""Positional information: sinusoidal, learned, rotary (RoPE) and ALiBi.

Attention by itself is blind to order: permute the keys and values together
and the output does not change. Four ways to tell the model where a token is:

1. Sinusoidal (Vaswani et al., 2017), added to the embeddings:
       PE[p, 2i] = sin(p / base^(2i/D)),   PE[p, 2i+1] = cos(p / base^(2i/D))
2. Learned: a trainable table [max_len, D] added to the embeddings (GPT-2).
3. RoPE (Su et al., 2021, RoFormer): rotate each pair of q/k coordinates by an
   angle p * theta_i with theta_i = base^(-2i/D). Then
       <R(p) q, R(s) k> = <q, R(s - p) k>
   depends only on the offset s - p. Two pairings are in use:
     interleaved pairs (x[2i], x[2i+1])      RoFormer paper, GPT-J, llama.cpp (whose
                                             HF -> GGUF converter permutes Wq/Wk rows to fit)
     rotate-half pairs (x[i], x[i + D/2])    GPT-NeoX, the Hugging Face Llama code
   They are the same map up to a fixed permutation of the head dimension
   (`rope_half_permutation`); a checkpoint trained with one needs its q/k
   weights permuted to run with the other.
4. ALiBi (Press et al., 2022): no embedding at all; add slope_h * (j - i) to the
   attention score of query i and key j, with a fixed geometric slope per head.

Shapes: x [..., T, D] for RoPE (usually [B, H, T, D]); positions int [T].
Positions are absolute, so cached decode passes positions = cache_length + arange(T).

    >>> import numpy as np
    >>> x = np.ones((1, 2))                     # one position, D = 2
    >>> np.round(apply_rope(x, np.array([0])), 6).tolist()   # position 0: no rotation
    [[1.0, 1.0]]

Does not handle: RoPE scaling for long contexts (NTK, YaRN, Llama-3 frequency
bands), partial rotary dimensions (rotating only some of D), or xPos.
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import float_array, random_generator
from tinytransformer._validate import positive_float as _positive_float
from tinytransformer._validate import positive_int as _positive_int

__all__ = [
    "sinusoidal_encoding",
    "learned_position_table",
    "embed_positions",
    "rope_frequencies",
    "apply_rope",
    "rope_half_permutation",
    "alibi_slopes",
    "alibi_bias",
]


def sinusoidal_encoding(n_positions: int, dim: int, base: float = 10000.0, dtype=np.float64) -> np.ndarray:
    """[n_positions, dim]: PE[p, 2i] = sin(p * w_i), PE[p, 2i+1] = cos(p * w_i), w_i = base^(-2i/dim)."""
    n_positions = _positive_int(n_positions, "n_positions")
    dim = _positive_int(dim, "dim")
    base = _positive_float(base, "base")
    frequencies = base ** (-np.arange(0, dim, 2) / dim)  # w_i, [ceil(dim/2)]
    angles = np.arange(n_positions)[:, None] * frequencies[None, :]  # [P, ceil(dim/2)]
    table = np.empty((n_positions, dim))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table.astype(dtype)


def learned_position_table(max_len: int, dim: int, *, seed: int = 0, std: float = 0.02, dtype=np.float32) -> np.ndarray:
    """A learned absolute position table [max_len, dim], initialised N(0, std^2) as in GPT-2."""
    max_len, dim = _positive_int(max_len, "max_len"), _positive_int(dim, "dim")
    return (random_generator(seed).standard_normal((max_len, dim)) * std).astype(dtype)


def embed_positions(table, positions) -> np.ndarray:
    """Rows of a learned table for `positions` [T] -> [T, dim] (or [B, T] -> [B, T, dim]); positions < max_len."""
    table = np.asarray(table)
    positions = _positions(positions)
    if table.ndim != 2:
        raise ValueError(f"table: expected [max_len, dim], got shape {table.shape}")
    if positions.size and (positions.min() < 0 or positions.max() >= table.shape[0]):
        raise ValueError(
            f"positions: expected values in [0, max_len={table.shape[0]}), got range "
            f"[{positions.min()}, {positions.max()}]; a learned table cannot extrapolate"
        )
    return table[positions]  # [T, dim] or [B, T, dim]


def rope_frequencies(dim: int, base: float = 10000.0) -> np.ndarray:
    """theta_i = base^(-2i/dim) for i in [0, dim/2): [dim // 2], float64."""
    dim = _positive_int(dim, "dim")
    if dim % 2:
        raise ValueError(f"dim: RoPE rotates pairs, so the head dim must be even, got {dim}")
    return _positive_float(base, "base") ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def apply_rope(x, positions, *, base: float = 10000.0, interleaved: bool = False) -> np.ndarray:
    """Rotate pairs of coordinates of x [..., T, D] by angles positions[t] * theta_i.

    For a pair (a, b) and angle phi:  (a, b) -> (a cos phi - b sin phi, a sin phi + b cos phi).
    interleaved=True pairs (x[2i], x[2i+1]); False pairs (x[i], x[i + D/2]).
    positions: [T], shared by every sequence, or [B, T], one row per sequence of
    x [B, H, T, D] (a ragged batch, where each sequence is at its own position).
    Angles are computed in float64 and the result has x's dtype.
    """
    x = float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected shape [..., T, D], got shape {x.shape}")
    T, D = x.shape[-2:]
    positions = _positions(positions)
    if positions.shape != (T,) and not (x.ndim == 4 and positions.shape == (x.shape[0], T)):
        raise ValueError(f"positions: expected shape [T] = [{T}] (or [B, T] = [{x.shape[0]}, {T}] for x "
                         f"[B, H, T, D]) to match x, got shape {positions.shape}")
    if positions.ndim == 2:
        positions = positions[:, None, :]  # [B, T] -> [B, 1, T]: the same angles for every head
    theta = rope_frequencies(D, base)  # [D/2]
    angles = positions[..., None].astype(np.float64) * theta  # [T, D/2] or [B, 1, T, D/2]
    cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]  # [..., T, D/2] each
    else:
        a, b = x[..., : D // 2], x[..., D // 2:]
    ra = a * cos - b * sin  # a' = a cos(phi) - b sin(phi)
    rb = a * sin + b * cos  # b' = a sin(phi) + b cos(phi)
    out = np.empty_like(x)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : D // 2], out[..., D // 2:] = ra, rb
    return out


def rope_half_permutation(dim: int) -> np.ndarray:
    """Indices p with x_half = x_interleaved[..., p]: [0, 2, 4, ..., 1, 3, 5, ...].

    Law: apply_rope(x[..., p], interleaved=False) == apply_rope(x, interleaved=True)[..., p].
    Permuting the rows of Wq and Wk this way converts a checkpoint between the pairings.
    """
    dim = _positive_int(dim, "dim")
    if dim % 2:
        raise ValueError(f"dim: RoPE rotates pairs, so the head dim must be even, got {dim}")
    return np.concatenate([np.arange(0, dim, 2), np.arange(1, dim, 2)])


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes [n_heads], float64.

    For n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8).
    Otherwise (the paper's recipe): the slopes for the largest power of two
    m < n, then every other slope of the sequence for 2m, until there are n.
    """
    n_heads = _positive_int(n_heads, "n_heads")

    def power_of_two_slopes(n):
        start = 2.0 ** (-8.0 / n)
        return start ** np.arange(1, n + 1)  # ratio = start

    m = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = power_of_two_slopes(m)
    if m < n_heads:
        extra = power_of_two_slopes(2 * m)[0::2][: n_heads - m]
        slopes = np.concatenate([slopes, extra])
    return slopes


def alibi_bias(n_heads: int, T: int, S: int, dtype=np.float64) -> np.ndarray:
    """[n_heads, T, S] additive bias slope_h * (j - p_i), end-aligned: p_i = S - T + i.

    Past keys get a negative bias growing linearly with distance; future keys
    get a positive one, which a causal mask removes.
    """
    T, S = _positive_int(T, "T"), _positive_int(S, "S")
    distance = np.arange(S)[None, :] - np.arange(S - T, S)[:, None]  # j - p_i, [T, S]
    return (alibi_slopes(n_heads)[:, None, None] * distance[None]).astype(dtype)  # [H, T, S]


def _positions(positions) -> np.ndarray:
    positions = np.asarray(positions)
    if positions.ndim not in (1, 2) or positions.dtype.kind not in "iu":
        raise ValueError(f"positions: expected an integer array [T] or [B, T], got dtype {positions.dtype} "
                         f"shape {positions.shape}")
    return positions
