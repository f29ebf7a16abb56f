"""Building an index from data: rows from a folder or manifest (`read_rows`), embedded through the
embedding store (`index_embeddings`), or taken from a store that already holds their vectors
(`index_from_store`)."""

from __future__ import annotations

from pathlib import Path

from artlens.data.rows import read_rows as data_rows
from artlens.retrieval.errors import RetrievalError
from artlens.retrieval.index import FaissIndex

def read_rows(source: str | Path, errors: list | None = None, *, progress: bool = False, workers: int = 2):
    """A manifest file, or an image folder scanned into one (`artlens.data.rows.read_rows`); the
    files a scan could not read are appended to `errors` as (path, reason). A source that is
    neither may be an embedding store folder, which `index_from_store` reads."""
    rows, unreadable = data_rows(source, progress=progress, workers=workers)
    if errors is not None:
        errors.extend(zip(unreadable["path"], unreadable["reason"]))
    return rows


def index_embeddings(
    df,
    backbone: str = "clip-vit-b16",
    *,
    store_root=None,
    encoder=None,
    kind: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    spaces=None,
    default_mode: str | None = None,
):
    """Embed a manifest (reusing the embedding store) and index the rows that worked.

    Returns `(FaissIndex, errors)`: errors is a DataFrame `path, reason` for rows left out.
    `encoder`: a ready one (e.g. a fine-tuned model's, `artlens.embed.model_encoder`), else the
    backbone's. `spaces` / `default_mode`: see `FaissIndex.build` (default: raw features).
    """
    from artlens.embed import embed_manifest, get_encoder

    encoder = encoder or get_encoder(backbone)
    vectors, ok, errors = embed_manifest(
        df, encoder, store_root=store_root, batch_size=batch_size, workers=workers, progress=progress
    )[:3]
    rows = df.loc[ok].reset_index(drop=True) if hasattr(df, "loc") else None
    idx = FaissIndex.build(vectors[ok], rows, backbone=backbone, backbone_id=encoder.backbone_id, kind=kind,
                           spaces=spaces, default_mode=default_mode)
    return idx, errors


def index_from_store(store_dir: str | Path, df, backbone: str | None = None, kind: str = "auto", *, spaces=None,
                     default_mode: str | None = None):
    """Index the manifest rows whose vectors an existing store directory already holds (no model
    is loaded). Returns `(FaissIndex, missing_rows)`."""
    from artlens.embed import EmbeddingStore
    from artlens.embed.store import INFO_NAME, read_store_info

    store_dir = Path(store_dir)
    if not (store_dir / INFO_NAME).is_file():
        raise RetrievalError(f"{store_dir}: not an embedding store (no {INFO_NAME})")
    info = read_store_info(store_dir)
    backbone_id = info["backbone_id"]
    store = EmbeddingStore(store_dir.parent, backbone_id)
    if store.dir.resolve() != store_dir.resolve():
        raise RetrievalError(f"{store_dir}: folder name does not match its backbone id {backbone_id!r}")
    if "sha256" not in df.columns:
        raise ValueError("the manifest has no sha256 column; use the manifest itself as input instead")
    vectors, found = store.get([str(h) if isinstance(h, str) else "0" * 64 for h in df["sha256"]])
    rows = df.loc[found].reset_index(drop=True)
    idx = FaissIndex.build(vectors[found], rows, backbone=backbone or info.get("backbone"), backbone_id=backbone_id,
                           kind=kind, spaces=spaces, default_mode=default_mode)
    return idx, df.loc[~found].reset_index(drop=True)
