"""Tokenizers: text to token ids and back, from scratch, matching the real ones id for id.

Text becomes token ids before anything else happens in a language model, and
most "my output differs from the reference" reports start here. Three ideas,
read them in this order:

    tinytransformer.tokenizers.bpe             byte-level BPE (Sennrich et al. 2016; GPT-2): the
                                               reference loop (train, encode), then BPETokenizer
                                               with incremental pair counts and a heap encoder
    tinytransformer.tokenizers.spm             SentencePieceTokenizer: load a SentencePiece .model
                                               and encode like it (Kudo & Richardson 2018), from
        .spm_model_file                        the .model file: pieces, types, trainer/normalizer specs
        .spm_normalizer                        NFKC charsmap rules, whitespace, the "▁" marker
        .spm_unigram                           unigram by Viterbi (Kudo 2018): textbook, then float32-exact
        .spm_bpe                               BPE by piece score, UNUSED pieces resegmented
    tinytransformer.tokenizers.byte_level      ByteLevelBPETokenizer: a real model's GPT-2-style
                                               tokenizer from GGUF metadata or tokenizer.json

and the pieces they share: unicode_regex (\\p{L}-style pre-tokenization patterns on
Python's `re`), piece_trie (which pieces a text starts with), protobuf (the few lines
of protobuf wire format a .model needs), untrusted_files (reading a hostile file with
bounded size and nesting), special_tokens (cutting them out of the text first) and
piece_cache (the bounded cache of encoded pieces every tokenizer uses). This file only
re-exports the public names.

    >>> tok = BPETokenizer.train("low lower lowest newer newest", 256 + 10, pattern=GPT2_PATTERN)
    >>> [tok.decode([i]) for i in tok.encode(" lowest")]
    [' lowe', 'st']

Does not handle: WordPiece, tiktoken files, truncation/padding/batching, offsets.
"""
from __future__ import annotations

from tinytransformer.tokenizers.bpe import BPETokenizer
from tinytransformer.tokenizers.byte_level import ByteLevelBPETokenizer, TokenizerFileError
from tinytransformer.tokenizers.spm import SentencePieceTokenizer
from tinytransformer.tokenizers.spm_model_file import SentencePieceError
from tinytransformer.tokenizers.unicode_regex import GPT2_PATTERN, GPT4_PATTERN, LLAMA3_PATTERN

__all__ = ["BPETokenizer", "ByteLevelBPETokenizer", "TokenizerFileError", "SentencePieceTokenizer",
           "SentencePieceError", "GPT2_PATTERN", "GPT4_PATTERN", "LLAMA3_PATTERN"]
