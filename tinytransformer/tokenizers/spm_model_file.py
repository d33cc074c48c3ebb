"""The SentencePiece .model file: a protobuf ModelProto, read into plain values and checked.

A .model file is one protobuf message (sentencepiece_model.proto). The fields that
decide ids, by field number:

    ModelProto        1 pieces (repeated)   2 trainer_spec   3 normalizer_spec   5 denormalizer_spec
    SentencePiece     1 piece (str)   2 score (float32)   3 type: NORMAL 1, UNKNOWN 2, CONTROL 3,
                                                                  USER_DEFINED 4, UNUSED 5, BYTE 6
    TrainerSpec       3 model_type (UNIGRAM 1, BPE 2)   24 treat_whitespace_as_suffix
                      35 byte_fallback   44 unk_surface
    NormalizerSpec    1 name   2 precompiled_charsmap   3 add_dummy_prefix
                      4 remove_extra_whitespaces   5 escape_whitespaces

A piece's id is its position in the list. The models segment text into NORMAL,
USER_DEFINED (always kept whole) and UNUSED pieces; UNKNOWN (<unk>, exactly one),
CONTROL (<s>, </s>) and BYTE pieces (<0x00>..<0xFF>, all 256 of them when
byte_fallback is on) are reached only by id. `Vocabulary` holds the pieces so checked,
with the tables the models look pieces up in.

    >>> data = model_file_bytes([("<unk>", 0.0, UNKNOWN), ("▁a", -1.0, NORMAL)])
    >>> model = parse_model_file(data, "tiny.model")
    >>> model.pieces, model.model_type, model.normalizer.add_dummy_prefix
    ([('<unk>', 0.0, 2), ('▁a', -1.0, 1)], 1, True)
    >>> Vocabulary(model.pieces, UNIGRAM, byte_fallback=False, where="tiny.model").piece_to_id("▁a")
    1

Does not handle: the fields that only training reads (vocab_size, character_coverage...),
self-test data, writing anything but the fields above.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tinytransformer.tokenizers import protobuf as pb
from tinytransformer.tokenizers.piece_trie import PieceTrie
from tinytransformer.tokenizers.untrusted_files import read_untrusted

__all__ = ["SentencePieceError", "NormalizerSpec", "ModelFile", "read_model_file", "parse_model_file",
           "model_file_bytes", "Vocabulary", "round_float32", "piece_to_byte",
           "NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE", "UNIGRAM", "BPE"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
FLT_MIN = 1.1754943508222875e-38  # the library starts max_score at FLT_MIN, not at -inf
FLT_MAX = 3.4028234663852886e38
MAX_FILE_BYTES = 256 * 1024 * 1024


class SentencePieceError(ValueError):
    """A .model file that cannot be read or is not a valid SentencePiece model."""


_FLOAT32 = struct.Struct("<f")


def round_float32(x: float, _pack=_FLOAT32.pack, _unpack=_FLOAT32.unpack) -> float:
    """Round a Python float to the nearest float32 (what `float` arithmetic in C++ keeps).

    Past the float32 range the result is +-inf, as in C++ (struct raises OverflowError instead).

    >>> round_float32(0.1), round_float32(1e39)
    (0.10000000149011612, inf)
    """
    try:
        return _unpack(_pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def piece_to_byte(piece: str) -> int:
    """The byte a BYTE piece stands for ("<0x41>" -> 65), or -1 when piece is not <0x00>..<0xFF>."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return -1
    return -1


@dataclass(frozen=True)
class NormalizerSpec:
    """A NormalizerSpec (or the denormalizer's): the charsmap rules and the whitespace flags."""
    name: str = ""
    charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


@dataclass(frozen=True)
class ModelFile:
    """What a .model file says: pieces [(piece, score, type)] and the specs that decide ids."""
    pieces: list
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_surface: str = " \u2047 "
    treat_whitespace_as_suffix: bool = False
    normalizer: NormalizerSpec = field(default_factory=NormalizerSpec)
    denormalizer: NormalizerSpec | None = None  # None: no denormalization rules


def read_model_file(file: Path, where: str) -> ModelFile:
    """parse_model_file of a file's bytes (a regular file of at most MAX_FILE_BYTES)."""
    return parse_model_file(read_untrusted(file, where, MAX_FILE_BYTES, SentencePieceError), where)


def _normalizer_spec(fields: dict) -> NormalizerSpec:
    return NormalizerSpec(name=pb.as_str(fields, 1, ""), charsmap=pb.as_bytes(fields, 2, b""),
                          add_dummy_prefix=pb.as_bool(fields, 3, True),
                          remove_extra_whitespaces=pb.as_bool(fields, 4, True),
                          escape_whitespaces=pb.as_bool(fields, 5, True))


