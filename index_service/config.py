"""The index's configuration, built once from flags and environment in __main__, and the search-structure
parameters each index kind accepts (the ranges are what FAISS and the structures here work with)."""

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from imgsim.server.config import ServingConfig

KINDS = ("flat", "hnsw", "ivfpq", "lsh")
MAX_DIMENSION = 16384
DEFAULT_COLLECTION = "default"


@dataclass(frozen=True)
class KindParams:
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 1024
    # ivfpq: 192-byte codes (pq_m 128 stops near recall 0.85 on bench/data.py's vectors), 1000 candidates
    # re-ranked, 64 of 1024 lists visited: recall is set by the codes and the candidates more than by nprobe
    # (bench/ivfpq_sweep.py: 0.94 at 64 vs 0.96 at 256 at 1M, for a quarter of the time; 10M in the README).
    ivf_nprobe: int = 64
    pq_m: int = 384
    rerank_factor: int = 100
    lsh_tables: int = 8
    lsh_bits: int = 16
    lsh_radius: int = 1

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# name: (lowest, highest, which kind uses it, what it does). HNSW's level multiplier is 1/ln(M): M=1
# divides by zero; past 256 a node's links cost more than its vector. IVF needs at least one list; k-means
# past 65536 lists is impractical on a CPU. LSH codes are uint32 words.
PARAM_RANGES: dict[str, tuple[int, int, str, str]] = {
    "hnsw_m": (2, 256, "hnsw", "graph neighbours per node"),
    "hnsw_ef_construction": (8, 4096, "hnsw", "candidate list while building"),
    "hnsw_ef_search": (1, 32768, "hnsw", "candidate list while searching (higher: better recall, slower)"),
    "ivf_nlist": (1, 65536, "ivfpq", "inverted lists; trained in the background once max(39 x nlist, 9984) "
                  "vectors are in (exact search until then) and fixed from then on: about N/1000 for the N items "
                  "a collection will hold (1024 fits about 1M)"),
    "ivf_nprobe": (1, 65536, "ivfpq", "lists visited per query (capped at nlist)"),
    "pq_m": (1, 1024, "ivfpq", "sub-quantizers per vector, 4 bits each (pq_m/2 bytes per code; the largest "
             "divisor of the dimension not above it is used)"),
    "rerank_factor": (1, 1000, "ivfpq, lsh", "candidates re-ranked with the exact vectors per hit asked for "
                      "(k=10, factor 100: 1000)"),
    "lsh_tables": (1, 64, "lsh", "independent hash tables"),
    "lsh_bits": (1, 32, "lsh", "bits (random hyperplanes) per table"),
    "lsh_radius": (0, 4, "lsh", "bits a candidate's code may differ from the query's in a table"),
}


# What a search may set for itself (SearchRequest.params); the others shape what is built.
SEARCH_PARAMS = ("hnsw_ef_search", "ivf_nprobe", "rerank_factor", "lsh_radius")


class BadParams(ValueError):
    """A parameter outside what its kind accepts."""


def check_params(params: KindParams) -> KindParams:
    for name, (low, high, kinds, _) in PARAM_RANGES.items():
        value = getattr(params, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise BadParams(f"{name} must be an integer from {low} to {high} ({kinds}), got {value!r}")
    if params.lsh_radius > params.lsh_bits:
        raise BadParams(f"lsh_radius ({params.lsh_radius}) cannot exceed lsh_bits ({params.lsh_bits})")
    return params


def params_with(base: KindParams, overrides: dict[str, int]) -> KindParams:
    """`base` with some parameters replaced, checked."""
    unknown = set(overrides) - {f.name for f in fields(KindParams)}
    if unknown:
        raise BadParams(f"unknown parameters: {', '.join(sorted(unknown))}")
    return check_params(replace(base, **overrides))


def params_from_dict(values: dict) -> KindParams:
    return params_with(KindParams(), {k: v for k, v in values.items() if k in PARAM_RANGES})


@dataclass(frozen=True)
class IndexConfig:
    data_dir: Path
    serving: ServingConfig = field(default_factory=ServingConfig)
    index_kind: str = "flat"
    kind_params: KindParams = field(default_factory=KindParams)
    snapshot_every: int = 100_000
    search_threads: int = 2
    faiss_threads: int = 1
    max_storage_bytes: int | None = None
    compact_dead_fraction: float = 0.2
