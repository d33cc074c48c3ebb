"""Seeds and float dtypes: the draws every chapter's tests share."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


FLOAT_DTYPES = (np.float32, np.float64)


def seeds():
    return st.integers(0, 2**32 - 1)


def dtypes():
    return st.sampled_from(FLOAT_DTYPES)
