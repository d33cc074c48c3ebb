"""Tensors to quantise, drawn from the cases quantisers get wrong; calibration layers."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from strategies.basics import seeds


# How the values of a tensor to quantise are drawn: the cases quantisers get wrong.
QUANT_VALUE_KINDS = ("normal", "heavy-tailed", "outliers", "constant", "zero", "tiny", "subnormal", "huge",
                     "positive", "sparse", "ties")


def quant_values(kind: str, shape, seed: int) -> np.ndarray:
    """A float32 array of `shape` whose values are of one kind of QUANT_VALUE_KINDS."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(shape)
    x = {
        "normal": normal,
        "heavy-tailed": rng.standard_t(2, shape),
        "outliers": normal * np.where(rng.random(shape) < 0.02, 100.0, 1.0),
        "constant": np.full(shape, rng.standard_normal()),
        "zero": np.zeros(shape),
        "tiny": normal * 1e-8,
        "subnormal": normal * 1e-40,
        "huge": normal * 1e4,
        "positive": np.abs(normal) + 0.5,
        "sparse": normal * (rng.random(shape) < 0.05),
        "ties": np.round(normal * 4) / 4,  # many exact halves of a step
    }[kind]
    return np.asarray(x, dtype=np.float32)


@st.composite
def quant_tensors(draw, *, multiple_of: int = 32, max_rows: int = 4, max_blocks: int = 4, kinds=QUANT_VALUE_KINDS):
    """A float32 matrix [rows, k * multiple_of] of one value kind: what a block quantiser takes."""
    shape = (draw(st.integers(1, max_rows)), multiple_of * draw(st.integers(1, max_blocks)))
    return quant_values(draw(st.sampled_from(kinds)), shape, draw(seeds()))


@st.composite
def calibration_layers(draw, *, group_sizes=(32, 64)):
    """(weight [C_out, C_in], activations x [n, C_in] with correlated channels of very different sizes,
    group size): a linear layer and its calibration set, as GPTQ and AWQ see them."""
    group = draw(st.sampled_from(group_sizes))
    n_in = group * draw(st.integers(1, 3))
    n_out = draw(st.integers(8, 24))
    rng = np.random.default_rng(draw(seeds()))
    weight = rng.standard_normal((n_out, n_in)).astype(np.float32)
    mixing = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)  # correlated inputs
    channel_scale = np.exp(rng.standard_normal(n_in))  # some channels much larger than others
    x = (rng.standard_normal((2 * n_in, n_in)) @ mixing) * channel_scale
    return weight, x.astype(np.float32), group
