"""Metadata filters as plain data: conditions combined with all / any / not, checked against the limits.

The catalog answers each condition with the sorted rows that pass it; the combinations are set operations
on those arrays (`not` is taken against the rows the collection holds).
"""

from dataclasses import dataclass
from typing import Union

from imgsim.v1 import index_pb2
from index_service.metadata import BadMetadata, Scalar, from_proto_value

MAX_DEPTH = 16
MAX_CONDITIONS = 256
MAX_VALUES = 1024


class BadFilter(ValueError):
    """A filter outside the documented form or limits."""


@dataclass(frozen=True)
class Equals:
    key: str
    values: tuple[Scalar, ...]  # any of them


@dataclass(frozen=True)
class InRange:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class All:
    parts: tuple["Filter", ...]


@dataclass(frozen=True)
class Any:
    parts: tuple["Filter", ...]


@dataclass(frozen=True)
class Not:
    part: "Filter"


Filter = Union[Equals, InRange, All, Any, Not]


def from_proto(message: index_pb2.Filter) -> Filter:
    counter = [0]
    return _parse(message, depth=1, counter=counter, where="filter")


def _parse(message: index_pb2.Filter, depth: int, counter: list[int], where: str) -> Filter:
    if depth > MAX_DEPTH:
        raise BadFilter(f"{where}: nested deeper than {MAX_DEPTH} levels")
    kind = message.WhichOneof("kind")
    if kind is None:
        raise BadFilter(f"{where}: empty (set condition, all, any or not)")
    if kind == "not":
        return Not(_parse(getattr(message, "not"), depth + 1, counter, f"{where}.not"))
    if kind in ("all", "any"):
        parts = getattr(message, kind).filters
        if not parts:
            raise BadFilter(f"{where}.{kind}: lists no filters")
        parsed = tuple(_parse(p, depth + 1, counter, f"{where}.{kind}[{i}]") for i, p in enumerate(parts))
        return All(parsed) if kind == "all" else Any(parsed)
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise BadFilter(f"the filter has more than {MAX_CONDITIONS} conditions")
    return _condition(message.condition, where)


def _condition(condition: index_pb2.Condition, where: str) -> Filter:
    if not condition.key:
        raise BadFilter(f"{where}: condition has no key")
    label = f"{where} (key {condition.key[:40]!r})"
    test = condition.WhichOneof("test")
    try:
        if test == "equals":
            return Equals(condition.key, (from_proto_value(condition.equals, label),))
        if test == "any_of":
            values = condition.any_of.values
            if not values:
                raise BadFilter(f"{label}: any_of lists no values, so nothing could match")
            if len(values) > MAX_VALUES:
                raise BadFilter(f"{label}: any_of lists {len(values)} values, over the limit of {MAX_VALUES}")
            return Equals(condition.key, tuple(from_proto_value(v, label) for v in values))
    except BadMetadata as err:
        raise BadFilter(str(err)) from None
    if test == "range":
        bounds = {name: getattr(condition.range, name) for name in ("gt", "gte", "lt", "lte")
                  if condition.range.HasField(name)}
        if not bounds:
            raise BadFilter(f"{label}: range has no bound (set gt, gte, lt or lte)")
        if any(value != value or value in (float("inf"), float("-inf")) for value in bounds.values()):
            raise BadFilter(f"{label}: range bounds must be finite")
        return InRange(condition.key, **bounds)
    raise BadFilter(f"{label}: condition has no test (set equals, any_of or range)")


def from_legacy(conditions) -> list[Filter]:
    """The deprecated SearchRequest.filter: string any-of conditions, all of which must hold."""
    parsed = []
    for i, condition in enumerate(conditions):
        if not condition.key:
            raise BadFilter(f"filter condition {i}: key is empty")
        if not condition.any_of:
            raise BadFilter(f"filter condition {i} (key {condition.key!r}): any_of is empty, so nothing matches")
        parsed.append(Equals(condition.key, tuple(condition.any_of)))
    return parsed


def combined(parts: list[Filter]) -> Filter | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def keys(node: Filter) -> set[str]:
    if isinstance(node, (Equals, InRange)):
        return {node.key}
    if isinstance(node, Not):
        return keys(node.part)
    return set().union(*(keys(part) for part in node.parts))
