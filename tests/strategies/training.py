"""Activation shapes and gradient-check coordinates for the training chapter."""
from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def activation_shapes(draw, *, max_len: int = 9, max_width: int = 12):
    """[B, T, C] for a layer's activations: odd and even lengths, widths from 1."""
    return (draw(st.integers(1, 3)), draw(st.integers(1, max_len)), draw(st.integers(1, max_width)))


def coordinates(rng, shape, n: int = 3):
    """n random multi-indices into an array of `shape` (for finite-difference checks)."""
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]
