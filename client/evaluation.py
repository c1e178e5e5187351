"""Retrieval quality on the user's own labelled images, measured through the services as production answers.

A run embeds the queries and candidates once through the embedder, writes the candidates into a scratch
collection per index kind (or searches an existing collection), searches every query with the kind's own
search and with `exact=True`, and measures:

- label quality: a candidate is relevant to a query when it carries the query's label. precision@k (share
  of the top k that are relevant), recall@k (share of the relevant candidates found in the top k), AP@k
  (average of precision@i over the ranks i <= k that hold a relevant candidate, divided by min(relevant, k))
  and its mean mAP@k, MRR (1 / the rank of the first relevant candidate within k, 0 without one);
- approximate vs exact: the share of the exact top-k ids the kind's own search returns (1.0 for flat);
- speed: embedding images/s and single-query search latency percentiles.

With queries but no separate candidates, each image is a query against all the others (leave-one-out: its
own item is never counted). Images without a label are refused: quality needs labels (docs in README).
"""

import signal
from collections import Counter
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from client.ingest import BadInput, Source

SCHEMA = "imgsim-eval/1"
SEARCH_BATCH = 1024
LATENCY_QUERIES = 100
SAMPLES = 10


@dataclass
class LabelledSet:
    """Images with labels: what a query or candidate set is, whatever it was read from."""
    name: str
    sources: list[Source]

    @property
    def labels(self) -> list[str]:
        return [str(source.metadata["label"]) for source in self.sources]


def labelled(name: str, sources: Sequence[Source]) -> LabelledSet:
    kept = list(sources)
    unlabelled = [s.where for s in kept if s.metadata.get("label") in (None, "")]
    if unlabelled:
        raise BadInput(f"{name}: {len(unlabelled)} of {len(kept)} images have no label (first: {unlabelled[0]}); "
                       "evaluation needs labels: use class subfolders, or a dataset with a label column "
                       "(--label-column)")
    if not kept:
        raise BadInput(f"{name}: no images")
    return LabelledSet(name, kept)


# Ctrl-C. A KeyboardInterrupt raised at an arbitrary point can land inside gRPC's own locking and leave a
# channel that never answers again, so the scratch collections could not be dropped. The first Ctrl-C only
# asks to stop; the run stops at the next safe point (between images, batches, calls) and cleans up.

STOP = threading.Event()


@contextmanager
def stop_at_safe_points():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()

    def asked(signum, frame):
        if STOP.is_set():  # a second Ctrl-C: stop now, whatever it leaves
            raise KeyboardInterrupt
        STOP.set()
    previous = signal.signal(signal.SIGINT, asked)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP.clear()


def stop_if_asked() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


# Metrics: plain numpy on label arrays, independent of how the hits were found.

@dataclass
class QualityMetrics:
    queries: int
    precision_at_k: float
    recall_at_k: float
    map_at_k: float
    mrr: float


def relevance(query_labels: Sequence[str], hit_labels: Sequence[Sequence[str]], k: int) -> np.ndarray:
    """(queries, k) booleans: is the hit at each rank relevant (missing hits count as not relevant)."""
    table = np.zeros((len(query_labels), k), dtype=bool)
    for row, (label, found) in enumerate(zip(query_labels, hit_labels)):
        for rank, hit_label in enumerate(list(found)[:k]):
            table[row, rank] = hit_label == label
    return table


def per_query(relevant: np.ndarray, relevant_totals: np.ndarray) -> dict[str, np.ndarray]:
    """Each query's precision@k, recall@k, AP@k and reciprocal rank. Queries with no relevant candidate at
    all get NaN recall and AP (they cannot be found; they are left out of the means and counted)."""
    k = relevant.shape[1]
    found = relevant.sum(axis=1)
    ranks = np.arange(1, k + 1)
    precision_at_rank = np.cumsum(relevant, axis=1) / ranks
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(relevant_totals > 0, found / relevant_totals, np.nan)
        ap = np.where(relevant_totals > 0, (precision_at_rank * relevant).sum(axis=1)
                      / np.minimum(relevant_totals, k), np.nan)
    first = np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, 0)
    reciprocal = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    return {"precision": found / k, "recall": recall, "ap": ap, "rr": reciprocal}


