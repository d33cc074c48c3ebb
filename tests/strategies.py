"""Hypothesis strategies shared by every test file.

Shapes are deliberately small and ragged: sequence lengths that are not
multiples of any tile size, every GQA group ratio, T != S.
Chapters add their own strategies below, each under a heading.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

FLOAT_DTYPES = (np.float32, np.float64)


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


def seeds():
    return st.integers(0, 2**32 - 1)


def dtypes():
    return st.sampled_from(FLOAT_DTYPES)


def random_qkv(shape: AttentionShape, seed: int, dtype=np.float64, scale: float = 1.0):
    """q [B, Hq, T, D], k and v [B, Hkv, S, D] with standard normal entries times scale."""
    rng = np.random.default_rng(seed)
    b, hq, hkv, t, s, d = (shape.batch, shape.n_heads, shape.n_kv_heads,
                           shape.q_len, shape.kv_len, shape.head_dim)
    q = (rng.standard_normal((b, hq, t, d)) * scale).astype(dtype)
    k = (rng.standard_normal((b, hkv, s, d)) * scale).astype(dtype)
    v = rng.standard_normal((b, hkv, s, d)).astype(dtype)
    return q, k, v


@st.composite
def model_configs(draw):
    """Small TransformerConfigs over every choice: MHA/GQA/MQA, norms, FFNs, positions, blocks."""
    from tinytransformer.model import TransformerConfig

    n_kv_heads = draw(st.integers(1, 2))
    n_heads = n_kv_heads * draw(st.integers(1, 3))
    return TransformerConfig(
        vocab_size=draw(st.integers(2, 40)),
        d_model=n_heads * draw(st.sampled_from([2, 4])),
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=draw(st.integers(1, 16)),
        max_seq_len=24,
        norm=draw(st.sampled_from(["rms", "layer"])),
        ffn=draw(st.sampled_from(["swiglu", "gelu"])),
        position=draw(st.sampled_from(["rope", "alibi", "learned", "sinusoidal"])),
        block=draw(st.sampled_from(["pre", "post"])),
        rope_interleaved=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()),
    )


# --- text (tokenizer chapter) -------------------------------------------------------

# --- n-gram chapter -----------------------------------------------------------------

# --- pretrained model / GGUF --------------------------------------------------------

# --- CUDA kernels / paged cache -----------------------------------------------------
