"""artlens.retrieval: similar artworks through a FAISS index over the embedding store.

- `index.py`: `FaissIndex` (build, save, load, search in a mode), `Neighbour`.
- `spaces.py`: the search modes (`style`, `artist`, `visual`) as projections of encoder features.
- `query.py`: `similar(index, vector_or_image_or_path, k, by=...)`, the query encoder.
- `build.py`: an index from a manifest or folder (`index_embeddings`) or an embedding store.
- `collection.py`: `index_collection(dir)`, an index kept beside a collection and updated in place.
- `checks.py`: index files refused field by field; `sheet.py`: `contact_sheet(query, neighbours)`.
- `attribution.py`: artist attribution over a gallery index.
"""

from artlens.retrieval.build import index_embeddings, index_from_store, read_rows
from artlens.retrieval.collection import CollectionUpdate, default_index_dir, index_collection
from artlens.retrieval.errors import RetrievalError
from artlens.retrieval.index import DUPLICATE_SIM, FEATURES, HNSW_THRESHOLD, FaissIndex, Neighbour, image_phash
from artlens.retrieval.query import check_encoder, open_index, query_encoder, similar
from artlens.retrieval.sheet import contact_sheet, write_sheet
from artlens.retrieval.spaces import DEFAULT_MODE, MODES, Space, default_spaces, fit_label_space

__all__ = [
    "DEFAULT_MODE",
    "DUPLICATE_SIM",
    "FEATURES",
    "HNSW_THRESHOLD",
    "MODES",
    "CollectionUpdate",
    "FaissIndex",
    "Neighbour",
    "RetrievalError",
    "Space",
    "check_encoder",
    "contact_sheet",
    "write_sheet",
    "default_index_dir",
    "default_spaces",
    "fit_label_space",
    "image_phash",
    "index_collection",
    "index_embeddings",
    "index_from_store",
    "open_index",
    "query_encoder",
    "read_rows",
    "similar",
]
