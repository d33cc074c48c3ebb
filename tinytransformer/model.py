"""A small decoder-only transformer, assembled from the chapter modules.

    h_0 = Embed(ids) (+ position table, for learned or sinusoidal positions)
    h_l = Block_l(h_{l-1})       for l = 1..L   (pre-LN or post-LN, see `layers`)
    logits = Norm(h_L) W_out     (W_out = Embed^T when embeddings are tied)

Every block is causal self-attention (MHA, GQA or MQA, by `n_kv_heads`) and an
FFN (SwiGLU or GELU). Positions come from RoPE (rotating q and k), ALiBi (a bias
on the scores), or a learned/sinusoidal table added to the embeddings.

`forward(ids, cache=None)` runs the whole sequence; given a `KVCache`, it runs
only the new tokens at absolute positions cache.length, cache.length + 1, ...
and attends over everything cached: the same logits, computed once per token.
This is the law the tests check: cached decode == full recompute, every step.

Parameters are a nested dict of plain arrays (weights [in, out], used as x @ W):

    {"embed": [V, C], "pos": [max_seq_len, C] (learned/sinusoidal only),
     "layers": [{"norm1", "wq", "wk", "wv", "wo", "norm2", "w_gate", "w_up", "w_down" | "w1", "b1", "w2", "b2"}],
     "norm_final", "lm_head": [C, V] (untied only)}

    >>> config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2)
    >>> model = TinyTransformer(config, seed=0)
    >>> model.forward(np.array([[1, 2, 3]])).shape
    (1, 3, 11)

Does not handle: training (no gradients here), dropout, batches of different
lengths (one length per batch), mixture of experts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import positive_float, positive_int
from tinytransformer.attention import merge_heads, scaled_dot_product_attention, split_heads
from tinytransformer.kv_cache import KVCache
from tinytransformer.layers import ffn, gelu, layer_norm, post_ln_block, pre_ln_block, rms_norm, swiglu
from tinytransformer.positional import alibi_bias, apply_rope, sinusoidal_encoding
from tinytransformer.sampling import generate as _generate

__all__ = ["TransformerConfig", "init_params", "TinyTransformer"]

_CHOICES = {
    "norm": ("rms", "layer"),
    "ffn": ("swiglu", "gelu"),
    "position": ("rope", "alibi", "learned", "sinusoidal"),
    "block": ("pre", "post"),
}


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    d_model: int  # C
    n_layers: int  # L
    n_heads: int  # Hq
    n_kv_heads: int | None = None  # Hkv; None means n_heads (MHA), 1 is MQA
    d_ff: int | None = None  # FFN width F; None means 4 * d_model
    max_seq_len: int = 256
    norm: str = "rms"
    ffn: str = "swiglu"
    position: str = "rope"
    block: str = "pre"
    rope_base: float = 10000.0
    rope_interleaved: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            positive_int(getattr(self, name), name)
        kv = self.kv_heads
        if positive_int(kv, "n_kv_heads") > self.n_heads or self.n_heads % kv:
            raise ValueError(f"n_kv_heads: expected a divisor of n_heads={self.n_heads}, got {kv}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: expected a multiple of n_heads={self.n_heads}, got {self.d_model}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"d_model: RoPE needs an even head dim, got d_model/n_heads = {self.head_dim}")
        if self.d_ff is not None:
            positive_int(self.d_ff, "d_ff")
        positive_float(self.rope_base, "rope_base")
        positive_float(self.norm_eps, "norm_eps")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff


def init_params(config: TransformerConfig, seed: int = 0, dtype=np.float32) -> dict:
    """Random parameters N(0, 0.02^2) (output projections scaled by 1/sqrt(2L), as GPT-2), norms at 1."""
    rng = np.random.default_rng(seed)
    C, F, D, L = config.d_model, config.ffn_dim, config.head_dim, config.n_layers

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(dtype)

    def norm():
        return ({"weight": np.ones(C, dtype)} if config.norm == "rms"
                else {"weight": np.ones(C, dtype), "bias": np.zeros(C, dtype)})

    out_std = 0.02 / np.sqrt(2 * L)
    params = {"embed": normal(config.vocab_size, C), "layers": [], "norm_final": norm()}
    if config.position == "learned":
        params["pos"] = normal(config.max_seq_len, C)
    elif config.position == "sinusoidal":
        params["pos"] = sinusoidal_encoding(config.max_seq_len, C, dtype=dtype)
    for _ in range(L):
        layer = {"norm1": norm(), "wq": normal(C, config.n_heads * D), "wk": normal(C, config.kv_heads * D),
                 "wv": normal(C, config.kv_heads * D), "wo": normal(config.n_heads * D, C, std=out_std),
                 "norm2": norm()}
        if config.ffn == "swiglu":
            layer.update(w_gate=normal(C, F), w_up=normal(C, F), w_down=normal(F, C, std=out_std))
        else:
            layer.update(w1=normal(C, F), b1=np.zeros(F, dtype), w2=normal(F, C, std=out_std), b2=np.zeros(C, dtype))
        params["layers"].append(layer)
    if not config.tie_embeddings:
        params["lm_head"] = normal(C, config.vocab_size)
    return params


def _gelu_tanh(x):
    return gelu(x, approximate="tanh")  # GPT-2's approximation


class TinyTransformer:
    """A decoder-only transformer over plain arrays: `forward`, `new_cache`, `generate`."""

    def __init__(self, config: TransformerConfig, params: dict | None = None, *, seed: int = 0):
        self.config = config
        self.params = init_params(config, seed) if params is None else params

    def new_cache(self, batch: int = 1, max_seq_len: int | None = None) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, c.kv_heads, c.head_dim, max_seq_len or c.max_seq_len,
                       dtype=self.params["embed"].dtype)

    def forward(self, ids, cache: KVCache | None = None) -> np.ndarray:
        """Logits [B, T, V] for token ids [B, T]; with a cache, ids are the new tokens only."""
        c, p = self.config, self.params
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
            raise ValueError(f"ids: expected a non-empty integer array [B, T], got dtype {ids.dtype} shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= c.vocab_size):
            raise ValueError(f"ids: expected values in [0, vocab_size={c.vocab_size}), got [{ids.min()}, {ids.max()}]")
        B, T = ids.shape
        start = 0 if cache is None else cache.length
        if cache is not None and cache.batch != B:
            raise ValueError(f"cache: holds batch {cache.batch} but ids have batch {B}")
        if start + T > c.max_seq_len:
            raise ValueError(f"ids: positions {start}..{start + T - 1} exceed max_seq_len={c.max_seq_len}")
        positions = np.arange(start, start + T)  # absolute positions of the new tokens

        x = p["embed"][ids]  # [B, T] -> [B, T, C]
        if "pos" in p:
            x = x + p["pos"][positions]  # learned or sinusoidal table, [T, C] broadcast over B
        block = pre_ln_block if c.block == "pre" else post_ln_block
        for index, layer in enumerate(p["layers"]):
            x = block(
                x,
                lambda h: self._attention(h, layer, index, positions, cache),
                lambda h: self._feed_forward(h, layer),
                lambda h: self._norm(h, layer["norm1"]),
                lambda h: self._norm(h, layer["norm2"]),
            )
        x = self._norm(x, p["norm_final"])
        head = p["embed"].T if c.tie_embeddings else p["lm_head"]  # [C, V]
        return x @ head  # [B, T, C] @ [C, V] -> [B, T, V]

    def generate(self, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k=None, top_p=None,
                 seed=None, eos_id=None, use_cache: bool = True) -> list[int]:
        """New token ids after prompt_ids (a 1-D sequence); temperature 0 is greedy."""
        prompt_ids = [int(i) for i in prompt_ids]
        if use_cache:
            cache = self.new_cache(1)

            def step(new_ids):
                return self.forward(np.array([new_ids]), cache)[0, -1]  # [V]
        else:
            history: list[int] = []

            def step(new_ids):
                history.extend(new_ids)
                return self.forward(np.array([history]))[0, -1]  # recompute the whole prefix

        return list(_generate(step, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed, eos_id=eos_id))

    def _norm(self, x, params):
        if self.config.norm == "rms":
            return rms_norm(x, params["weight"], self.config.norm_eps)
        return layer_norm(x, params["weight"], params["bias"], self.config.norm_eps)

    def _feed_forward(self, x, layer):
        if self.config.ffn == "swiglu":
            return swiglu(x, layer["w_gate"], layer["w_up"], layer["w_down"])
        return ffn(x, layer["w1"], layer["b1"], layer["w2"], layer["b2"], activation=_gelu_tanh)

    def _attention(self, x, layer, index, positions, cache):
        c = self.config
        q = split_heads(x @ layer["wq"], c.n_heads)  # [B, T, Hq*D] -> [B, Hq, T, D]
        k = split_heads(x @ layer["wk"], c.kv_heads)  # [B, Hkv, T, D]
        v = split_heads(x @ layer["wv"], c.kv_heads)  # [B, Hkv, T, D]
        if c.position == "rope":
            q = apply_rope(q, positions, base=c.rope_base, interleaved=c.rope_interleaved)
            k = apply_rope(k, positions, base=c.rope_base, interleaved=c.rope_interleaved)
        if cache is not None:
            k, v = cache.append(index, k, v)  # [B, Hkv, S, D], S = cached + T
        bias = alibi_bias(c.n_heads, q.shape[2], k.shape[2], dtype=q.dtype) if c.position == "alibi" else None
        out = scaled_dot_product_attention(q, k, v, causal=True, bias=bias)  # [B, Hq, T, D]
        return merge_heads(out) @ layer["wo"]  # [B, T, Hq*D] @ [Hq*D, C] -> [B, T, C]
