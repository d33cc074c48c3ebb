"""Tokenizers, one idea per module: see tinytransformer.tokenizer for the overview."""
