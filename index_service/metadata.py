"""Typed metadata values: strings, 64-bit integers, finite floats and booleans; their limits, their wire forms
(the old string map and the typed map) and how the catalog stores them."""

import json
import math
from typing import Union

from imgsim.v1 import index_pb2

Scalar = Union[str, int, float, bool]
MAX_KEYS = 64
MAX_BYTES = 4096
MAX_KEY_BYTES = 128
MAX_STRING_BYTES = 1024
INT64 = (-(2**63), 2**63 - 1)
# How the catalog files a value, so that a filter on the string "3" never finds the int 3, while ints and
# floats compare as numbers.
STRING, NUMBER, BOOLEAN = "s", "n", "b"


class BadMetadata(ValueError):
    """Metadata outside the documented limits."""


def value_type(value: Scalar) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, (int, float)):
        return NUMBER
    return STRING


def stored_value(value: Scalar):
    """The value as the catalog's index keeps it (booleans as 0/1 under their own type)."""
    return int(value) if isinstance(value, bool) else value


def as_text(value: Scalar) -> str:
    """The value in the string map that clients predating typed values read."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def from_proto_value(message: index_pb2.Value, where: str) -> Scalar:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise BadMetadata(f"{where}: the value is empty (set string_value, int_value, float_value or bool_value)")
    value = getattr(message, kind)
    check_value(value, where)
    return value


def to_proto_value(value: Scalar) -> index_pb2.Value:
    if isinstance(value, bool):
        return index_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return index_pb2.Value(int_value=value)
    if isinstance(value, float):
        return index_pb2.Value(float_value=value)
    return index_pb2.Value(string_value=value)


def check_value(value: Scalar, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadMetadata(f"{where}: float values must be finite, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise BadMetadata(f"{where}: integers must fit in 64 bits")
    if isinstance(value, str) and len(value.encode()) > MAX_STRING_BYTES:
        raise BadMetadata(f"{where}: string value is {len(value.encode())} bytes, over the limit of "
                          f"{MAX_STRING_BYTES}")


def check_key(key: str, where: str) -> None:
    size = len(key.encode())
    if not 1 <= size <= MAX_KEY_BYTES:
        raise BadMetadata(f"{where}: metadata key {key[:40]!r} is {size} bytes; keys take 1 to {MAX_KEY_BYTES}")
    if key.startswith("_"):
        raise BadMetadata(f"{where}: metadata key {key[:40]!r} starts with '_', which is reserved")


def from_maps(strings, typed, where: str) -> dict[str, Scalar]:
    """An item's metadata from its string and typed maps, checked against the limits."""
    if not strings and not typed:
        return {}
    both = set(strings) & set(typed)
    if both:
        raise BadMetadata(f"{where}: key {sorted(both)[0]!r} is in both metadata and typed_metadata")
    values: dict[str, Scalar] = dict(strings)
    for key, value in typed.items():
        values[key] = from_proto_value(value, f"{where}, metadata key {key[:40]!r}")
    check(values, where)
    return values


def check(values: dict[str, Scalar], where: str) -> None:
    size = 0
    for key, value in values.items():
        check_key(key, where)
        check_value(value, f"{where}, metadata key {key[:40]!r}")
        size += len(key.encode()) + (len(value.encode()) if isinstance(value, str) else 8)
    if len(values) > MAX_KEYS or size > MAX_BYTES:
        raise BadMetadata(f"{where}: metadata has {len(values)} keys and {size} bytes, over the limits of "
                          f"{MAX_KEYS} keys and {MAX_BYTES} bytes")


def fill_proto(values: dict[str, Scalar], text_map, typed_map) -> None:
    """Writes metadata into a reply's two maps: every key as text, and every key typed."""
    for key, value in values.items():
        text_map[key] = as_text(value)
        typed_map[key].CopyFrom(to_proto_value(value))


def encode(values: dict[str, Scalar]) -> str:
    """JSON keeps the four kinds apart (3, 3.0, "3", true), which is all the catalog needs."""
    return json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":")) if values else "{}"


def decode(text: str) -> dict[str, Scalar]:
    return json.loads(text)
