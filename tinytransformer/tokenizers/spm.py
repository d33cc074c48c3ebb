"""SentencePiece: read a .model file and encode and decode exactly as the library does.

SentencePiece (Kudo & Richardson 2018) treats text as a plain sequence of
Unicode characters, spaces included. A normalizer first rewrites the text (NFKC
by default), marks every space with "▁" (U+2581) and puts a "dummy prefix" "▁"
in front, so "Hello world" becomes "▁Hello▁world". Then one of two models cuts
it into pieces from the vocabulary. BPE starts from single characters and
repeatedly joins the adjacent pair whose joined piece has the highest score
(ties: leftmost). Unigram (Kudo 2018) gives each piece x a log-probability
score s(x) and takes the best segmentation, found by Viterbi:

    x_1..x_k = argmax_{x_1 ... x_k = text}  sum_i s(x_i)     (a character no piece covers: min_x s(x) - 10)

A character that is not in the vocabulary is <unk>; with byte fallback it is
spelled as its UTF-8 bytes instead, pieces <0x00>..<0xFF>. Decoding joins the
pieces, turns "▁" back into spaces and drops the leading dummy space.

One idea per module, read in this order: spm_model_file (the .model file: pieces,
types, trainer and normalizer specs), spm_normalizer, spm_unigram (textbook Viterbi,
then the float32-exact one), spm_bpe; this module puts them together. A unigram model
of nine pieces, written and read back ("▁He" + "llo" scores -2.5, "▁Hello" -4):

    >>> import tempfile
    >>> from tinytransformer.tokenizers.spm_model_file import NORMAL, UNKNOWN, model_file_bytes
    >>> pieces = [("<unk>", 0.0, UNKNOWN), ("▁He", -1.0, NORMAL), ("llo", -1.5, NORMAL), ("▁Hello", -4.0, NORMAL)]
    >>> pieces += [(c, -5.0, NORMAL) for c in "▁Helo"]
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder, "tiny.model")
    ...     _ = path.write_bytes(model_file_bytes(pieces))
    ...     sp = SentencePieceTokenizer(path)
    >>> sp.encode_as_pieces("Hello")
    ['▁He', 'llo']
    >>> sp.encode("Hello  Hell"), sp.decode(sp.encode("Hello  Hell"))
    ([1, 2, 1, 7, 7], 'Hello Hell')

Does not handle: the WORD and CHAR model types, sampling / n-best encodings,
the `pretokenization_delimiter` training option, offsets.
"""
from __future__ import annotations

import os
from pathlib import Path

from tinytransformer._validate import is_integer
from tinytransformer.tokenizers import spm_bpe as bpe
from tinytransformer.tokenizers import spm_unigram as unigram
from tinytransformer.tokenizers.spm_model_file import (BPE, BYTE, CONTROL, UNIGRAM, UNKNOWN, SentencePieceError,
                                                      Vocabulary, piece_to_byte, read_model_file)
from tinytransformer.tokenizers.spm_normalizer import SPACE, Normalizer, decode_bytes_like_sentencepiece

__all__ = ["SentencePieceTokenizer", "SentencePieceError"]


