"""tinytransformer: the ideas inside transformer language models, one NumPy module each.

Chapters (module -> idea):
    attention   softmax, masks, scaled dot-product attention, multi-head, GQA/MQA
    positional  sinusoidal, learned, RoPE (both pairings), ALiBi
    kv_cache    the per-layer key/value cache and its size in bytes
    flash       flash attention: tiles and the online softmax
    layers      LayerNorm, RMSNorm, GELU, SiLU, FFN, SwiGLU, pre-/post-LN blocks
    model       a small decoder-only transformer: its forward pass and caches
    attention_implementations  the model's swappable attention, by name
    describe    a model's structure, printed part by part
    sampling    greedy, temperature, top-k, top-p, the stopping rule, and the decode loop
    generation  generate and stream: one sequence through its KV cache
    tokenizer   BPE, SentencePiece, byte-level BPE of a real model
    ngram       count-based language models and Kneser-Ney
    gguf        the GGUF file format and dequantisation
    quant       quantisation: absmax, NF4, LLM.int8, GGUF blocks and k-quants, GPTQ, AWQ
    llama       a real pretrained model (SmolLM2) built from the modules above
    paged_cache the paged KV cache (vLLM): blocks, block tables, the model's views
    paged_attention  decode attention over a paged cache
    cuda        CUDA kernels through CuPy (CuPy itself is imported only when a kernel runs)
    serving     batching schedulers, speculative decoding, an OpenAI-compatible server
    bfloat16    bfloat16 as uint16 bit patterns (GGUF's BF16 tensors, the kernels' bf16 inputs)

Every public module is reachable from the package and is imported on first use,
so `import tinytransformer` stays cheap:

    >>> import tinytransformer
    >>> tinytransformer.attention.softmax([0.0, 0.0]).tolist()
    [0.5, 0.5]
    >>> "flash" in tinytransformer.__all__ and "load_model" in tinytransformer.__all__
    True

`tinytransformer.load_model` is `tinytransformer.llama.load_model`.
"""
import importlib as _importlib
import pkgutil as _pkgutil

__version__ = "0.1.0"

# Public modules: every module or subpackage of this folder whose name does not start with "_".
_MODULES = sorted(info.name for info in _pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
_FUNCTIONS = {"load_model": "llama"}  # function name -> the module that defines it

__all__ = [*_MODULES, *_FUNCTIONS]


def __getattr__(name: str):
    """Import a public module (or the module of a re-exported function) the first time it is used."""
    if name in _MODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # also sets it as an attribute of the package
    if name in _FUNCTIONS:
        value = getattr(_importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