def summarise(scores: dict[str, np.ndarray]) -> QualityMetrics:
    def mean(values):
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else float("nan")
    return QualityMetrics(len(scores["precision"]), mean(scores["precision"]), mean(scores["recall"]),
                          mean(scores["ap"]), mean(scores["rr"]))


def curve(relevant: np.ndarray, relevant_totals: np.ndarray) -> dict[str, list[float]]:
    """Mean precision@j and recall@j for j = 1..k."""
    k = relevant.shape[1]
    hits = np.cumsum(relevant, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = hits[relevant_totals > 0] / relevant_totals[relevant_totals > 0, None]
    return {"precision": [float(v) for v in (hits / np.arange(1, k + 1)).mean(axis=0)],
            "recall": [float(v) for v in (recall.mean(axis=0) if len(recall) else np.full(k, np.nan))]}


def overlap(approximate: Sequence[Sequence[str]], exact: Sequence[Sequence[str]]) -> float:
    """Mean share of the exact top-k ids that the approximate search returned too."""
    shares = [len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact) if e]
    return float(np.mean(shares)) if shares else float("nan")


# The run.

@dataclass
class KindResult:
    kind: str
    overall: QualityMetrics
    per_class: dict[str, QualityMetrics]
    curve: dict[str, list[float]]
    confusion: dict[str, dict[str, int]]  # query label -> top-1 label -> count
    recall_vs_exact: float
    latency_ms: dict[str, float]
    per_query: dict[str, list]  # query ids and each query's precision@k and AP@k, for comparisons
    worst: list[dict]  # the lowest-AP queries: {"query", "label", "ap", "hits": [{"id", "label", "score"}]}
    samples: list[dict]  # the first queries, in the same form: the write-up's view


@dataclass
class EvalReport:
    schema: str
    model: dict
    k: int
    queries: str
    candidates: str
    query_count: int
    candidate_count: int
    failed_images: list[str]
    leave_one_out: bool
    embedding_images_per_s: float
    kinds: list[KindResult]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict:
        return asdict(self)

    def kind(self, name: str) -> KindResult:
        return next(result for result in self.kinds if result.kind == name)


def embed_set(client, images: LabelledSet, progress: bool) -> tuple[np.ndarray, list[int], list[str], str, float]:
    """(vectors of the embedded images, their positions, failures by source, fingerprint, seconds)."""
    from tqdm.auto import tqdm

    def items_from(start: int):  # read as sent, so a large folder is never held in memory at once
        for n in range(start, len(images.sources)):
            source = images.sources[n]
            yield str(n), source.bytes() if source.data is None else source.data

    good, positions, failed, fingerprints = [], [], [], set()
    started = time.monotonic()
    with tqdm(total=len(images.sources), desc=f"embedding {images.name}", unit="img",
              disable=not progress) as bar:
        for n, (result, fingerprint) in enumerate(client._embed_stream(items_from, 64)):
            stop_if_asked()
            bar.update(1)
            if result.HasField("error"):
                source = images.sources[n]
                failed.append(f"{source.where}: {source.read_error or result.error.message.split(': ', 1)[-1]}")
                continue
            fingerprints.add(fingerprint)
            good.append(np.frombuffer(result.vector.float32_le, dtype="<f4"))
            positions.append(n)
    if len(fingerprints) > 1:
        raise BadInput(f"the embedder changed model during the run ({sorted(fingerprints)}); run it again")
    if not good:
        raise BadInput(f"{images.name}: no image could be embedded")
    return np.stack(good), positions, failed, fingerprints.pop(), time.monotonic() - started


