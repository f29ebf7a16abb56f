"""A collection's index, kept beside it and brought up to date in one call.

    update = index_collection("museum/")        # museum/.artlens-index, created or updated
    similar(update.index, "query.jpg", k=5)      # by style, the default

Every run scans the folder (or reads the manifest), so files added since the last run are
embedded, files removed drop out, and files whose bytes are unchanged keep their vectors (matched
by SHA-256, so a renamed or moved file is not embedded again). New files go through the embedding
store too, so vectors computed for another index or a `train` run are reused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artlens.retrieval.build import read_rows
from artlens.retrieval.errors import RetrievalError
from artlens.retrieval.index import FEATURES, META_NAME, FaissIndex, _present
from artlens.retrieval.spaces import default_mode_of, default_spaces

INDEX_DIR_NAME = ".artlens-index"


@dataclass
class CollectionUpdate:
    """What `index_collection` did: the index, where it is, and the rows added, kept, removed."""

    index: FaissIndex
    path: Path
    added: int = 0  # rows whose vectors were computed (or taken from the embedding store)
    kept: int = 0  # rows whose vectors came from the previous index
    removed: int = 0  # rows of the previous index whose file is gone or changed
    written: bool = False  # False: the index on disk was already up to date
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"index": str(self.path), "count": len(self.index), "added": self.added, "kept": self.kept,
                "removed": self.removed, "written": self.written, "failed": len(self.errors),
                "kind": self.index.kind, "dim": self.index.dim, "modes": self.index.modes,
                "default_mode": self.index.default_mode, "backbone": self.index.backbone,
                "backbone_id": self.index.backbone_id, "notes": self.notes}


def default_index_dir(source: str | Path) -> Path:
    """Where a collection's index lives: `DIR/.artlens-index` for a folder, `NAME.artlens-index`
    beside a manifest; under the cache (one folder per collection path) when that is not writable."""
    from artlens.paths import cache_dir

    source = Path(source).expanduser().absolute()
    if source.is_dir():
        home, target = source, source / INDEX_DIR_NAME
    else:
        home, target = source.parent, source.parent / f"{source.stem}{INDEX_DIR_NAME}"
    if (target.is_dir() and os.access(target, os.W_OK)) or (not target.exists() and os.access(home, os.W_OK)):
        return target
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return cache_dir() / "indexes" / f"{source.name or 'collection'}-{digest}"


def index_collection(
    source: str | Path,
    out: str | Path | None = None,
    *,
    backbone: str = "clip-vit-b16",
    encoder=None,
    embedder=None,
    finetuned: bool = False,
    default_mode: str | None = None,
    store_root=None,
    kind: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
) -> CollectionUpdate:
    """Create or update the index of `source` (an image folder or a manifest) at `out` (default:
    `default_index_dir(source)`). `encoder`: a ready encoder (default: the backbone's); `finetuned`:
    its weights are a fine-tuned model's (the shipped style/artist projections then do not apply).
    `default_mode`: what `similar` searches by unless told (default: style where the backbone has
    it, else visual). `embedder`: where new files are embedded instead of this process, e.g. on Ray
    (`artlens.engine.RayEmbedder`: anything with `backbone_id`, `dim` and `embed_manifest(rows,
    store_root=, progress=)` giving `embed_manifest`'s result); the index is the same."""
    from artlens.embed import embed_manifest, get_encoder

    out = Path(out) if out is not None else default_index_dir(source)
    if embedder is not None and encoder is not None:
        raise ValueError("give an encoder or an embedder, not both")
    encoder = embedder or encoder or get_encoder(backbone)  # what matters below: backbone_id and dim
    spaces = default_spaces(backbone, encoder.dim, finetuned=finetuned)
    mode = default_mode or default_mode_of(spaces)
    if mode not in [*spaces, FEATURES]:  # before any work
        raise RetrievalError(f"cannot search {backbone} embeddings by {mode!r}; modes: {', '.join([*spaces, FEATURES])}")
    errors: list[tuple[str, str]] = []
    rows = read_rows(source, errors, progress=progress, workers=workers)
    if not len(rows):
        raise RetrievalError(f"no images in {source}")
    update = CollectionUpdate(index=None, path=out, errors=errors)  # type: ignore[arg-type]

    old = None
    if (out / META_NAME).is_file():
        try:
            old = FaissIndex.load(out)
        except RetrievalError as exc:
            update.notes.append(f"the previous index could not be read and is rebuilt ({exc})")
        if old is not None and old.backbone_id != encoder.backbone_id:
            update.notes.append(f"the previous index was made by {old.backbone_id}: rebuilt with {encoder.backbone_id}")
            old = None

    shas = [h if isinstance(h, str) and len(h) == 64 else None for h in rows.get("sha256", [None] * len(rows))]
    vectors = np.full((len(rows), encoder.dim), np.nan, dtype=np.float32)
    reuse = _old_vectors(old, shas) if old is not None else {}
    for i, h in enumerate(shas):
        if h in reuse:
            vectors[i] = reuse[h]
    todo = np.array([h not in reuse for h in shas], dtype=bool)
    if todo.any():
        if embedder is not None:
            result = embedder.embed_manifest(rows.loc[todo], store_root=store_root, progress=progress)
        else:
            result = embed_manifest(rows.loc[todo], encoder, store_root=store_root, batch_size=batch_size,
                                    workers=workers, progress=progress)
        vectors[todo] = result.vectors
        errors.extend(zip(result.errors["path"], result.errors["reason"]))
    ok = np.isfinite(vectors).all(axis=1)
    update.added, update.kept = int((todo & ok).sum()), int((~todo & ok).sum())
    if old is not None:
        now = {h for h, good in zip(shas, ok) if good and h}
        update.removed = sum(1 for h in old.rows.get("sha256", []) if h not in now)
    if not ok.any():
        raise RetrievalError(f"nothing to index in {source}: every image failed")

    kept_rows = rows.loc[ok].reset_index(drop=True)
    index = FaissIndex.build(vectors[ok], kept_rows, backbone=backbone, backbone_id=encoder.backbone_id, kind=kind,
                             spaces=spaces, default_mode=mode)
    if finetuned:
        index.meta["finetuned"] = True
    update.index = index
    if old is not None and _same(old, index):
        update.index = old
        return update
    index.save(out)
    update.written = True
    return update


def _old_vectors(old: FaissIndex, shas: list[str | None]) -> dict[str, np.ndarray]:
    """sha256 -> stored feature vector, for the wanted hashes the previous index holds."""
    if "sha256" not in old.rows.columns:
        return {}
    wanted = set(h for h in shas if h)
    ids = {h: i for i, h in enumerate(old.rows["sha256"]) if isinstance(h, str) and h in wanted}
    if not ids:
        return {}
    vecs = old.features(list(ids.values()))
    return dict(zip(ids, vecs))


def _same(old: FaissIndex, new: FaissIndex) -> bool:
    """The same rows (paths, hashes, labels), default mode and spaces: nothing to write."""
    if len(old) != len(new) or old.default_mode != new.default_mode or old.kind != new.kind:
        return False
    if {k: v.digest() for k, v in old.spaces.items()} != {k: v.digest() for k, v in new.spaces.items()}:
        return False
    cols = sorted(set(old.rows.columns) | set(new.rows.columns))

    def cells(rows, c):
        return [str(v) if _present(v) else "" for v in rows[c]] if c in rows.columns else [""] * len(rows)

    return all(cells(old.rows, c) == cells(new.rows, c) for c in cols)
