"""Tokenizers: text to token ids and back, from scratch, matching the real ones id for id.

Text becomes token ids before anything else happens in a language model, and
most "my output differs from the reference" reports start here. Three ideas,
one module each (read them in this order):

    tinytransformer.tokenizers.bpe          byte-level BPE (Sennrich et al. 2016; GPT-2): the
                                            reference loop (train, encode), then BPETokenizer
                                            with incremental pair counts and a heap encoder
    tinytransformer.tokenizers.spm          SentencePieceTokenizer: load a SentencePiece .model
                                            and encode like it: BPE by piece score, unigram by
                                            Viterbi (Kudo 2018), NFKC, the "▁" marker, byte fallback
    tinytransformer.tokenizers.byte_level   ByteLevelBPETokenizer: a real model's GPT-2-style
                                            tokenizer from GGUF metadata or tokenizer.json

and their helpers: unicode_regex (\\p{L}-style pre-tokenization patterns on
Python's `re`), protobuf (the few lines of protobuf wire format a .model needs),
and tinytransformer.tokenizers itself (reading untrusted files, writing safely,
special-token splitting and the bounded cache that every tokenizer shares).

    >>> tok = BPETokenizer.train("low lower lowest newer newest", 256 + 10, pattern=GPT2_PATTERN)
    >>> [tok.decode([i]) for i in tok.encode(" lowest")]
    [' lowe', 'st']

Does not handle: WordPiece, tiktoken files, truncation/padding/batching, offsets.
"""
from __future__ import annotations

from tinytransformer.tokenizers.bpe import BPETokenizer
from tinytransformer.tokenizers.byte_level import ByteLevelBPETokenizer, TokenizerFileError
from tinytransformer.tokenizers.spm import SentencePieceError, SentencePieceTokenizer
from tinytransformer.tokenizers.unicode_regex import GPT2_PATTERN, GPT4_PATTERN, LLAMA3_PATTERN

__all__ = ["BPETokenizer", "ByteLevelBPETokenizer", "TokenizerFileError", "SentencePieceTokenizer",
           "SentencePieceError", "GPT2_PATTERN", "GPT4_PATTERN", "LLAMA3_PATTERN"]