def search_all(client, collection: str, vectors: np.ndarray, k: int, fingerprint: str, exact: bool) -> list:
    hits = []
    for start in range(0, len(vectors), SEARCH_BATCH):
        stop_if_asked()
        hits += client.search_vectors(vectors[start:start + SEARCH_BATCH], k=k, fingerprint=fingerprint,
                                      collection=collection, exact=exact)
    return hits


def latencies_ms(client, collection: str, vectors: np.ndarray, k: int, fingerprint: str) -> dict[str, float]:
    """Single-query calls, as an application makes them, on up to LATENCY_QUERIES queries."""
    timings = []
    for vector in vectors[:LATENCY_QUERIES]:
        stop_if_asked()
        started = time.perf_counter()
        client.search_vectors(vector, k=k, fingerprint=fingerprint, collection=collection)
        timings.append(1000 * (time.perf_counter() - started))
    return {f"p{p}": float(np.percentile(timings, p)) for p in (50, 95, 99)}


def score_kind(kind: str, query_ids: list[str], query_labels: list[str], own: list, exact: list,
               label_of: dict[str, str], totals: np.ndarray, k: int, latency: dict, worst: int) -> KindResult:
    hit_labels = [[label_of.get(h.id, "") for h in found] for found in own]
    relevant = relevance(query_labels, hit_labels, k)
    scores = per_query(relevant, totals)
    per_class = {}
    for label in sorted(set(query_labels)):
        mask = np.array([q == label for q in query_labels])
        per_class[label] = summarise({name: values[mask] for name, values in scores.items()})
    confusion: dict[str, dict[str, int]] = {}
    for label, found in zip(query_labels, hit_labels):
        top = found[0] if found else "(none)"
        confusion.setdefault(label, {}).setdefault(top, 0)
        confusion[label][top] += 1
    def described(i: int) -> dict:
        return {"query": query_ids[i], "label": query_labels[i], "ap": float(np.nan_to_num(scores["ap"][i])),
                "hits": [{"id": h.id, "label": label_of.get(h.id, ""), "score": h.score} for h in own[i]]}
    order = np.lexsort((scores["precision"], np.nan_to_num(scores["ap"], nan=-1.0)))[:worst]
    return KindResult(kind, summarise(scores), per_class, curve(relevant, totals), confusion,
                      overlap([[h.id for h in f] for f in own], [[h.id for h in f] for f in exact]), latency,
                      {"ids": query_ids, "precision": [float(v) for v in scores["precision"]],
                       "ap": [None if np.isnan(v) else float(v) for v in scores["ap"]]},
                      [described(i) for i in order], [described(i) for i in range(min(SAMPLES, len(query_ids)))])


def relevant_totals(candidate_labels, query_labels: list[str], leave_one_out: bool) -> np.ndarray:
    """Each query's number of relevant candidates (its own item not counted in leave-one-out)."""
    counts = Counter(candidate_labels)
    return np.array([counts[label] - (1 if leave_one_out else 0) for label in query_labels])


def model_of(client, fingerprint: str) -> dict:
    info = client.model_info()
    return {"model_id": info.model_id, "fingerprint": fingerprint, "dimension": info.dimension, "dtype": info.dtype}


def in_collection(client, queries: LabelledSet, collection: str, k: int, worst: int,
                  progress: bool) -> EvalReport:
    """Queries against what an existing collection holds (its items' `label` metadata), left as it is."""
    described = next((c for c in client.list_collections() if c.name == collection), None)
    if described is None:
        raise BadInput(f"no collection {collection!r}")
    held = list(client.scroll(collection=collection))
    label_of = {item.id: str(item.metadata.get("label", "")) for item in held}
    if not held or not any(label_of.values()):
        raise BadInput(f"collection {collection!r} holds no items with a 'label' to evaluate against")
    vectors, positions, failed, fingerprint, seconds = embed_set(client, queries, progress)
    query_ids, query_labels = [f"q{n}" for n in positions], [queries.labels[n] for n in positions]
    totals = relevant_totals(label_of.values(), query_labels, leave_one_out=False)
    own = search_all(client, collection, vectors, k, fingerprint, False)
    exact = search_all(client, collection, vectors, k, fingerprint, True)
    latency = latencies_ms(client, collection, vectors, k, fingerprint)
    result = score_kind(described.index_kind, query_ids, query_labels, own, exact, label_of, totals, k, latency,
                        worst)
    return EvalReport(SCHEMA, model_of(client, fingerprint), k, queries.name, f"collection {collection}", len(positions),
                      len(held), failed, False, len(positions) / seconds if seconds else float("nan"), [result])


