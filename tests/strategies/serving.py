"""Small models and ragged prompts for the serving chapter."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from strategies.basics import seeds
from strategies.models import model_configs


@st.composite
def serving_models(draw):
    """A small random TinyTransformer of any architecture, in float64 so that batching cannot
    flip a greedy choice through rounding (the laws compare token ids)."""
    from tinytransformer.model import TinyTransformer, init_params

    config = draw(model_configs())
    return TinyTransformer(config, init_params(config, seed=draw(seeds()), dtype=np.float64))


def serving_prompts(vocab_size: int, *, max_prompts: int = 5, max_len: int = 8):
    """A few prompts (lists of token ids) of ragged lengths."""
    prompt = st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=max_len)
    return st.lists(prompt, min_size=1, max_size=max_prompts)
