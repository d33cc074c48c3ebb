"""A decoder-only transformer: the one forward pass of tinytransformer.

    h_0 = Embed(ids) (+ position table, for learned or sinusoidal positions)
    h_l = Block_l(h_{l-1})       for l = 1..L   (pre-LN or post-LN, see `layers`)
    logits = Norm(h_L) W_out^T   (W_out = Embed when the embeddings are tied)

Every block is causal self-attention (MHA, GQA or MQA, by `n_kv_heads`) and an
FFN (SwiGLU or GELU); with `causal=False` the stack is an encoder, as BERT's
(every position sees every other; it is trained, not used to generate). Positions
come from RoPE (rotating q and k), ALiBi (a bias on the scores), or a
learned/sinusoidal table added to the embeddings. The small random models of
chapter 5 and the pretrained SmolLM2-135M run through this same code: loading a
checkpoint (`llama.load_model`) is reading a config and tensors.

Parameters are one flat dict keyed by the checkpoint's (GGUF's) tensor names,
weights in the checkpoint's shape [out, in], applied as x @ W.T (`layers.linear`):

    token_embd.weight [V, C]            position_embd.weight [max_seq_len, C] (learned only)
    blk.{i}.attn_norm.weight (.bias)    blk.{i}.attn_q.weight [Hq*D, C]
    blk.{i}.attn_k.weight [Hkv*D, C]    blk.{i}.attn_v.weight [Hkv*D, C]
    blk.{i}.attn_output.weight [C, Hq*D]
    blk.{i}.ffn_norm.weight (.bias)     SwiGLU: blk.{i}.ffn_gate.weight, ffn_up.weight [F, C], ffn_down.weight [C, F]
                                        GELU:   blk.{i}.ffn_up.weight/.bias [F, C], ffn_down.weight/.bias [C, F]
    output_norm.weight (.bias)          output.weight [V, C] (untied only)

Three parts are swappable, each with one signature, and give the same logits:

    attention  a name of `attention_implementations` ("sdpa", "flash", "cuda", "sdpa-inlined",
               "sdpa-padded") or a function f(q, k, v, *, causal, scale, alibi_slopes) -> out
    cache      None (recompute everything), a `KVCache`, or a view of a `PagedKVCache`:
               anything with the two calls of `kv_cache.ModelCache` (new_positions, store)
    weights    float arrays, or quantised weights with .linear(x) (see `layers.linear`)

`forward(ids, cache)` runs only the new tokens when given a cache, at the
positions the cache gives them, and attends over everything cached: the law the
tests check is cached decode == full recompute, at every step. Generating text
(the decode loop) is `generation`; the forward is all this module holds.

fast_linear=True is the opt-in fast path for a CPU BLAS (the loader, the CLI and
the benchmarks take it): every matrix kept column-major (`layers.column_major`)
and every product of 2 or more rows padded to a multiple of 4 rows
(`layers.linear_in_row_blocks`). The same logits; only the speed differs.

    >>> config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2)
    >>> model = TinyTransformer(config, seed=0)
    >>> model.forward(np.array([[1, 2, 3]])).shape
    (1, 3, 11)

Does not handle: training (see the training chapter for gradients), dropout,
attention or projection biases, mixture of experts, RoPE scaling.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import is_integer, positive_float, positive_int, random_generator
from tinytransformer.attention import merge_heads, split_heads
from tinytransformer.attention_implementations import ModelAttention
from tinytransformer.describe import describe
from tinytransformer.kv_cache import KVCache, ModelCache
from tinytransformer.layers import (column_major, embedding, ffn, gelu_tanh, layer_norm, linear, linear_in_row_blocks,
                                    post_ln_block, pre_ln_block, rms_norm, swiglu)
from tinytransformer.paged_cache import PagedKVCache
from tinytransformer.positional import alibi_slopes, apply_rope, sinusoidal_encoding

__all__ = ["TransformerConfig", "parameter_shapes", "init_params", "check_ids", "TinyTransformer"]

_CHOICES = {
    "norm": ("rms", "layer"),
    "ffn": ("swiglu", "gelu"),
    "position": ("rope", "alibi", "learned", "sinusoidal"),
    "block": ("pre", "post"),
}


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int  # V
    d_model: int  # C
    n_layers: int  # L
    n_heads: int  # Hq
    n_kv_heads: int | None = None  # Hkv; None means n_heads (MHA), 1 is MQA
    d_ff: int | None = None  # FFN width F; None means 4 * d_model
    max_seq_len: int = 256  # the context length
    norm: str = "rms"
    ffn: str = "swiglu"
    position: str = "rope"
    block: str = "pre"
    rope_base: float = 10000.0
    rope_interleaved: bool = False  # RoPE pairs (2i, 2i+1) if True, (i, i + D/2) if False
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # the output head is the embedding matrix
    causal: bool = True  # False: an encoder (BERT's masked LM), every position sees every other
    bos_id: int | None = None  # token ids that start and end a text, when the vocabulary has them
    eos_id: int | None = None
    name: str = ""

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
        if not isinstance(self.causal, (bool, np.bool_)):
            raise ValueError(f"causal: expected a bool, got {self.causal!r}")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and (not is_integer(value) or not 0 <= value < self.vocab_size):
                raise ValueError(f"{name}: expected None or a token id in [0, {self.vocab_size}), got {value!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff


def parameter_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape [out, in] of every parameter the model needs."""
    c = config
    C, F, D, V = c.d_model, c.ffn_dim, c.head_dim, c.vocab_size
    norm = (lambda name: {f"{name}.weight": (C,)}) if c.norm == "rms" else \
        (lambda name: {f"{name}.weight": (C,), f"{name}.bias": (C,)})
    shapes = {"token_embd.weight": (V, C)}
    if c.position == "learned":
        shapes["position_embd.weight"] = (c.max_seq_len, C)
    for i in range(c.n_layers):
        b = f"blk.{i}."
        shapes.update(norm(b + "attn_norm"))
        shapes.update({b + "attn_q.weight": (c.n_heads * D, C), b + "attn_k.weight": (c.kv_heads * D, C),
                       b + "attn_v.weight": (c.kv_heads * D, C), b + "attn_output.weight": (C, c.n_heads * D)})
        shapes.update(norm(b + "ffn_norm"))
        if c.ffn == "swiglu":
            shapes.update({b + "ffn_gate.weight": (F, C), b + "ffn_up.weight": (F, C), b + "ffn_down.weight": (C, F)})
        else:
            shapes.update({b + "ffn_up.weight": (F, C), b + "ffn_up.bias": (F,),
                           b + "ffn_down.weight": (C, F), b + "ffn_down.bias": (C,)})
    shapes.update(norm("output_norm"))
    if not c.tie_embeddings:
        shapes["output.weight"] = (V, C)
    return shapes