def evaluate(client, queries: LabelledSet, candidates: LabelledSet | None = None, k: int = 10,
             kinds: Sequence[str] = ("flat",), worst: int = 8, progress: bool = True,
             collection: str | None = None) -> EvalReport:
    """Embeds once, then for each index kind: a scratch collection, the searches, the metrics; the scratch
    collections are dropped whatever happens (Ctrl-C included). With `collection`, searches that existing
    collection instead (its items are the candidates) and changes nothing in it."""
    if not 1 <= k <= 999:
        raise BadInput(f"k must be from 1 to 999, got {k}")
    with stop_at_safe_points():
        if collection:
            return in_collection(client, queries, collection, k, worst, progress)
        return evaluate_kinds(client, queries, candidates, k, kinds, worst, progress)


def evaluate_kinds(client, queries: LabelledSet, candidates: LabelledSet | None, k: int, kinds: Sequence[str],
                   worst: int, progress: bool) -> EvalReport:
    leave_one_out = candidates is None
    query_vectors, query_positions, failed, fingerprint, seconds = embed_set(client, queries, progress)
    embedded = len(query_positions)
    if leave_one_out:
        candidate_vectors, candidate_positions, candidate_set = query_vectors, query_positions, queries
    else:
        candidate_vectors, candidate_positions, more_failed, other, more_seconds = embed_set(client, candidates,
                                                                                             progress)
        if other != fingerprint:
            raise BadInput("the embedder changed model during the run; run it again")
        failed, seconds, embedded = failed + more_failed, seconds + more_seconds, embedded + len(candidate_positions)
        candidate_set = candidates
    candidate_ids = [f"c{n}" for n in candidate_positions]
    candidate_labels = [candidate_set.labels[n] for n in candidate_positions]
    label_of = dict(zip(candidate_ids, candidate_labels))
    query_ids = [f"c{n}" if leave_one_out else f"q{n}" for n in query_positions]
    query_labels = [queries.labels[n] for n in query_positions]
    totals = relevant_totals(candidate_labels, query_labels, leave_one_out)
    search_k = k + 1 if leave_one_out else k

    def without_self(hits, ids):
        return [[h for h in found if h.id != own][:k] for found, own in zip(hits, ids)] if leave_one_out else hits

    results = []
    for kind in kinds:
        name = f"eval-{uuid.uuid4().hex[:10]}-{kind}"
        try:  # entered before the create: Ctrl-C may land after the server made it, before the reply
            client.create_collection(name, kind, fingerprint=fingerprint, dimension=query_vectors.shape[1])
            client.upsert(candidate_ids, candidate_vectors, [{"label": label} for label in candidate_labels],
                          fingerprint=fingerprint, collection=name)
            stop_if_asked()
            own = without_self(search_all(client, name, query_vectors, search_k, fingerprint, False), query_ids)
            exact = without_self(search_all(client, name, query_vectors, search_k, fingerprint, True), query_ids)
            latency = latencies_ms(client, name, query_vectors, k, fingerprint)
        finally:
            client.drop_collection(name, missing_ok=True)
        results.append(score_kind(kind, query_ids, query_labels, own, exact, label_of, totals, k, latency, worst))
    return EvalReport(SCHEMA, model_of(client, fingerprint), k, queries.name, "(the queries, leave-one-out)" if leave_one_out else candidates.name,
                      len(query_positions), len(candidate_positions), failed, leave_one_out,
                      embedded / seconds if seconds else float("nan"), results)
