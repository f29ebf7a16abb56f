"""Building an index from data: rows from a folder or manifest (`read_rows`), embedded through the
embedding store (`index_embeddings`), or taken from a store that already holds their vectors
(`index_from_store`)."""

from __future__ import annotations

from pathlib import Path

from artlens.retrieval.errors import RetrievalError
from artlens.retrieval.index import FaissIndex

MANIFEST_SUFFIXES = {".parquet", ".csv"}


def read_rows(source: str | Path, errors: list | None = None, *, progress: bool = False, workers: int = 2):
    """A manifest file, or an image folder scanned into one (labels from the folder layout, sha256
    and pHash of every file). The files a scan could not read are appended to `errors` as
    (path, reason)."""
    import pandas as pd

    source = Path(source)
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        if source.suffix.lower() == ".parquet":
            from artlens.data.manifest import read_manifest

            df = read_manifest(source)
        else:
            df = pd.read_csv(source)
        if "path" not in df.columns:
            raise ValueError(f"{source}: a manifest needs a 'path' column")
        base = source.parent
        df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"].astype(str)]
        return df
    if source.is_dir():
        from artlens.data.manifest import scan

        result = scan(source, workers=workers, progress=progress)
        if errors is not None:
            errors.extend(zip(result.errors["path"], result.errors["reason"]))
        return result.manifest
    if not source.exists():
        raise ValueError(f"{source}: no such file or folder")
    raise ValueError(f"{source}: expected a manifest (.parquet/.csv), an image folder or an embedding store folder")


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
