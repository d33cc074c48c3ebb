"""Small TransformerConfigs over every choice the one decoder has."""
from __future__ import annotations

from hypothesis import strategies as st


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
