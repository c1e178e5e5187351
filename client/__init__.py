"""The Python SDK and command line of imgsim. Needs neither torch nor transformers."""

from client.channels import ClientTls
from client.errors import (DeadlineExceeded, ImgsimError, InvalidArgument, ModelMismatch, Overloaded,
                           Unauthenticated, Unavailable)
from client.results import Hit, IndexReport, IndexStats, ModelInfo, PartialHits, StoredItem
from client.sdk import SimilarityClient

__all__ = [
    "SimilarityClient", "ClientTls", "Hit", "ModelInfo", "IndexStats", "IndexReport", "PartialHits", "StoredItem",
    "ImgsimError", "InvalidArgument", "ModelMismatch", "Overloaded", "Unavailable", "DeadlineExceeded",
    "Unauthenticated",
]
