"""Typed metadata and filters for the SDK: plain Python values in, protobuf out (and back).

A filter is a dict; its keys must all hold (AND):

    {"label": "cat"}                       equals (a string is one value, never a list of characters)
    {"label": ["cat", "dog"]}              any of
    {"n": 3}, {"ok": True}, {"x": 0.5}     equals, typed: the int 3 does not match the string "3"
    {"n": {"gte": 3, "lt": 10}}            a numeric range (gt, gte, lt, lte)
    {"label": {"ne": "cat"}}               not equal; {"nin": [...]}: none of; {"eq": ...}, {"in": [...]}
    {"$any": [{...}, {...}]}               at least one holds; "$all": every one; "$not": {...}
"""

import math
from typing import Any

from imgsim.v1 import index_pb2

RANGE_OPS = ("gt", "gte", "lt", "lte")
Scalar = str | int | float | bool


def to_value(value: Scalar) -> index_pb2.Value:
    if isinstance(value, bool):
        return index_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return index_pb2.Value(int_value=value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metadata floats must be finite, got {value}")
        return index_pb2.Value(float_value=value)
    if isinstance(value, str):
        return index_pb2.Value(string_value=value)
    if hasattr(value, "item"):  # a numpy scalar
        return to_value(value.item())
    raise TypeError(f"metadata values are str, int, float or bool, not {type(value).__name__} ({value!r})")


def from_value(message: index_pb2.Value) -> Scalar:
    kind = message.WhichOneof("kind")
    return getattr(message, kind) if kind else None


def fill_metadata(item: index_pb2.Item | index_pb2.Metadata, metadata: dict[str, Any] | None) -> None:
    """Strings go in the string map (readable by every server version), other kinds in the typed map."""
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys are strings, not {type(key).__name__} ({key!r})")
        if isinstance(value, str):
            item.metadata[key] = value
        else:
            item.typed_metadata[key].CopyFrom(to_value(value))


def metadata_of(message) -> dict[str, Scalar]:
    """A reply's metadata with its types (falling back to the string map of older servers)."""
    values: dict[str, Scalar] = dict(message.metadata)
    for key, value in message.typed_metadata.items():
        values[key] = from_value(value)
    return values


def to_filter(where: dict[str, Any] | None) -> index_pb2.Filter | None:
    if where is None:
        return None
    if not isinstance(where, dict):
        raise TypeError(f"where must be a dict, not {type(where).__name__}")
    parts = [_part(key, test) for key, test in where.items()]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else index_pb2.Filter(all=index_pb2.FilterList(filters=parts))


def _part(key: str, test: Any) -> index_pb2.Filter:
    if key in ("$all", "$any"):
        if not isinstance(test, (list, tuple)) or not test:
            raise ValueError(f"{key} takes a non-empty list of filters")
        combined = index_pb2.FilterList(filters=[to_filter(f) for f in test])
        return index_pb2.Filter(all=combined) if key == "$all" else index_pb2.Filter(any=combined)
    if key == "$not":
        return index_pb2.Filter(**{"not": to_filter(test)})
    if isinstance(test, dict):
        return _operators(key, test)
    if isinstance(test, (list, tuple, set, frozenset)):
        return _any_of(key, list(test))
    return index_pb2.Filter(condition=index_pb2.Condition(key=key, equals=to_value(test)))


def _any_of(key: str, values: list) -> index_pb2.Filter:
    if not values:
        raise ValueError(f"where[{key!r}]: an empty list of values matches nothing")
    return index_pb2.Filter(condition=index_pb2.Condition(
        key=key, any_of=index_pb2.ValueList(values=[to_value(v) for v in values])))


def _operators(key: str, ops: dict) -> index_pb2.Filter:
    unknown = set(ops) - {"eq", "ne", "in", "nin", *RANGE_OPS}
    if unknown or not ops:
        raise ValueError(f"where[{key!r}]: operators are eq, ne, in, nin, gt, gte, lt, lte; got {sorted(ops)}")
    parts = []
    bounds = {op: float(ops[op]) for op in RANGE_OPS if op in ops}
    if bounds:
        parts.append(index_pb2.Filter(condition=index_pb2.Condition(key=key, range=index_pb2.Range(**bounds))))
    if "eq" in ops:
        parts.append(_part(key, ops["eq"]))
    if "in" in ops:
        parts.append(_any_of(key, list(ops["in"])))
    if "ne" in ops:
        parts.append(index_pb2.Filter(**{"not": _part(key, ops["ne"])}))
    if "nin" in ops:
        parts.append(index_pb2.Filter(**{"not": _any_of(key, list(ops["nin"]))}))
    return parts[0] if len(parts) == 1 else index_pb2.Filter(all=index_pb2.FilterList(filters=parts))
