"""Checks request fields against the documented limits and turns them into plain data. Imports neither
FAISS nor SQLite: what a request may carry is decided before any of the index is touched."""

import numpy as np

from imgsim.v1 import index_pb2
from index_service import filters as flt
from index_service import metadata as meta
from index_service.catalog import NewRecords
from index_service.config import MAX_DIMENSION, PARAM_RANGES, SEARCH_PARAMS
from index_service.errors import DimensionMismatch, InvalidArgument
from index_service.id_table import id_hashes
from index_service.exact import MAX_NORM, MIN_NORM, norms, unit_rows
from index_service.vector_file import crc32_rows
from index_service.writes import Items

MAX_ID_BYTES = 256
MAX_ITEMS_PER_MESSAGE = 4096
MAX_ITEMS_PER_CALL = 16384
MAX_VECTOR_BYTES_PER_CALL = 64 * 1024 * 1024
MAX_DELETE_IDS = 65536
MAX_GET_IDS = 4096
MAX_QUERIES = 1024
MAX_K = 1000
MAX_SCROLL = 4096
DEFAULT_SCROLL = 256


def item_label(position: int, item_id: str) -> str:
    return f"item {position}" + (f" (id {item_id[:64]!r})" if item_id else "")


def check_id(item_id: str, label: str) -> None:
    if not item_id:
        raise InvalidArgument(f"{label}: id is empty")
    size = len(item_id.encode())
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"{label}: id is {size} bytes, over the limit of {MAX_ID_BYTES}")


def checked_rows(matrix: np.ndarray, labels) -> np.ndarray:
    """The float64 norms of a (n, d) float32 matrix's rows, each finite and inside [MIN_NORM, MAX_NORM] (NaN
    and Inf make a norm NaN or Inf, so one range test covers them); otherwise the first bad row is named."""
    with np.errstate(over="ignore", invalid="ignore"):
        row_norms = norms(matrix)
    good = (row_norms >= MIN_NORM) & (row_norms <= MAX_NORM)
    if good.all():
        return row_norms
    position = int(np.flatnonzero(~good)[0])
    label, vector = labels(position), matrix[position]
    if not np.all(np.isfinite(vector)):
        raise InvalidArgument(f"{label}: vector holds NaN or Inf")
    norm = float(row_norms[position])
    if norm == 0:
        raise InvalidArgument(f"{label}: vector is all zeros, so its cosine to anything is undefined")
    raise InvalidArgument(f"{label}: vector norm {norm:.3g} is outside [{MIN_NORM:g}, {MAX_NORM:g}]: scale it "
                          "(cosine ignores the length)")


def matrix_of(vectors, labels) -> tuple[np.ndarray, np.ndarray]:
    """Packed float32 vectors (one message each) as one (n, d) matrix and their norms, every one checked:
    equal lengths, a whole number of float32 values, at most MAX_DIMENSION, and checked_rows."""
    raw = [v.float32_le for v in vectors]
    lengths = {len(data) for data in raw}
    if len(lengths) != 1 or not raw[0] or len(raw[0]) % 4 or len(raw[0]) // 4 > MAX_DIMENSION:
        for position, data in enumerate(raw):  # name the first vector whose size is wrong
            check_size(len(data), labels(position))
            if len(data) != len(raw[0]):
                raise DimensionMismatch(f"{labels(position)}: dimension {len(data) // 4} differs from the first "
                                        f"one ({len(raw[0]) // 4})")
    matrix = np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), -1)
    return matrix, checked_rows(matrix, labels)


def check_size(size: int, label: str) -> None:
    if not size:
        raise InvalidArgument(f"{label}: vector is empty")
    if size % 4:
        raise InvalidArgument(f"{label}: vector has {size} bytes, not a multiple of 4 (packed float32)")
    if size // 4 > MAX_DIMENSION:
        raise InvalidArgument(f"{label}: dimension {size // 4} is over the limit of {MAX_DIMENSION}")


