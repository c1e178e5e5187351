"""The search structures, one per index kind."""

from index_service.kinds.base import Structure
from index_service.kinds.flat import FlatStructure
from index_service.kinds.hnsw import HnswStructure
from index_service.kinds.ivfpq import IvfPqStructure
from index_service.kinds.lsh import LshStructure

STRUCTURES: dict[str, type[Structure]] = {cls.kind: cls for cls in (FlatStructure, HnswStructure, IvfPqStructure,
                                                                    LshStructure)}
