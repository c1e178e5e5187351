"""Checks request fields against the documented limits and turns them into plain data."""

import numpy as np

from imgsim import vectors
from index_service.collection import NewItem
from index_service.errors import DimensionMismatch, InvalidArgument
from imgsim.v1 import index_pb2

MAX_ID_BYTES = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 4096
MAX_ITEMS_PER_MESSAGE = 4096
MAX_DELETE_IDS = 65536
MAX_GET_IDS = 4096
MAX_QUERIES = 1024
MAX_K = 1000


def check_vector(message, label: str) -> np.ndarray:
    try:
        vector = vectors.from_proto(message)
    except ValueError as err:
        raise InvalidArgument(f"{label}: {err}") from None
    if not np.all(np.isfinite(vector)):
        raise InvalidArgument(f"{label}: vector holds NaN or Inf")
    if not np.any(vector):
        raise InvalidArgument(f"{label}: vector is all zeros, so its cosine to anything is undefined")
    return vector


def check_id(item_id: str, label: str) -> None:
    if not item_id:
        raise InvalidArgument(f"{label}: id is empty")
    if len(item_id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"{label}: id is {len(item_id.encode())} bytes, over the limit of {MAX_ID_BYTES}")


def check_metadata(metadata: dict[str, str], label: str) -> dict[str, str]:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if len(metadata) > MAX_METADATA_ENTRIES or size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{label}: metadata has {len(metadata)} entries and {size} bytes, over the limits of "
                              f"{MAX_METADATA_ENTRIES} entries and {MAX_METADATA_BYTES} bytes")
    return dict(metadata)


def item_label(position: int, item) -> str:
    return f"item {position}" + (f" (id {item.id[:64]!r})" if item.id else "")


def upsert_items(request: index_pb2.UpsertRequest, first_position: int) -> list[NewItem]:
    """The items of one Upsert message, all checked; positions count from the start of the stream."""
    if not request.items:
        raise InvalidArgument(f"upsert message at item {first_position} carries no items")
    if len(request.items) > MAX_ITEMS_PER_MESSAGE:
        raise InvalidArgument(f"{len(request.items)} items in one message, over the limit of {MAX_ITEMS_PER_MESSAGE}")
    matrix = vectors_of(request.items, first_position)
    items = []
    for offset, (item, vector) in enumerate(zip(request.items, matrix)):
        # Labels are built only for a suspect item: formatting thousands per message costs real time. An id
        # of at most 64 characters is at most 256 bytes of UTF-8, so only longer ones need measuring.
        if not item.id or len(item.id) > MAX_ID_BYTES // 4:
            check_id(item.id, item_label(first_position + offset, item))
        metadata = dict(item.metadata) if item.metadata else {}
        if metadata:
            check_metadata(metadata, item_label(first_position + offset, item))
        items.append(NewItem(item.id, vector, metadata))
    return items


def vectors_of(items, first_position: int) -> np.ndarray:
    """All the items' vectors as one matrix, checked in one pass; the first bad one is named."""
    raw = [item.vector.float32_le for item in items]
    if len({len(data) for data in raw}) == 1 and raw[0] and len(raw[0]) % 4 == 0:
        matrix = np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), -1)
        if (np.isfinite(matrix).all(axis=1) & matrix.any(axis=1)).all():
            return matrix
    # Something is wrong: check one by one, so the message names the first bad item and what is wrong.
    checked = []
    for offset, item in enumerate(items):
        label = item_label(first_position + offset, item)
        vector = check_vector(item.vector, label)
        if checked and len(vector) != len(checked[0]):
            raise DimensionMismatch(f"{label}: dimension {len(vector)} differs from the message's first item "
                                    f"({len(checked[0])})")
        checked.append(vector)
    return np.stack(checked)


def request_ids(request, verb: str, limit: int) -> list[str]:
    """The ids of a Delete or Get request, checked."""
    if not request.ids:
        raise InvalidArgument(f"no ids to {verb}")
    if len(request.ids) > limit:
        raise InvalidArgument(f"{len(request.ids)} ids in one call, over the limit of {limit}")
    for position, item_id in enumerate(request.ids):
        check_id(item_id, f"id {position}")
    return list(request.ids)


def search_queries(request: index_pb2.SearchRequest) -> tuple[np.ndarray, list[tuple[str, list[str]]]]:
    """The queries as one float32 matrix, and the filter as (key, accepted values) pairs."""
    if not 1 <= request.k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {request.k}")
    if not request.queries:
        raise InvalidArgument("no query vectors in the request")
    if len(request.queries) > MAX_QUERIES:
        raise InvalidArgument(f"{len(request.queries)} queries in one call, over the limit of {MAX_QUERIES}")
    queries = [check_vector(q, f"query {i}") for i, q in enumerate(request.queries)]
    for i, query in enumerate(queries):
        if len(query) != len(queries[0]):
            raise DimensionMismatch(f"query {i}: dimension {len(query)} differs from query 0 ({len(queries[0])})")
    conditions = []
    for i, condition in enumerate(request.filter):
        if not condition.key:
            raise InvalidArgument(f"filter condition {i}: key is empty")
        if not condition.any_of:
            raise InvalidArgument(f"filter condition {i} (key {condition.key!r}): any_of is empty, so nothing matches")
        conditions.append((condition.key, list(condition.any_of)))
    return np.stack(queries), conditions