class SentencePieceTokenizer:
    """Encode and decode with a SentencePiece .model file (BPE or unigram), like the library."""

    def __init__(self, model_file: str | os.PathLike):
        file = Path(model_file)
        where = f"SentencePiece model {str(file)!r}"
        model = read_model_file(file, where)
        self.path = file
        self.model_type = model.model_type
        self.byte_fallback = model.byte_fallback
        self.unk_surface = model.unk_surface
        self.normalizer_name = model.normalizer.name
        self.vocabulary = Vocabulary(model.pieces, model.model_type, model.byte_fallback, where)
        self.pieces, self.scores, self.types = self.vocabulary.pieces, self.vocabulary.scores, self.vocabulary.types
        self.unk_id = self.vocabulary.unk_id
        spec = model.normalizer
        self.add_dummy_prefix = spec.add_dummy_prefix
        self.remove_extra_whitespaces = spec.remove_extra_whitespaces
        self.normalizer = Normalizer(spec.charsmap, add_dummy_prefix=spec.add_dummy_prefix,
                                     remove_extra_whitespaces=spec.remove_extra_whitespaces,
                                     escape_whitespaces=spec.escape_whitespaces,
                                     treat_whitespace_as_suffix=model.treat_whitespace_as_suffix,
                                     user_defined=self.vocabulary.user_defined, where=where)
        self.denormalizer = None
        if model.denormalizer is not None:
            spec = model.denormalizer
            self.denormalizer = Normalizer(spec.charsmap, add_dummy_prefix=spec.add_dummy_prefix,
                                           remove_extra_whitespaces=spec.remove_extra_whitespaces,
                                           escape_whitespaces=spec.escape_whitespaces, where=where)

    # ---- vocabulary -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def piece_to_id(self, piece: str) -> int:
        return self.vocabulary.piece_to_id(piece)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[self._check_id(i, 0)]

    def _check_id(self, i, position) -> int:
        if not is_integer(i):
            raise TypeError(f"ids[{position}] must be an int, got {type(i).__name__}")
        i = int(i)
        if not 0 <= i < len(self.pieces):
            raise ValueError(f"ids[{position}] = {i} is out of range; {self.path.name} has "
                             f"{len(self.pieces)} pieces (ids 0..{len(self.pieces) - 1})")
        return i

    # ---- encoding ------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The normalized text that the model segments ("Hello" -> "▁Hello")."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.normalizer.normalize(text)

    def encode_pieces_and_ids(self, text: str) -> list[tuple[str, int]]:
        """(piece, id) of text: normalize, segment (unigram or BPE), then byte fallback or one <unk> per run."""
        normalized = self.normalize(text)
        segments = (unigram if self.model_type == UNIGRAM else bpe).segment(normalized, self.vocabulary)
        out: list[tuple[str, int]] = []
        previous_unknown = False
        for piece, i in segments:
            unknown = i == self.unk_id
            if unknown and self.byte_fallback:
                out.extend((f"<0x{b:02X}>", self.vocabulary.byte_ids[b]) for b in piece.encode("utf-8"))
            elif unknown and previous_unknown:
                out[-1] = (out[-1][0] + piece, i)  # a run of unknowns is one <unk>
            else:
                out.append((piece, i))
            previous_unknown = unknown
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of text, equal to SentencePieceProcessor.encode(text) (no BOS/EOS)."""
        return [i for _, i in self.encode_pieces_and_ids(text)]

    def encode_as_pieces(self, text: str) -> list[str]:
        return [p for p, _ in self.encode_pieces_and_ids(text)]

    # ---- decoding ------------------------------------------------------------------------
    def decode(self, ids) -> str:
        """Text of ids, equal to SentencePieceProcessor.decode(ids)."""
        pieces = [self.pieces[self._check_id(i, k)] for k, i in enumerate(ids)]
        text: list[str] = []
        pending_bytes = bytearray()
        is_bos_ws, bos_ws_seen, text_empty = True, False, True
        strip_bos = self.add_dummy_prefix or self.remove_extra_whitespaces
        for piece in pieces:
            i = self.piece_to_id(piece)
            if self.types[i] == BYTE:
                pending_bytes.append(piece_to_byte(piece))
                continue
            if pending_bytes:
                text.append(decode_bytes_like_sentencepiece(bytes(pending_bytes)))
                text_empty = text_empty and not text[-1]
                pending_bytes.clear()
            if bos_ws_seen or not text_empty:
                is_bos_ws = False
            kind = self.types[i]
            bos_ws_seen = False
            if kind == CONTROL:
                surface = ""
            elif kind == UNKNOWN:
                surface = self.unk_surface if piece == self.pieces[i] else piece
            else:
                if is_bos_ws and strip_bos and piece.startswith(SPACE):
                    piece = piece[len(SPACE):]
                    bos_ws_seen = not self.remove_extra_whitespaces
                surface = piece.replace(SPACE, " ")
            text.append(surface)
            text_empty = text_empty and not surface
        if pending_bytes:
            text.append(decode_bytes_like_sentencepiece(bytes(pending_bytes)))
        result = "".join(text)
        if self.denormalizer is not None:
            result = self.denormalizer.normalize(result)
        return result

    def __repr__(self) -> str:
        kind = {UNIGRAM: "unigram", BPE: "bpe"}[self.model_type]
        return f"SentencePieceTokenizer({self.path.name!r}, type={kind}, vocab_size={self.vocab_size})"
