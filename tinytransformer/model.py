"""A decoder-only transformer: the one forward pass of tinytransformer.

    h_0 = Embed(ids) (+ position table, for learned or sinusoidal positions)
    h_l = Block_l(h_{l-1})       for l = 1..L   (pre-LN or post-LN, see `layers`)
    logits = Norm(h_L) W_out^T   (W_out = Embed when the embeddings are tied)

Every block is causal self-attention (MHA, GQA or MQA, by `n_kv_heads`) and an
FFN (SwiGLU or GELU); with `causal=False` the stack is an encoder, as BERT's
(every position sees every other; it is trained, not used to generate). Positions come from RoPE (rotating q and k), ALiBi (a bias
on the scores), or a learned/sinusoidal table added to the embeddings. The small
random models of chapter 5 and the pretrained SmolLM2-135M run through this same
code: loading a checkpoint (`llama.load_model`) is reading a config and tensors.

Parameters are one flat dict keyed by the checkpoint's (GGUF's) tensor names,
weights in the checkpoint's shape [out, in], applied as x @ W.T (`layers.linear`); the model
keeps its copy of each matrix column-major (`layers.column_major`), which only makes x @ W.T faster:

    token_embd.weight [V, C]            position_embd.weight [max_seq_len, C] (learned only)
    blk.{i}.attn_norm.weight (.bias)    blk.{i}.attn_q.weight [Hq*D, C]
    blk.{i}.attn_k.weight [Hkv*D, C]    blk.{i}.attn_v.weight [Hkv*D, C]
    blk.{i}.attn_output.weight [C, Hq*D]
    blk.{i}.ffn_norm.weight (.bias)     SwiGLU: blk.{i}.ffn_gate.weight, ffn_up.weight [F, C], ffn_down.weight [C, F]
                                        GELU:   blk.{i}.ffn_up.weight/.bias [F, C], ffn_down.weight/.bias [C, F]
    output_norm.weight (.bias)          output.weight [V, C] (untied only)

Three parts are swappable, each with one signature, and give the same logits:

    attention  "sdpa" | "flash" | "cuda" | "sdpa-batched" | "sdpa-fast"
               | a function f(q, k, v, *, causal, scale, alibi_slopes) -> out
               ("sdpa-batched" and "sdpa-fast": the reference with the equation inlined;
               over a paged batch, one padded call or a loop over its sequences)
    cache      None (recompute everything), a `KVCache`, or a ragged batch of a `PagedKVCache`
    weights    float arrays, or quantised weights with .linear(x) (see `layers.linear`)

`forward(ids, cache)` runs only the new tokens when given a cache, at the
positions the cache reserves for them, and attends over everything cached:
the law the tests check is cached decode == full recompute, at every step.

    >>> config = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2)
    >>> model = TinyTransformer(config, seed=0)
    >>> model.forward(np.array([[1, 2, 3]])).shape
    (1, 3, 11)

Does not handle: training (see the training chapter for gradients), dropout,
attention or projection biases, mixture of experts, RoPE scaling.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tinytransformer import sampling
from tinytransformer._validate import positive_float, positive_int, random_generator, seed_value
from tinytransformer.attention import (causal_attention_in_query_blocks, merge_heads, scaled_dot_product_attention,
                                       scaled_dot_product_attention_fast, split_heads)
from tinytransformer.flash import flash_attention
from tinytransformer.kv_cache import KVCache
from tinytransformer.layers import (column_major, embedding, ffn, gelu, layer_norm, linear_in_row_blocks,
                                    post_ln_block, pre_ln_block, rms_norm, swiglu)
from tinytransformer.paged_attention import (paged_decode_attention, paged_decode_attention_batched,
                                             paged_decode_attention_fast)
from tinytransformer.paged_cache import PagedKVCache
from tinytransformer.positional import alibi_slopes, apply_rope, sinusoidal_encoding

__all__ = ["TransformerConfig", "init_params", "TinyTransformer", "CausalAttention", "ATTENTION_IMPLEMENTATIONS"]

_CHOICES = {
    "norm": ("rms", "layer"),
    "ffn": ("swiglu", "gelu"),
    "position": ("rope", "alibi", "learned", "sinusoidal"),
    "block": ("pre", "post"),
}
QUERY_BLOCK = 128  # query rows per attention call during prefill (see causal_attention_in_query_blocks)
ROW_BLOCK = 4  # a projection of 2 or more rows is padded with zero rows to a multiple (layers.linear_in_row_blocks)


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
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or not 0 <= value < self.vocab_size):
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


# --- attention: the swappable part ----------------------------------------------------


def _cuda_flash(q, k, v, *, causal=False, scale=None, alibi_slopes=None):
    from tinytransformer import cuda

    return cuda.flash_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)


def _cuda_paged(q, k_pool, v_pool, block_tables, context_lens, *, causal=True, scale=None, alibi_slopes=None):
    from tinytransformer import cuda

    return cuda.paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, causal=causal, scale=scale,
                                       alibi_slopes=alibi_slopes)


# name -> (attention over contiguous keys, attention over a paged cache)
ATTENTION_IMPLEMENTATIONS: dict[str, tuple[Callable, Callable]] = {
    "sdpa": (scaled_dot_product_attention, paged_decode_attention),
    "flash": (flash_attention, functools.partial(paged_decode_attention, attention=flash_attention)),
    "cuda": (_cuda_flash, _cuda_paged),  # NumPy arrays are copied to the GPU and back on every call
    # the reference with the equation inlined, over contiguous keys; over a paged batch, in one padded call
    "sdpa-batched": (scaled_dot_product_attention_fast, paged_decode_attention_batched),
    # the same over contiguous keys; the paged reference's loop with the equation inlined
    "sdpa-fast": (scaled_dot_product_attention_fast, paged_decode_attention_fast),
}


class CausalAttention:
    """The attention a model runs: one implementation, causal, with the model's ALiBi slopes.

    causal=False (an encoder) attends over every key, in one call.

    attention(q, k, v)  over contiguous keys (no cache, or a KVCache), in blocks
                        of query rows during prefill;
    attention.paged(q, k_pool, v_pool, block_tables, context_lens)  over a paged cache.
    """

    def __init__(self, implementation="sdpa", *, alibi_slopes=None, query_block: int | None = QUERY_BLOCK,
                 causal: bool = True):
        self.implementation = implementation
        self.causal = causal
        if callable(implementation):
            self.name = getattr(implementation, "__name__", "custom")
            self.function = implementation
            self.paged_function = functools.partial(paged_decode_attention, attention=implementation)
        elif implementation in ATTENTION_IMPLEMENTATIONS:
            self.name = implementation
            self.function, self.paged_function = ATTENTION_IMPLEMENTATIONS[implementation]
        else:
            raise ValueError(f"attention: expected one of {sorted(ATTENTION_IMPLEMENTATIONS)} or a function "
                             f"f(q, k, v, *, causal, scale, alibi_slopes), got {implementation!r}")
        self.alibi_slopes = alibi_slopes
        self.query_block = query_block

    def __call__(self, q, k, v):
        if self.query_block is None or not self.causal:
            return self.function(q, k, v, causal=self.causal, alibi_slopes=self.alibi_slopes)
        return causal_attention_in_query_blocks(self.function, q, k, v, block=self.query_block,
                                                alibi_slopes=self.alibi_slopes)

    def paged(self, q, k_pool, v_pool, block_tables, context_lens):
        return self.paged_function(q, k_pool, v_pool, block_tables, context_lens, causal=True,
                                   alibi_slopes=self.alibi_slopes)

    def __repr__(self) -> str:
        return f"CausalAttention({self.name!r}{', ALiBi' if self.alibi_slopes is not None else ''})"


# --- the model ------------------------------------------------------------------------


class TinyTransformer:
    """A decoder-only transformer over plain arrays: forward, caches, generate.

    .config      TransformerConfig
    .params      dict checkpoint name -> array [out, in] (or a quantised weight)
    .attention   "sdpa" | "flash" | "cuda" | a function (settable)
    .tokenizer   the tokenizer that goes with the weights, if any; the constructor also takes
                 a function that returns it, called on first use (a loader's lazy tokenizer)
    """

    def __init__(self, config: TransformerConfig, params: dict | None = None, *, seed: int = 0,
                 attention="sdpa", tokenizer=None):
        self.config = config
        params = init_params(config, seed) if params is None else params
        self.params = {name: column_major(w) for name, w in dict(params).items()}  # see `column_major`: only faster
        self._check_params()
        self.attention = attention
        self._tokenizer = tokenizer
        self.metadata: dict = {}  # what the checkpoint file said about itself (set by the loader)
        self.tensor_types: dict[str, str] = {}  # storage type of each tensor in the file (set by the loader)
        self.path = None
        self._sinusoidal = None

    @property
    def attention(self):
        return self._attention.implementation

    @attention.setter
    def attention(self, implementation):
        slopes = alibi_slopes(self.config.n_heads) if self.config.position == "alibi" else None
        self._attention = CausalAttention(implementation, alibi_slopes=slopes, causal=self.config.causal)

    @property
    def tokenizer(self):
        if callable(self._tokenizer) and not hasattr(self._tokenizer, "encode"):
            self._tokenizer = self._tokenizer()  # a loader function: load on first use
        if self._tokenizer is None:
            raise ValueError("this model has no tokenizer (it was not loaded from a file that has one); "
                             "pass token ids instead of text")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer):
        self._tokenizer = tokenizer

    # --- caches ------------------------------------------------------------------------

    def new_cache(self, batch: int = 1, max_seq_len: int | None = None) -> KVCache:
        """A contiguous KV cache for `batch` sequences of up to max_seq_len positions."""
        c = self.config
        return KVCache(c.n_layers, batch, c.kv_heads, c.head_dim, max_seq_len or c.max_seq_len, dtype=self._dtype)

    def new_paged_cache(self, n_blocks: int, block_size: int = 16) -> PagedKVCache:
        """A paged KV cache of n_blocks blocks of block_size positions, shared by many sequences."""
        c = self.config
        return PagedKVCache(c.n_layers, c.kv_heads, c.head_dim, n_blocks=n_blocks, block_size=block_size,
                            dtype=self._dtype)

    # --- forward -----------------------------------------------------------------------

    def forward(self, ids, cache=None) -> np.ndarray:
        """Logits [B, T, V] for token ids [B, T] (or [T, V] for 1-D ids [T]).

        With a cache, ids are the new tokens only: they go at the positions the
        cache reserves (after what it holds), and attend over everything cached.
        """
        return self.logits(self.hidden_states(ids, cache))

    __call__ = forward

    def hidden_states(self, ids, cache=None, *, saved: dict | None = None) -> np.ndarray:
        """The final normalised hidden states [B, T, C] (or [T, C] for 1-D ids): forward without the head.

        saved: the training hook. When a dict is given, the forward also stores in it
        what the backward pass needs (`training.gradients`): "positions", the input of
        every block and sublayer, and attention's q, k, v and output (see `block`),
        and "output_norm", the input of the final norm.
        """
        c, p = self.config, self.params
        ids, one_sequence = self._ids(ids)
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
            positions = cache.reserve(T, limit=c.max_seq_len)  # [B, T] absolute positions of the new tokens

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

    def block(self, x, i, positions, cache=None, *, saved: dict | None = None) -> np.ndarray:
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
        return _linear(hidden, head)  # [..., C] @ [C, V] -> [..., V]

    def _self_attention(self, x, i, positions, cache, saved=None):
        """Self-attention of block i (causal unless config.causal is False): x [B, T, C] -> [B, T, C]."""
        c, p = self.config, self.params
        q = split_heads(_linear(x, p[f"blk.{i}.attn_q.weight"]), c.n_heads)  # [B, T, Hq*D] -> [B, Hq, T, D]
        k = split_heads(_linear(x, p[f"blk.{i}.attn_k.weight"]), c.kv_heads)  # [B, Hkv, T, D]
        v = split_heads(_linear(x, p[f"blk.{i}.attn_v.weight"]), c.kv_heads)  # [B, Hkv, T, D]
        if c.position == "rope":
            q = apply_rope(q, positions, base=c.rope_base, interleaved=c.rope_interleaved)
            k = apply_rope(k, positions, base=c.rope_base, interleaved=c.rope_interleaved)
        if cache is None:
            out = self._attention(q, k, v)  # [B, Hq, T, D]
        else:
            out = cache.attend(i, q, k, v, self._attention)  # store k, v; attend over all cached positions
        if saved is not None:
            saved.update({f"blk.{i}.q": q, f"blk.{i}.k": k, f"blk.{i}.v": v, f"blk.{i}.out": out})
        return _linear(merge_heads(out), p[f"blk.{i}.attn_output.weight"])  # [B, T, Hq*D] -> [B, T, C]

    def _feed_forward(self, x, i):
        p, b = self.params, f"blk.{i}."
        if self.config.ffn == "swiglu":
            return swiglu(x, p[b + "ffn_gate.weight"], p[b + "ffn_up.weight"], p[b + "ffn_down.weight"], linear=_linear)
        return ffn(x, p[b + "ffn_up.weight"], p[b + "ffn_up.bias"], p[b + "ffn_down.weight"], p[b + "ffn_down.bias"],
                   activation=_gelu_tanh, linear=_linear)

    def _norm(self, x, name):
        if self.config.norm == "rms":
            return rms_norm(x, self.params[f"{name}.weight"], self.config.norm_eps)
        return layer_norm(x, self.params[f"{name}.weight"], self.params[f"{name}.bias"], self.config.norm_eps)

    def _sinusoidal_table(self):
        if self._sinusoidal is None:
            c = self.config
            self._sinusoidal = sinusoidal_encoding(c.max_seq_len, c.d_model, dtype=self._dtype)  # [max_seq_len, C]
        return self._sinusoidal

    # --- generation --------------------------------------------------------------------

    def stream(self, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed=None, stop_at_eos: bool = True, use_cache: bool = True,
               cache: KVCache | None = None) -> Iterator[int]:
        """Yield new token ids one at a time, as they are produced; temperature 0 is greedy.

        use_cache=True: prefill the prompt into a KV cache, then feed one token
        per step. use_cache=False: recompute the whole sequence every step
        (quadratic, to show what the cache saves). Both give the same tokens.
        cache: continue an existing one-sequence KVCache (a conversation): the
        prompt ids are appended after what it holds. Generation stops after
        max_new_tokens, or after the end-of-sequence id (yielded) when stop_at_eos.
        """
        c = self.config
        if not c.causal:
            raise ValueError("generate: an encoder (config.causal=False) cannot generate text left to right")
        prompt = self._prompt(prompt_ids)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        if cache is not None and (not use_cache or not isinstance(cache, KVCache) or cache.batch != 1):
            raise ValueError(f"cache: expected a one-sequence KVCache with use_cache=True, got {cache!r}")
        held = 0 if cache is None else cache.length
        if held + len(prompt) + max_new_tokens > c.max_seq_len:
            raise ValueError(f"max_new_tokens: {held} cached + {len(prompt)} prompt + {max_new_tokens} new tokens "
                             f"exceed the context length max_seq_len={c.max_seq_len}")
        if use_cache:
            cache = cache if cache is not None else self.new_cache(1, len(prompt) + max_new_tokens)

            def step(new_ids):  # the new ids -> logits [V] of the last position
                return self.logits(self.hidden_states(np.array([new_ids]), cache)[0, -1])
        else:
            seen: list[int] = []

            def step(new_ids):  # recompute the whole sequence
                seen.extend(new_ids)
                return self.logits(self.hidden_states(np.array([seen]))[0, -1])

        eos = c.eos_id if stop_at_eos else None
        yield from sampling.generate(step, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, seed=seed, eos_id=eos)

    def generate(self, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed=None, stop_at_eos: bool = True, use_cache: bool = True,
                 cache: KVCache | None = None, on_token: Callable[[int], None] | None = None) -> list[int]:
        """The new ids (the end-of-sequence id included if it ended the text), as a list.

        Arguments as in `stream`; on_token(id) is called as each token is produced.
        """
        out = []
        for token in self.stream(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 seed=seed, stop_at_eos=stop_at_eos, use_cache=use_cache, cache=cache):
            out.append(token)
            if on_token is not None:
                on_token(token)
        return out

    def generate_many(self, prompts, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, seed=None, stop_at_eos: bool = True, block_size: int = 16,
                      cache: PagedKVCache | None = None,
                      on_step: Callable[[PagedKVCache], None] | None = None) -> list[list[int]]:
        """New ids for several prompts of different lengths, decoded together through a paged cache.

        Each prompt is prefilled on its own; then every decode step runs all
        unfinished sequences as one batch [B, 1] (one matrix product per weight
        for the whole batch). A sequence stops at its own end-of-sequence id or
        limit and returns its blocks to the pool at once. Sequence i samples with
        its own generator seeded by `seed`, so result[i] equals
        generate(prompts[i], ...) with the same arguments. cache: a paged cache
        to use (by default one just large enough); on_step(cache) is called after
        the prefills and after every decode step (to watch the memory).
        """
        c = self.config
        prompts = [self._prompt(p, name=f"prompts[{i}]") for i, p in enumerate(prompts)]
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        seed = seed_value(seed)
        for i, p in enumerate(prompts):
            if len(p) + max_new_tokens > c.max_seq_len:
                raise ValueError(f"prompts[{i}]: {len(p)} prompt + {max_new_tokens} new tokens exceed the context "
                                 f"length max_seq_len={c.max_seq_len}")
        outputs: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens == 0:
            return outputs
        if cache is None:
            block_size = positive_int(block_size, "block_size")
            cache = self.new_paged_cache(sum(-(-(len(p) + max_new_tokens) // block_size) for p in prompts),
                                         block_size)
        eos = c.eos_id if stop_at_eos else None
        rngs = [np.random.default_rng(seed) for _ in prompts]  # seed checked above
        seq_ids = [cache.add_sequence() for _ in prompts]

        def sample(i, logits):  # one token for sequence i; True while it goes on
            token = sampling.sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rngs[i])
            outputs[i].append(token)
            if token == eos or len(outputs[i]) == max_new_tokens:
                cache.free(seq_ids[i])  # finished: its blocks go back to the pool now
                return False
            return True

        active = []
        for i, prompt in enumerate(prompts):  # prefill, one sequence at a time
            hidden = self.hidden_states(np.array([prompt]), cache.view([seq_ids[i]]))  # [1, T, C]
            if sample(i, self.logits(hidden[0, -1])):
                active.append(i)
        if on_step is not None:
            on_step(cache)
        while active:  # decode: all unfinished sequences in one forward per step
            ids = np.array([[outputs[i][-1]] for i in active])  # [B, 1]
            hidden = self.hidden_states(ids, cache.view([seq_ids[i] for i in active]))  # [B, 1, C]
            logits = self.logits(hidden[:, -1])  # [B, V]
            active = [i for row, i in enumerate(active) if sample(i, logits[row])]
            if on_step is not None:
                on_step(cache)
        return outputs

    # --- checks and description --------------------------------------------------------

    @property
    def _dtype(self):
        embed = self.params["token_embd.weight"]
        return embed.dtype if isinstance(embed, np.ndarray) else np.dtype(np.float32)

    def _check_params(self):
        for name, shape in parameter_shapes(self.config).items():
            if name not in self.params:
                raise ValueError(f"params: expected a tensor {name!r} of shape {list(shape)}, but it is missing")
            got = tuple(self.params[name].shape)
            if got != shape:
                raise ValueError(f"params: expected {name!r} of shape {list(shape)} from the config, got {list(got)}")

    def _ids(self, ids):
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or ids.dtype.kind not in "iu" or ids.shape[-1] == 0:
            raise ValueError(f"ids: expected a non-empty integer array [B, T] or [T], got dtype {ids.dtype} "
                             f"shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"ids: expected values in [0, vocab_size={self.config.vocab_size}), "
                             f"got [{ids.min()}, {ids.max()}]")
        return (ids[None], True) if ids.ndim == 1 else (ids, False)

    def _prompt(self, prompt_ids, name: str = "prompt_ids") -> list[int]:
        """A prompt as a list of token ids, refusing strings, floats, bools and ids outside the vocabulary."""
        if isinstance(prompt_ids, (str, bytes)):
            raise ValueError(f"{name}: expected a sequence of token ids, got a {type(prompt_ids).__name__}; "
                             "encode text with the tokenizer first")
        items = list(prompt_ids) if not isinstance(prompt_ids, np.ndarray) or prompt_ids.ndim == 1 else None
        V = self.config.vocab_size
        if not items or any(isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer))
                            or not 0 <= t < V for t in items):
            raise ValueError(f"{name}: expected a non-empty sequence of integer token ids in [0, {V}), "
                             f"got {_short(prompt_ids)}")
        return [int(t) for t in items]

    @property
    def n_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def __repr__(self) -> str:
        c = self.config
        C, F, D = c.d_model, c.ffn_dim, c.head_dim
        kind = self.tensor_types.get

        def tag(name):
            return f"  [{kind(name)}]" if kind(name) else ""

        norm = "RMSNorm" if c.norm == "rms" else "LayerNorm"
        pos = {"rope": f"RoPE {'interleaved' if c.rope_interleaved else 'rotate-half'} base {c.rope_base:g}",
               "alibi": "ALiBi", "learned": "learned positions", "sinusoidal": "sinusoidal positions"}[c.position]
        ffn_text = "SwiGLU(silu(x Wg^T) * (x Wu^T)) Wd^T" if c.ffn == "swiglu" else "GELU(x Wu^T + bu) Wd^T + bd"
        n = self.n_parameters
        count = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
        lines = [f"TinyTransformer({c.name or 'decoder'}: {count} parameters, "
                 f"vocab {c.vocab_size}, context {c.max_seq_len}, attention {self._attention.name!r})",
                 f"  (token_embd): Embedding({c.vocab_size}, {C}){tag('token_embd.weight')}"]
        if c.position == "learned":
            lines.append(f"  (position_embd): Embedding({c.max_seq_len}, {C})")
        b = "blk.0."
        lines += [f"  (blk): {c.n_layers} x {'pre' if c.block == 'pre' else 'post'}-norm block, each (blk.0 shown):",
                  f"    (attn_norm): {norm}({C}, eps={c.norm_eps:g})",
                  f"    (attn): {'causal' if c.causal else 'bidirectional'} attention, heads {c.n_heads} x {D}, kv_heads {c.kv_heads}, {pos}",
                  f"      (attn_q): Linear({C} -> {c.n_heads * D}){tag(b + 'attn_q.weight')}",
                  f"      (attn_k): Linear({C} -> {c.kv_heads * D}){tag(b + 'attn_k.weight')}",
                  f"      (attn_v): Linear({C} -> {c.kv_heads * D}){tag(b + 'attn_v.weight')}",
                  f"      (attn_output): Linear({c.n_heads * D} -> {C}){tag(b + 'attn_output.weight')}",
                  f"    (ffn_norm): {norm}({C}, eps={c.norm_eps:g})",
                  f"    (ffn): {ffn_text}"]
        if c.ffn == "swiglu":
            lines.append(f"      (ffn_gate): Linear({C} -> {F}){tag(b + 'ffn_gate.weight')}")
        lines += [f"      (ffn_up): Linear({C} -> {F}){tag(b + 'ffn_up.weight')}",
                  f"      (ffn_down): Linear({F} -> {C}){tag(b + 'ffn_down.weight')}",
                  f"  (output_norm): {norm}({C}, eps={c.norm_eps:g})",
                  "  (output): " + ("tied to token_embd" if c.tie_embeddings
                                    else f"Linear({C} -> {c.vocab_size}){tag('output.weight')}")]
        return "\n".join(lines)


def _keeping_input(saved: dict, name: str, sublayer):
    """sublayer, which first stores its input as saved[name] (the training hook)."""
    def run(h):
        saved[name] = h
        return sublayer(h)
    return run


def _linear(x, weight, bias=None):
    """The model's projections: x W^T (+ b), rows padded to a multiple of ROW_BLOCK for the BLAS
    (layers.linear_in_row_blocks); same values as layers.linear, only faster."""
    return linear_in_row_blocks(x, weight, bias, multiple=ROW_BLOCK)


def _gelu_tanh(x):
    return gelu(x, approximate="tanh")  # GPT-2's approximation


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