def parse_model_file(data: bytes, where: str) -> ModelFile:
    """The ModelFile of a .model file's bytes; SentencePieceError naming `where` when it is not one."""
    try:
        top = pb.parse_message(data, where)
        unknown = set(top) - {1, 2, 3, 4, 5}
        if not top.get(1):
            raise SentencePieceError(f"{where}: no pieces found; this is not a SentencePiece .model file")
        if unknown:
            raise SentencePieceError(f"{where}: unexpected top-level fields {sorted(unknown)}; "
                                     "this is not a SentencePiece .model file")
        pieces = []
        for k, raw in enumerate(top[1]):
            if not isinstance(raw, bytes):
                raise SentencePieceError(f"{where}: piece {k} is not a message")
            fields = pb.parse_message(raw, f"{where}: piece {k}")
            pieces.append((pb.as_str(fields, 1, ""), pb.as_float(fields, 2, 0.0), pb.as_int32(fields, 3, NORMAL)))
        trainer = pb.parse_message(pb.as_bytes(top, 2, b""), f"{where}: trainer_spec")
        normalizer = pb.parse_message(pb.as_bytes(top, 3, b""), f"{where}: normalizer_spec")
        denormalizer = pb.parse_message(pb.as_bytes(top, 5, b""), f"{where}: denormalizer_spec")
        model = ModelFile(pieces, model_type=pb.as_int32(trainer, 3, UNIGRAM),
                          byte_fallback=pb.as_bool(trainer, 35, False),
                          unk_surface=pb.as_str(trainer, 44, " \u2047 "),
                          treat_whitespace_as_suffix=pb.as_bool(trainer, 24, False),
                          normalizer=_normalizer_spec(normalizer),
                          denormalizer=_normalizer_spec(denormalizer) if pb.as_bytes(denormalizer, 2, b"") else None)
    except pb.ProtobufError as error:
        raise SentencePieceError(f"{where} is corrupt: {error}") from None
    if model.model_type not in (UNIGRAM, BPE):
        names = {3: "WORD", 4: "CHAR"}
        raise SentencePieceError(f"{where} has model type {names.get(model.model_type, model.model_type)}; "
                                 "only UNIGRAM (1) and BPE (2) are supported")
    return model


def model_file_bytes(pieces, *, model_type: int = UNIGRAM, byte_fallback: bool = False,
                     normalizer: NormalizerSpec = NormalizerSpec(name="identity")) -> bytes:
    """A .model file holding pieces [(piece, score, type)]: the inverse of parse_model_file.

    The default normalizer is the identity (no charsmap rules, the whitespace rules on).
    """
    body = b"".join(pb.encode_field(1, pb.encode_field(1, piece) + pb.encode_field(2, float(score))
                                    + pb.encode_field(3, kind)) for piece, score, kind in pieces)
    trainer = pb.encode_field(3, model_type) + pb.encode_field(35, byte_fallback)
    spec = (pb.encode_field(1, normalizer.name) + pb.encode_field(3, normalizer.add_dummy_prefix)
            + pb.encode_field(4, normalizer.remove_extra_whitespaces) + pb.encode_field(5, normalizer.escape_whitespaces))
    if normalizer.charsmap:
        spec += pb.encode_field(2, normalizer.charsmap)
    return body + pb.encode_field(2, trainer) + pb.encode_field(3, spec)


class Vocabulary:
    """The pieces of a model file, checked, with the tables that encoding looks pieces up in.

    normal: NORMAL, USER_DEFINED and UNUSED pieces -> id (what the models match; `trie` finds
    them in text), reserved: CONTROL, UNKNOWN and BYTE pieces -> id. Scores are rounded to
    float32 once here, as the library holds them.
    """

    def __init__(self, pieces, model_type: int, byte_fallback: bool, where: str):
        self.pieces = [p for p, _, _ in pieces]
        self.scores = [round_float32(s) for _, s, _ in pieces]
        self.types = [t for _, _, t in pieces]
        self.normal: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.user_defined: list[str] = []
        self.unk_id = -1
        bytes_found = set()
        for i, (piece, _, kind) in enumerate(pieces):
            if not piece:
                raise SentencePieceError(f"{where}: piece {i} is empty")
            if kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
                raise SentencePieceError(f"{where}: piece {i} ({piece!r}) has unknown type {kind}")
            table = self.normal if kind in (NORMAL, USER_DEFINED, UNUSED) else self.reserved
            if piece in table:
                raise SentencePieceError(f"{where}: piece {piece!r} is defined twice")
            table[piece] = i
            if kind == USER_DEFINED:
                self.user_defined.append(piece)
            elif kind == UNKNOWN:
                if self.unk_id >= 0:
                    raise SentencePieceError(f"{where}: more than one unknown piece")
                self.unk_id = i
            elif kind == BYTE:
                if not byte_fallback:
                    raise SentencePieceError(f"{where}: byte piece {piece!r} found but byte_fallback is off")
                value = piece_to_byte(piece)
                if value < 0:
                    raise SentencePieceError(f"{where}: byte piece {piece!r} must be <0x00>..<0xFF>")
                bytes_found.add(value)
        if self.unk_id < 0:
            raise SentencePieceError(f"{where}: no unknown piece (<unk>) is defined")
        if model_type == UNIGRAM and not self.normal:
            raise SentencePieceError(f"{where}: a unigram model needs a NORMAL, USER_DEFINED or UNUSED piece "
                                     "and this one has none")
        if byte_fallback and len(bytes_found) != 256:
            raise SentencePieceError(f"{where}: byte_fallback is on but only {len(bytes_found)} of the 256 "
                                     "byte pieces are defined")
        self.byte_ids = [self.reserved.get(f"<0x{b:02X}>", self.unk_id) for b in range(256)]
        normal_scores = [s for s, t in zip(self.scores, self.types) if t == NORMAL]
        self.min_score = min(normal_scores, default=FLT_MAX)
        self.max_score = max(normal_scores + [FLT_MIN])
        self.trie = PieceTrie(self.normal)  # the pieces a lattice edge or a BPE symbol can be
        self.user_trie = PieceTrie({p: self.normal[p] for p in self.user_defined})

    def piece_to_id(self, piece: str) -> int:
        """The id of piece; unk_id when the vocabulary does not hold it."""
        return self.reserved.get(piece, self.normal.get(piece, self.unk_id))

    def __len__(self) -> int:
        return len(self.pieces)