def batch_matrix(batch: index_pb2.ItemBatch, labels) -> tuple[np.ndarray, np.ndarray]:
    count, size = len(batch.ids), len(batch.vectors)
    if size % (4 * count):
        raise InvalidArgument(f"{labels(0)}: the batch's vectors are {size} bytes, not {count} ids x dimension x 4")
    check_size(size // count, labels(0))
    matrix = np.frombuffer(batch.vectors, dtype="<f4").reshape(count, -1)
    return matrix, checked_rows(matrix, labels)


class UpsertCall:
    """The validated items of an Upsert call so far; `items()` gives them ready to commit."""

    def __init__(self):
        self.fingerprint = ""
        self.collection = None
        self.only_absent = False
        self.ids: list[str] = []
        self.matrices: list[np.ndarray] = []
        self.norms: list[np.ndarray] = []
        self.metadata: list[dict] = []
        self.messages = 0
        self.vector_bytes = 0

    def add(self, request: index_pb2.UpsertRequest) -> None:
        where = f"upsert message {self.messages}"
        if self.messages == 0:
            if not request.model_fingerprint:
                raise InvalidArgument(f"{where}: model_fingerprint is empty: pass the fingerprint the embedder "
                                      "returned")
            self.fingerprint, self.collection = request.model_fingerprint, request.collection
            self.only_absent = request.only_absent
        elif request.model_fingerprint and request.model_fingerprint != self.fingerprint:
            raise InvalidArgument(f"{where}: model_fingerprint {request.model_fingerprint} differs from the call's "
                                  f"first message ({self.fingerprint}): one call writes one model's vectors")
        elif request.collection and request.collection != self.collection:
            raise InvalidArgument(f"{where}: collection {request.collection!r} differs from the call's first message "
                                  f"({self.collection!r}): one call writes one collection")
        items, batch = request.items, request.batch
        count = len(items) + len(batch.ids)
        if not count:
            raise InvalidArgument(f"{where} carries no items")
        if count > MAX_ITEMS_PER_MESSAGE:
            raise InvalidArgument(f"{where}: {count} items, over the limit of {MAX_ITEMS_PER_MESSAGE} per message")
        if len(self.ids) + count > MAX_ITEMS_PER_CALL:
            raise InvalidArgument(f"the call carries more than {MAX_ITEMS_PER_CALL} items; split it into several "
                                  "calls (each is atomic)")
        if items:
            self._add_part(where, [item.id for item in items], lambda label: matrix_of([i.vector for i in items], label),
                           [(item.metadata, item.typed_metadata) for item in items])
        if batch.ids:
            if batch.metadata and len(batch.metadata) != len(batch.ids):
                raise InvalidArgument(f"{where}: the batch has {len(batch.ids)} ids and {len(batch.metadata)} metadata "
                                      "entries; give one per id, or none")
            self._add_part(where, list(batch.ids), lambda label: batch_matrix(batch, label),
                           [(m.metadata, m.typed_metadata) for m in batch.metadata] if batch.metadata else None)
        self.messages += 1

    def _add_part(self, where: str, ids: list[str], read_matrix, maps) -> None:
        first = len(self.ids)

        def label(offset: int) -> str:
            return f"{where}, {item_label(first + offset, ids[offset])}"

        matrix, row_norms = read_matrix(label)
        if self.matrices and matrix.shape[1] != self.matrices[0].shape[1]:
            raise DimensionMismatch(f"{label(0)}: dimension {matrix.shape[1]} differs from the call's first items "
                                    f"({self.matrices[0].shape[1]})")
        self.vector_bytes += matrix.nbytes
        if self.vector_bytes > MAX_VECTOR_BYTES_PER_CALL:
            raise InvalidArgument(f"the call carries more than {MAX_VECTOR_BYTES_PER_CALL} bytes of vectors; split it "
                                  "into several calls (each is atomic)")
        # An id of at most 64 characters is at most 256 bytes of UTF-8: only empty or longer ones need a look.
        for offset in [i for i, item_id in enumerate(ids) if not item_id or len(item_id) > MAX_ID_BYTES // 4]:
            check_id(ids[offset], label(offset))
        if maps is None:
            metadata = [{}] * len(ids)
        else:
            metadata = []
            for offset, (strings, typed) in enumerate(maps):
                if not strings and not typed:
                    metadata.append({})
                    continue
                try:
                    metadata.append(meta.from_maps(strings, typed, label(offset)))
                except meta.BadMetadata as err:
                    raise InvalidArgument(str(err)) from None
        self.ids += ids
        self.matrices.append(matrix)
        self.norms.append(row_norms)
        self.metadata += metadata

    def items(self) -> Items:
        if not self.ids:
            raise InvalidArgument("the call carries no items")
        latest = {item_id: position for position, item_id in enumerate(self.ids)}  # the last of an id wins
        keep = np.fromiter(latest.values(), dtype=np.int64, count=len(latest))
        raw = self.matrices[0] if len(self.matrices) == 1 else np.concatenate(self.matrices)
        row_norms = self.norms[0] if len(self.norms) == 1 else np.concatenate(self.norms)
        if len(keep) < len(self.ids):
            raw, row_norms = raw[keep], row_norms[keep]
        ids = list(latest)
        high, low = id_hashes(ids)
        metadata = self.metadata if len(keep) == len(self.ids) else [self.metadata[p] for p in keep.tolist()]
        crcs = crc32_rows(raw)
        records = NewRecords.of([], ids, metadata, crcs.tolist())
        return Items(ids, raw, unit_rows(raw, row_norms), high, low, metadata, crcs, records.bases,
                     records.metadata_json)


def request_ids(ids, verb: str, limit: int) -> list[str]:
    """The ids of a Delete or Get request, checked."""
    if not ids:
        raise InvalidArgument(f"no ids to {verb}")
    if len(ids) > limit:
        raise InvalidArgument(f"{len(ids)} ids in one call, over the limit of {limit}")
    for position, item_id in enumerate(ids):
        if not item_id or len(item_id) > MAX_ID_BYTES // 4:
            check_id(item_id, f"id {position}")
    return list(ids)


def delete_versions(request: index_pb2.DeleteRequest, ids: list[str]) -> list[int] | None:
    """A Delete's if_versions, checked against its ids; None when not given."""
    if not request.if_versions:
        return None
    if len(request.if_versions) != len(ids):
        raise InvalidArgument(f"if_versions has {len(request.if_versions)} values for {len(ids)} ids; give one per id, "
                              "or none")
    if len(set(ids)) != len(ids):
        raise InvalidArgument("with if_versions, the ids must be distinct")
    return list(request.if_versions)


def where_of(legacy, where: index_pb2.Filter | None) -> flt.Filter | None:
    """The request's filter: the deprecated string conditions and `where`, combined by AND."""
    try:
        parts = flt.from_legacy(legacy)
        if where is not None and where.WhichOneof("kind") is not None:
            parts.append(flt.from_proto(where))
    except flt.BadFilter as err:
        raise InvalidArgument(str(err)) from None
    return flt.combined(parts)


def search_queries(request: index_pb2.SearchRequest) -> np.ndarray:
    if not 1 <= request.k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {request.k}")
    if not request.queries:
        raise InvalidArgument("no query vectors in the request")
    if len(request.queries) > MAX_QUERIES:
        raise InvalidArgument(f"{len(request.queries)} queries in one call, over the limit of {MAX_QUERIES}")
    if not request.model_fingerprint:
        raise InvalidArgument("model_fingerprint is empty: pass the fingerprint the embedder returned")
    return matrix_of(request.queries, lambda position: f"query {position}")[0]


def search_params(request: index_pb2.SearchRequest) -> dict[str, int]:
    """The search-time parameters a Search request sets for itself (see SearchRequest.params)."""
    if not request.HasField("params"):
        return {}
    values = index_params(request.params)
    fixed = sorted(set(values) - set(SEARCH_PARAMS))
    if fixed:
        raise InvalidArgument(f"params.{', params.'.join(fixed)} cannot be set by a search (fixed when the "
                              f"collection is created); a search may set {', '.join(SEARCH_PARAMS)}")
    return values


def scroll_limit(limit: int) -> int:
    if limit > MAX_SCROLL:
        raise InvalidArgument(f"limit {limit} is over the limit of {MAX_SCROLL} items per page")
    return limit or DEFAULT_SCROLL


def index_params(message: index_pb2.IndexParams) -> dict[str, int]:
    """The parameters a CreateCollection request sets (the others take the server's defaults)."""
    values = {name: getattr(message, name) for name in PARAM_RANGES if message.HasField(name)}
    for name, value in values.items():
        low, high, kinds, _ = PARAM_RANGES[name]
        if not low <= value <= high:
            raise InvalidArgument(f"params.{name} must be from {low} to {high} ({kinds}), got {value}")
    return values
