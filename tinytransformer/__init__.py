"""tinytransformer: the ideas inside transformer language models, one NumPy module each.

Chapters (module -> idea):
    attention   softmax, masks, scaled dot-product attention, multi-head, GQA/MQA
    positional  sinusoidal, learned, RoPE (both pairings), ALiBi
    kv_cache    the per-layer key/value cache and its size in bytes
    flash       flash attention: tiles and the online softmax
    layers      LayerNorm, RMSNorm, GELU, SiLU, FFN, SwiGLU, pre-/post-LN blocks
    model       a small decoder-only transformer with cached decode
    sampling    greedy, temperature, top-k, top-p, and the generate loop
    tokenizer   BPE, SentencePiece, byte-level BPE of a real model
    ngram       count-based language models and Kneser-Ney
    gguf        the GGUF file format and dequantisation
    llama       a real pretrained model (SmolLM2) built from the modules above
    paged_cache the paged KV cache (vLLM) and decode attention over it
    cuda        CUDA kernels through CuPy
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_model(path=None):
    """Load a Llama-architecture GGUF model (SmolLM2-135M-Instruct by default)."""
    from tinytransformer.llama import load_model as _load

    return _load(path)