def init_params(config: TransformerConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random parameters: weights N(0, 0.02^2), output projections scaled by 1/sqrt(2L) (GPT-2),
    norm weights 1, biases 0."""
    rng = random_generator(seed)
    out_std = 0.02 / np.sqrt(2 * config.n_layers)
    params = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype)
        elif "norm" in name:
            params[name] = np.ones(shape, dtype)
        else:
            std = out_std if name.endswith(("attn_output.weight", "ffn_down.weight")) else 0.02
            params[name] = (rng.standard_normal(shape) * std).astype(dtype)
    return params


def check_ids(ids, vocab_size: int) -> tuple[np.ndarray, bool]:
    """Token ids for a forward: (ids [B, T], whether they came as one sequence [T]).

    ValueError unless ids is a non-empty integer array [B, T] or [T] with values in [0, vocab_size).
    """
    ids = np.asarray(ids)
    if ids.ndim not in (1, 2) or ids.dtype.kind not in "iu" or ids.shape[-1] == 0:
        raise ValueError(f"ids: expected a non-empty integer array [B, T] or [T], got dtype {ids.dtype} "
                         f"shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"ids: expected values in [0, vocab_size={vocab_size}), got [{ids.min()}, {ids.max()}]")
    return (ids[None], True) if ids.ndim == 1 else (ids, False)


# --- the model ------------------------------------------------------------------------


class TinyTransformer:
    """A decoder-only transformer over plain arrays: its forward pass and its caches.

    .config       TransformerConfig
    .params       dict checkpoint name -> array [out, in] (or a quantised weight)
    .attention    a name of attention_implementations.ATTENTION_IMPLEMENTATIONS, or a function (settable)
    .fast_linear  True: the BLAS fast path (column-major matrices, row-padded products; see the module)
    """

    def __init__(self, config: TransformerConfig, params: dict | None = None, *, seed: int = 0,
                 attention="sdpa", fast_linear: bool = False):
        if not isinstance(fast_linear, bool):
            raise ValueError(f"fast_linear: expected a bool, got {fast_linear!r}")
        self.config = config
        params = dict(init_params(config, seed) if params is None else params)  # the caller's dict stays as it is
        self.fast_linear = fast_linear
        self.params = {name: column_major(w) for name, w in params.items()} if fast_linear else params
        self.linear = linear_in_row_blocks if fast_linear else linear  # x W^T (+ b): the same values either way
        self._check_params()
        self.attention = attention
        self._sinusoidal = None

    @property
    def attention(self):
        return self._attention.implementation

    @attention.setter
    def attention(self, implementation):
        slopes = alibi_slopes(self.config.n_heads) if self.config.position == "alibi" else None
        self._attention = ModelAttention(implementation, alibi_slopes=slopes, causal=self.config.causal)

    # --- caches ------------------------------------------------------------------------

    def new_cache(self, batch: int = 1, max_seq_len: int | None = None) -> KVCache:
        """A contiguous KV cache for `batch` sequences of up to max_seq_len positions."""
        c = self.config
        return KVCache(c.n_layers, batch, c.kv_heads, c.head_dim, max_seq_len or c.max_seq_len, dtype=self.dtype)

    def new_paged_cache(self, n_blocks: int, block_size: int = 16) -> PagedKVCache:
        """A paged KV cache of n_blocks blocks of block_size positions, shared by many sequences."""
        c = self.config
        return PagedKVCache(c.n_layers, c.kv_heads, c.head_dim, n_blocks=n_blocks, block_size=block_size,
                            dtype=self.dtype)

    # --- forward -----------------------------------------------------------------------

    def forward(self, ids, cache: ModelCache | None = None) -> np.ndarray:
        """Logits [B, T, V] for token ids [B, T] (or [T, V] for 1-D ids [T]).

        With a cache, ids are the new tokens only: they go at the positions the
        cache gives them (after what it holds), and attend over everything cached.
        """
        return self.logits(self.hidden_states(ids, cache))

    __call__ = forward

    def hidden_states(self, ids, cache: ModelCache | None = None, *, saved: dict | None = None) -> np.ndarray:
        """The final normalised hidden states [B, T, C] (or [T, C] for 1-D ids): forward without the head.

        saved: the training hook. When a dict is given, the forward also stores in it
        what the backward pass needs (`training.gradients`): "positions", the input of
        every block and sublayer, and attention's q, k, v and output (see `block`),
        and "output_norm", the input of the final norm.
        """
        c, p = self.config, self.params
        ids, one_sequence = check_ids(ids, c.vocab_size)
        B, T = ids.shape
        if cache is None:
            if T > c.max_seq_len:
                raise ValueError(f"ids: {T} positions exceed max_seq_len={c.max_seq_len}")
            positions = np.broadcast_to(np.arange(T), (B, T))
        else:
            if not c.causal:
                raise ValueError("cache: an encoder (config.causal=False) has no KV cache: every position also "
                                 "attends to the positions after it")
            if cache.batch != B:
                raise ValueError(f"cache: expected a cache for batch {B} (ids' rows), got one for batch {cache.batch}")
            positions = cache.new_positions(T, limit=c.max_seq_len)  # [B, T] absolute positions of the new tokens

        x = embedding(ids, p["token_embd.weight"])  # [B, T] -> [B, T, C]
        if c.position == "learned":
            x = x + p["position_embd.weight"][positions]  # + [B, T, C]
        elif c.position == "sinusoidal":
            x = x + self._sinusoidal_table()[positions]
        if saved is not None:
            saved["positions"] = positions
        for i in range(c.n_layers):
            x = self.block(x, i, positions, cache, saved=saved)
        if saved is not None:
            saved["output_norm"] = x
        x = self._norm(x, "output_norm")  # [B, T, C]
        return x[0] if one_sequence else x

    def block(self, x, i, positions, cache: ModelCache | None = None, *, saved: dict | None = None) -> np.ndarray:
        """Block i: x [B, T, C] -> [B, T, C], pre- or post-LN (see `layers`).

        saved (the training hook): a dict that receives the block's input "blk.{i}",
        the input of each sublayer ("blk.{i}.attn_norm", ".attn", ".ffn_norm", ".ffn"),
        and attention's "blk.{i}.q", ".k" (after RoPE), ".v" and ".out" [B, H, T, D].
        """
        block = pre_ln_block if self.config.block == "pre" else post_ln_block
        keep = (lambda name, sublayer: sublayer) if saved is None else functools.partial(_keeping_input, saved)
        if saved is not None:
            saved[f"blk.{i}"] = x
        return block(
            x,
            keep(f"blk.{i}.attn", lambda h: self._self_attention(h, i, positions, cache, saved)),
            keep(f"blk.{i}.ffn", lambda h: self._feed_forward(h, i)),
            keep(f"blk.{i}.attn_norm", lambda h: self._norm(h, f"blk.{i}.attn_norm")),
            keep(f"blk.{i}.ffn_norm", lambda h: self._norm(h, f"blk.{i}.ffn_norm")),
        )

    def logits(self, hidden) -> np.ndarray:
        """The output head: hidden [..., C] -> logits [..., V] (x E^T when the embeddings are tied)."""
        head = self.params["token_embd.weight" if self.config.tie_embeddings else "output.weight"]
        return self.linear(hidden, head)  # [..., C] @ [C, V] -> [..., V]

    def _self_attention(self, x, i, positions, cache, saved=None):
        """Self-attention of block i (causal unless config.causal is False): x [B, T, C] -> [B, T, C]."""
        c, p, linear = self.config, self.params, self.linear
        q = split_heads(linear(x, p[f"blk.{i}.attn_q.weight"]), c.n_heads)  # [B, T, Hq*D] -> [B, Hq, T, D]
        k = split_heads(linear(x, p[f"blk.{i}.attn_k.weight"]), c.kv_heads)  # [B, Hkv, T, D]
        v = split_heads(linear(x, p[f"blk.{i}.attn_v.weight"]), c.kv_heads)  # [B, Hkv, T, D]
        if c.position == "rope":
            q = apply_rope(q, positions, base=c.rope_base, interleaved=c.rope_interleaved)
            k = apply_rope(k, positions, base=c.rope_base, interleaved=c.rope_interleaved)
        if cache is None:
            out = self._attention(q, k, v)  # [B, Hq, T, D]
        else:  # store k, v in the cache, then attend over all it holds (contiguous arrays, or a paged pool)
            out = self._attention.over_cache(q, cache.store(i, k, v))  # [B, Hq, T, D]
        if saved is not None:
            saved.update({f"blk.{i}.q": q, f"blk.{i}.k": k, f"blk.{i}.v": v, f"blk.{i}.out": out})
        return linear(merge_heads(out), p[f"blk.{i}.attn_output.weight"])  # [B, T, Hq*D] -> [B, T, C]

    def _feed_forward(self, x, i):
        p, b = self.params, f"blk.{i}."
        if self.config.ffn == "swiglu":
            return swiglu(x, p[b + "ffn_gate.weight"], p[b + "ffn_up.weight"], p[b + "ffn_down.weight"],
                          linear=self.linear)
        return ffn(x, p[b + "ffn_up.weight"], p[b + "ffn_up.bias"], p[b + "ffn_down.weight"], p[b + "ffn_down.bias"],
                   activation=gelu_tanh, linear=self.linear)  # GPT-2's GELU

    def _norm(self, x, name):
        if self.config.norm == "rms":
            return rms_norm(x, self.params[f"{name}.weight"], self.config.norm_eps)
        return layer_norm(x, self.params[f"{name}.weight"], self.params[f"{name}.bias"], self.config.norm_eps)

    def _sinusoidal_table(self):
        if self._sinusoidal is None:
            c = self.config
            self._sinusoidal = sinusoidal_encoding(c.max_seq_len, c.d_model, dtype=self.dtype)  # [max_seq_len, C]
        return self._sinusoidal

    # --- checks and description --------------------------------------------------------

    @property
    def dtype(self) -> np.dtype:
        """The activations' float dtype: the embeddings' (float32 when they are kept quantised)."""
        embed = self.params["token_embd.weight"]
        return embed.dtype if isinstance(embed, np.ndarray) else np.dtype(np.float32)

    def _check_params(self):
        for name, shape in parameter_shapes(self.config).items():
            if name not in self.params:
                raise ValueError(f"params: expected a tensor {name!r} of shape {list(shape)}, but it is missing")
            got = tuple(self.params[name].shape)
            if got != shape:
                raise ValueError(f"params: expected {name!r} of shape {list(shape)} from the config, got {list(got)}")

    @property
    def n_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def __repr__(self) -> str:
        return describe(self)  # the structure, part by part (see `describe`)


def _keeping_input(saved: dict, name: str, sublayer):
    """sublayer, which first stores its input as saved[name] (the training hook)."""
    def run(h):
        saved[name] = h
        return sublayer(h)
    return run
