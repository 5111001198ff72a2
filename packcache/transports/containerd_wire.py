"""containerd's API messages in protobuf's wire format, written and read here.

The few messages packcache sends and reads are strings, integers, maps of strings and nested
messages: a short encoder and decoder serve them, where importing the protobuf runtime and
generated classes would cost more than a load through containerd takes otherwise. Field
numbers are containerd's (api/services/*/v1/*.proto, api/types/descriptor.proto); the .proto
subset in containerd_api/ states them, and a test checks this module against classes
generated from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Wire types (protobuf encoding spec).
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# A decoded message: each field number's values, in the order sent.
Fields = dict[int, list[int | bytes]]


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as protobuf writes it: two's complement in ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def integer(number: int, value: int) -> bytes:
    """An int64, bool or enum field; nothing for 0, its default, as protobuf writes it."""
    return _key(number, VARINT) + _varint(int(value)) if value else b""


def data(number: int, value: bytes) -> bytes:
    """A bytes or embedded message field (an empty string is written: a message may be)."""
    return _key(number, LENGTH) + _varint(len(value)) + value


def text(number: int, value: str) -> bytes:
    """A string field; nothing for "", its default."""
    return data(number, value.encode()) if value else b""


def texts(number: int, values: Iterable[str]) -> bytes:
    """A repeated string field."""
    return b"".join(data(number, value.encode()) for value in values)


def string_map(number: int, mapping: Mapping[str, str]) -> bytes:
    """A map<string, string> field: one entry message (key 1, value 2) per pair."""
    return b"".join(
        data(number, text(1, key) + text(2, value)) for key, value in sorted(mapping.items())
    )


def _read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise WireError("a varint runs past the message")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def decode(buffer: bytes) -> Fields:
    """Every field of a message, by number, in the order sent: integers for varint and fixed
    fields, bytes for length-delimited ones (strings, bytes, messages, map entries)."""
    fields: Fields = {}
    position = 0
    while position < len(buffer):
        key, position = _read_varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, position = _read_varint(buffer, position)
        elif wire_type == LENGTH:
            length, position = _read_varint(buffer, position)
            if position + length > len(buffer):
                raise WireError(f"field {number} runs past the message")
            value, position = buffer[position : position + length], position + length
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            if position + width > len(buffer):
                raise WireError(f"field {number} runs past the message")
            value = int.from_bytes(buffer[position : position + width], "little")
            position += width
        else:
            raise WireError(f"field {number} has wire type {wire_type}, which proto3 never sends")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields: Fields, number: int, default: int | bytes):
    values = fields.get(number)
    return values[-1] if values else default  # protobuf: the last one sent wins


def get_int(fields: Fields, number: int) -> int:
    value = _last(fields, number, 0)
    if not isinstance(value, int):
        raise WireError(f"field {number} is not an integer")
    return value - (1 << 64) if value >= 1 << 63 else value


def get_bytes(fields: Fields, number: int) -> bytes:
    value = _last(fields, number, b"")
    if not isinstance(value, bytes):
        raise WireError(f"field {number} is not length-delimited")
    return value


def get_text(fields: Fields, number: int) -> str:
    try:
        return get_bytes(fields, number).decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"field {number} is not UTF-8") from exc


def get_message(fields: Fields, number: int) -> Fields:
    return decode(get_bytes(fields, number))


def get_messages(fields: Fields, number: int) -> list[Fields]:
    """A repeated message field."""
    out = []
    for value in fields.get(number, []):
        if not isinstance(value, bytes):
            raise WireError(f"field {number} is not length-delimited")
        out.append(decode(value))
    return out


def get_map(fields: Fields, number: int) -> dict[str, str]:
    """A map<string, string> field."""
    return {get_text(entry, 1): get_text(entry, 2) for entry in get_messages(fields, number)}
