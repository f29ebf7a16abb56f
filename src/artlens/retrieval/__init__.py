"""artlens.retrieval: similar artworks through a FAISS index over the embedding store.

`FaissIndex.build(vectors, rows, backbone=..., backbone_id=...)`, `.save(dir)`, `FaissIndex.load(dir)`,
`similar(index, vector_or_image_or_path, k)` -> list of `Neighbour` (cosine, labels, path, duplicate),
`contact_sheet(query_image, neighbours)` -> PIL image.
"""

from artlens.retrieval.index import (
    DUPLICATE_SIM,
    HNSW_THRESHOLD,
    FaissIndex,
    Neighbour,
    RetrievalError,
    index_embeddings,
    index_from_store,
    similar,
)
from artlens.retrieval.sheet import contact_sheet

__all__ = [
    "DUPLICATE_SIM",
    "HNSW_THRESHOLD",
    "FaissIndex",
    "Neighbour",
    "RetrievalError",
    "contact_sheet",
    "index_embeddings",
    "index_from_store",
    "similar",
]
