"""The Python SDK and command line of imgsim. Needs neither torch nor transformers."""

from client.channels import ClientTls
from client.errors import (AlreadyExists, DataLoss, DeadlineExceeded, ImgsimError, InvalidArgument, ModelMismatch,
                           NotFound, Overloaded, Unauthenticated, Unavailable)
from client.results import (CollectionInfo, Hit, IndexReport, IndexStats, ModelInfo, PartialHits, StoredItem,
                            WriteReport)
from client.sdk import Embeddings, SimilarityClient

__all__ = [
    "SimilarityClient", "ClientTls", "Embeddings", "Hit", "ModelInfo", "IndexStats", "IndexReport", "PartialHits",
    "StoredItem", "WriteReport", "CollectionInfo", "ImgsimError", "InvalidArgument", "ModelMismatch", "NotFound",
    "AlreadyExists", "Overloaded", "Unavailable", "DeadlineExceeded", "Unauthenticated", "DataLoss",
]
