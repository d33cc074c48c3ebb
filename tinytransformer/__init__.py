"""tinytransformer: the ideas inside transformer language models, one NumPy module each.

Modules (module -> idea), from the bottom of the house up (tests/test_architecture.py checks
that every import points down: no cycle, nothing imports the benchmarks):
    testing     tolerances by dtype, assert_close, numerical gradients (the oracle's tools)
    bfloat16    bfloat16 as uint16 bit patterns (GGUF's BF16 tensors, the kernels' bf16 inputs)
    threads     BLAS threads, set and stated (threadpoolctl)
    layers      LayerNorm, RMSNorm, GELU, SiLU, FFN, SwiGLU, pre-/post-LN blocks
    attention   softmax (the textbook one, then masked_softmax), masks, scaled dot-product attention, GQA/MQA
    positional  sinusoidal, learned, RoPE (both pairings), ALiBi
    flash       flash attention: tiles and the online softmax
    kv_cache    the per-layer key/value cache, its size in bytes, and the cache interface the model uses
    paged_attention  decode attention over a paged cache
    paged_cache the paged KV cache (vLLM): blocks, block tables, the model's views
    cuda        CUDA kernels through CuPy (CuPy itself is imported only when a kernel runs)
    attention_implementations  the model's swappable attention, by name
    describe    a model's structure, printed part by part
    model       the one decoder: config, parameters, forward pass
    sampling    greedy, temperature, top-k, top-p, the stopping rule, and the decode loop
    generation  generate and stream: one sequence through its KV cache
    metrics     log-probabilities, loss, perplexity, bits per byte, a model against a reference
    corpus      the built-in text and its train/held-out split
    gguf        the GGUF file format: reader, writer, its block quantisations and k-quants
    tokenizers  BPE, SentencePiece (BPE and unigram), the byte-level BPE of a real model
    ngram       count-based language models, Kneser-Ney, ARPA files
    quant       quantisation methods: absmax, NF4/FP4, LLM.int8, GPTQ, AWQ, weights kept quantised
    llama       a real pretrained model (SmolLM2) read into the one decoder; save_model
    random_llama  a tiny random Llama as a GGUF file (a model file for tests and lectures)
    model_quantization  every projection of a model quantised (calibration, AWQ folding)
    chat        the chat template
    training    backward passes by hand, AdamW, the training loop, objectives
    serving     batching schedulers, the engine, speculative decoding, an OpenAI-compatible server
    cli         the `tinytransformer` command
    bench       the benchmarks (`python -m tinytransformer.bench NAME`): leaves, imported by nothing

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
