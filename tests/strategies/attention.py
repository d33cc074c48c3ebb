"""Attention shapes (ragged: T != S, every GQA group ratio, lengths off every tile size) and q, k, v."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    n_heads: int
    n_kv_heads: int
    q_len: int  # T
    kv_len: int  # S
    head_dim: int  # D

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


@st.composite
def attention_shapes(draw, *, max_len: int = 33, head_dims=(1, 2, 3, 4, 8, 16), q_le_kv=False):
    """[B, Hq, T, D] / [B, Hkv, S, D] with Hq % Hkv == 0, any T and S (T <= S if q_le_kv)."""
    n_kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 4))
    kv_len = draw(st.integers(1, max_len))
    q_len = draw(st.integers(1, kv_len if q_le_kv else max_len))
    return AttentionShape(
        batch=draw(st.integers(1, 2)),
        n_heads=n_kv_heads * group,
        n_kv_heads=n_kv_heads,
        q_len=q_len,
        kv_len=kv_len,
        head_dim=draw(st.sampled_from(head_dims)),
    )


def finite_logits(max_dims: int = 3, max_side: int = 6, magnitude: float = 1e4):
    """Finite float16, float32 or float64 arrays of rank 1 to max_dims, entries in [-magnitude, magnitude]."""
    from hypothesis.extra import numpy as hnp

    return st.sampled_from([np.float16, np.float32, np.float64]).flatmap(lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=1, max_dims=max_dims, max_side=max_side),
        elements=st.floats(-magnitude, magnitude, width=np.finfo(dtype).bits)))


def random_qkv(shape: AttentionShape, seed: int, dtype=np.float64, scale: float = 1.0):
    """q [B, Hq, T, D], k and v [B, Hkv, S, D] with standard normal entries times scale."""
    rng = np.random.default_rng(seed)
    b, hq, hkv, t, s, d = (shape.batch, shape.n_heads, shape.n_kv_heads,
                           shape.q_len, shape.kv_len, shape.head_dim)
    q = (rng.standard_normal((b, hq, t, d)) * scale).astype(dtype)
    k = (rng.standard_normal((b, hkv, s, d)) * scale).astype(dtype)
    v = rng.standard_normal((b, hkv, s, d)).astype(dtype)
    return q, k, v
