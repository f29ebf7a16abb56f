"""Asking an index: `similar(index, image_or_path_or_vector, k, by=...)`, and the encoder that must
make the query's features (`query_encoder`, `open_index` for an index or a model folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artlens.retrieval.errors import RetrievalError
from artlens.retrieval.index import DUPLICATE_SIM, META_NAME, FaissIndex, Neighbour, image_phash


def similar(
    index: "FaissIndex | str | Path",
    query,
    k: int = 5,
    *,
    by: str | None = None,
    encoder=None,
    query_sha256: str | None = None,
    exclude_duplicates: bool = False,
    duplicate_sim: float = DUPLICATE_SIM,
) -> list[Neighbour]:
    """The k artworks most similar to `query`: encoder features (dim,), a PIL image, or an image path,
    compared in mode `by` (`style`, `artist`, `visual`, `features`; default: the index's own).

    Images are embedded with `encoder` (default: the index's backbone encoder), which must be the
    one that made the index (same backbone id) or the similarities would mean nothing. The query's
    own file (same sha256) and near-copies (feature cosine > `duplicate_sim`, or a pHash within
    PHASH_DISTANCE bits when the rows have one) come back marked `duplicate`.
    """
    from PIL import Image

    if not isinstance(index, FaissIndex):
        index = FaissIndex.load(index)
    if isinstance(query, (str, Path)):
        from artlens.data.images import load_image
        from artlens.embed import file_sha256

        query_sha256 = query_sha256 or file_sha256(str(query))
        query = load_image(query)
    query_phash = None
    if isinstance(query, Image.Image):
        encoder = encoder or query_encoder(index)
        vector = encoder.embed_images([query])[0]
        query_phash = image_phash(query)
    else:
        vector = np.asarray(query, dtype=np.float32)
    return index.neighbours(
        vector, k, by=by, query_sha256=query_sha256, query_phash=query_phash,
        exclude_duplicates=exclude_duplicates, duplicate_sim=duplicate_sim,
    )


def query_encoder(index: FaissIndex, backbone_state=None):
    """The encoder that made `index`; refuses one whose backbone id differs."""
    from artlens.embed import get_encoder

    if not index.backbone:
        raise RetrievalError("the index does not name its backbone; query it with vectors, or pass an encoder")
    encoder = get_encoder(index.backbone, backbone_state=backbone_state)
    check_encoder(index, encoder)
    return encoder


def check_encoder(index: FaissIndex, encoder) -> None:
    if index.backbone_id and encoder.backbone_id != index.backbone_id:
        raise RetrievalError(
            f"the index was built with {index.backbone_id}, the query encoder is {encoder.backbone_id}: "
            "rebuild the index (`artlens index`) with this backbone"
        )
    if encoder.dim != index.dim:
        raise RetrievalError(f"encoder gives {encoder.dim}-d vectors, index holds {index.dim}-d")


def open_index(target: str | Path, index_dir: str | Path | None = None):
    """`(FaissIndex, encoder)` for an index folder, or a model folder (its index at MODEL/index or
    `index_dir`); the encoder is the model's own (fine-tuned weights included) when one is given."""
    from artlens.models.artmodel import ArtModel

    target = Path(target)
    if (target / META_NAME).is_file() and index_dir is None:
        idx = FaissIndex.load(target)
        return idx, query_encoder(idx)
    if (target / "config.json").is_file():
        from artlens.embed import model_encoder

        art = ArtModel.load(target)
        index_dir = Path(index_dir) if index_dir is not None else target / "index"
        if not (index_dir / META_NAME).is_file():
            raise RetrievalError(
                f"no index at {index_dir}: build one with `artlens index MANIFEST --model {target}` (or pass --index DIR)"
            )
        idx = FaissIndex.load(index_dir)
        encoder = model_encoder(art)
        check_encoder(idx, encoder)
        return idx, encoder
    if index_dir is not None:
        idx = FaissIndex.load(index_dir)
        return idx, query_encoder(idx)
    raise RetrievalError(f"{target}: neither an index folder ({META_NAME}) nor a model folder (config.json)")
