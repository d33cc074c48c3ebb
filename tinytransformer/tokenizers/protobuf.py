"""Just enough of the protobuf wire format to read (and write) a SentencePiece .model file.

A protobuf message is a sequence of (key, value) records. The key is a varint
`field_number << 3 | wire_type`; the wire type says how long the value is:

    0 varint (7 bits per byte, high bit = "more")   1 fixed 8 bytes
    2 length-delimited (varint length, then bytes)  5 fixed 4 bytes

Nested messages and strings are length-delimited; a repeated field is just the
same key appearing again. The reader knows nothing about the schema: it returns
{field_number: [raw values in order]} and the caller interprets them.

    >>> parse_message(bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69]), "example")
    {1: [150], 2: [b'hi']}
    >>> encode_field(1, 150) + encode_field(2, "hi") == bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69])
    True

Does not handle: groups (wire types 3 and 4, deprecated), packed repeated
fields (the caller unpacks them), writing 8-byte or signed-zigzag fields.
"""
from __future__ import annotations

import struct

__all__ = ["ProtobufError", "parse_message", "as_int32", "as_float", "as_bool", "as_bytes", "as_str",
           "encode_varint", "encode_field"]


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ProtobufError(f"{where}: truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"{where}: varint longer than 10 bytes at byte {pos}")


def parse_message(data: bytes, where: str = "message") -> dict[int, list]:
    """Split one message into {field_number: [values]}: int for varint/fixed, bytes for length-delimited."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, where)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtobufError(f"{where}: field number 0 at byte {pos} (not a protobuf message)")
        if wire_type == 0:
            value, pos = _varint(data, pos, where)
        elif wire_type == 1:
            if pos + 8 > len(data):
                raise ProtobufError(f"{where}: truncated 8-byte field {number} at byte {pos}")
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire_type == 2:
            length, pos = _varint(data, pos, where)
            if pos + length > len(data):
                raise ProtobufError(f"{where}: field {number} claims {length} bytes at byte {pos} "
                                    f"but only {len(data) - pos} remain (truncated file?)")
            value, pos = data[pos:pos + length], pos + length
        elif wire_type == 5:
            if pos + 4 > len(data):
                raise ProtobufError(f"{where}: truncated 4-byte field {number} at byte {pos}")
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise ProtobufError(f"{where}: unsupported wire type {wire_type} for field {number} at byte {pos}")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields, number, default):
    values = fields.get(number)
    return values[-1] if values else default  # protobuf: the last occurrence of a scalar wins


def as_int32(fields, number, default: int) -> int:
    value = _last(fields, number, None)
    if value is None:
        return default
    if not isinstance(value, int):
        raise ProtobufError(f"field {number} should be a varint")
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def as_bool(fields, number, default: bool) -> bool:
    value = _last(fields, number, None)
    if value is None:
        return default
    if not isinstance(value, int):
        raise ProtobufError(f"field {number} should be a varint")
    return bool(value)


def as_float(fields, number, default: float) -> float:
    value = _last(fields, number, None)
    if value is None:
        return default
    if not isinstance(value, int) or value >= 1 << 32:
        raise ProtobufError(f"field {number} should be a 4-byte float")
    return struct.unpack("<f", value.to_bytes(4, "little"))[0]


def as_bytes(fields, number, default: bytes) -> bytes:
    value = _last(fields, number, None)
    if value is None:
        return default
    if not isinstance(value, bytes):
        raise ProtobufError(f"field {number} should be length-delimited")
    return value


def as_str(fields, number, default: str) -> str:
    value = as_bytes(fields, number, None)
    if value is None:
        return default
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError(f"field {number} should be a UTF-8 string") from None


# ---- writing: the inverse, for the few field kinds a .model file uses ----------------------
def encode_varint(n: int) -> bytes:
    """n (0 <= n < 2**64) as a varint: 7 bits per byte, low bits first, high bit = "more"."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_field(number: int, value) -> bytes:
    """One record: str/bytes length-delimited (2), float as 4 bytes (5), int/bool as a varint (0).

    A negative int is written as its 64-bit two's complement, as protobuf writes an int32.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", errors="surrogatepass")
    if isinstance(value, bytes):
        return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value
    if isinstance(value, float):
        return encode_varint(number << 3 | 5) + struct.pack("<f", value)
    return encode_varint(number << 3) + encode_varint(int(value) & (2**64 - 1))
