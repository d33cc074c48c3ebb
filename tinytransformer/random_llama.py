"""A tiny random Llama, written as a GGUF file: a model file for tests and lectures that needs no download.

Code that reads model files (the loader, the tokenizer from GGUF metadata, the command
line, the server) is best tested on a real file. SmolLM2 is 100 MB and optional; this
writes a file of the same kind in a few milliseconds: the same metadata keys, the same
tokenizer layout in miniature, block-quantised weights (Q4_1 projections, Q8_0
embeddings by default, as in SmolLM2), written by `llama.save_model`, the writer of
every model we save.

    >>> import os, tempfile
    >>> from tinytransformer.llama import load_model
    >>> loaded = load_model(write_random_llama(os.path.join(tempfile.mkdtemp(), "tiny.gguf"), n_layers=1))
    >>> config, tokenizer = loaded.model.config, loaded.tokenizer
    >>> config.vocab_size, config.n_layers, tokenizer.decode(tokenizer.encode("the cat"))
    (265, 1, 'the cat')

It sits above the loader (it imports `llama`, `model` and `tokenizers`), so that
`tinytransformer.testing` (tolerances, assert_close) stays at the bottom of the house.

Does not handle: other architectures than Llama, trained weights, SentencePiece vocabularies.
"""
from __future__ import annotations

import numpy as np

from tinytransformer.llama import save_model
from tinytransformer.model import TinyTransformer, TransformerConfig, parameter_shapes
from tinytransformer.tokenizers.byte_level import bytes_to_unicode

__all__ = ["TINY_MERGES", "TINY_SPECIAL_TOKENS", "write_random_llama"]

TINY_MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("a", "n"), ("Ġ", "a")]
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_random_llama(path, *, n_layers: int = 2, dim: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
                       hidden_dim: int = 96, context_length: int = 128, rope_base: float = 10000.0,
                       seed: int = 0, weight_type: int = 3, embedding_type: int = 8,
                       tied_embeddings: bool = False, version: int = 3):
    """Write a small Llama GGUF file with random weights and a 265-token byte-level vocabulary.

    The vocabulary is SmolLM2's layout in miniature: <|endoftext|> (0),
    <|im_start|> (1), <|im_end|> (2, the EOS), the 256 byte symbols of GPT-2's
    byte-to-unicode table, and one token per merge in TINY_MERGES.
    weight_type / embedding_type are ggml type ids (default Q4_1 and Q8_0, as in
    SmolLM2); norms are F32. dim and hidden_dim must be multiples of 32 for the
    block-quantised types. The output head is untied by default: with random
    tied weights every token's best continuation is itself, a dull test.
    It is written by `llama.save_model`, the writer of every model we save.
    """
    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    tokens = TINY_SPECIAL_TOKENS + byte_symbols + [a + b for a, b in TINY_MERGES]
    token_types = [3] * len(TINY_SPECIAL_TOKENS) + [1] * (len(tokens) - len(TINY_SPECIAL_TOKENS))
    config = TransformerConfig(vocab_size=len(tokens), d_model=dim, n_layers=n_layers, n_heads=n_heads,
                               n_kv_heads=n_kv_heads, d_ff=hidden_dim, max_seq_len=context_length,
                               rope_base=rope_base, rope_interleaved=True, tie_embeddings=tied_embeddings,
                               bos_id=1, eos_id=2, name="tiny random llama")
    rng = np.random.default_rng(seed)
    params, types = {}, {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith("norm.weight"):
            params[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        scale = {"token_embd.weight": 1.0, "output.weight": 0.5}.get(name, 1.0 / np.sqrt(shape[1]))
        params[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        types[name] = embedding_type if name in ("token_embd.weight", "output.weight") else weight_type
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(token_types, dtype=np.int32),
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in TINY_MERGES],
        "tokenizer.ggml.add_bos_token": False,
    }
    return save_model(TinyTransformer(config, params), path, metadata=metadata, types=types, version=version)
