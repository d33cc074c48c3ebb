"""The reference to compare with: a SentencePiece model trained by the sentencepiece library itself.

Our SentencePieceTokenizer only reads and applies .model files; it does not train them.
To show it matching the library id for id (chapter 6, the tokenizer benchmark), the
lecture trains models with the library (pip install sentencepiece) and loads the files
with both. One call, with the options that make a run repeatable and quiet: one thread,
no log, and `hard_vocab_limit=False`, so that a small text with fewer distinct pieces
than the requested vocabulary gives a smaller model instead of an error.

    path = train_sentencepiece(text, folder, "bpe1000", model_type="bpe", vocab_size=1000)
    SentencePieceTokenizer(path).encode(line) == SentencePieceProcessor(model_file=str(path)).encode(line)

(No doctest: sentencepiece is an optional dependency, and every module here must import
and pass its examples without it. The lecture and the tokenizer benchmark call it.)

Does not handle: training without the sentencepiece library (that is not a lesson here).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["train_sentencepiece"]


def train_sentencepiece(text: str, folder: Path, name: str, **options) -> Path:
    """Train a SentencePiece model on text with the library; the path of folder/name.model.

    options are the library's trainer options (model_type="bpe", vocab_size=1000, byte_fallback=True...).
    ImportError when sentencepiece is not installed.
    """
    import sentencepiece as spm

    train_file = folder / f"{name}.txt"
    train_file.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(train_file), model_prefix=str(folder / name), minloglevel=2,
                                   num_threads=1, hard_vocab_limit=False, **options)
    return folder / f"{name}.model"
