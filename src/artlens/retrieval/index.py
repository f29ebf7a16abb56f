"""Similar artworks: a FAISS index over L2-normalised encoder features (inner product = cosine),
searched in one of its spaces (`artlens.retrieval.spaces`): `style`, `artist`, `visual`, or the
raw `features`. A space's vectors are projected from the stored features the first time it is
searched (thousands of rows: milliseconds), so one index serves every mode.

Up to `HNSW_THRESHOLD` vectors an exact `IndexFlatIP` is both the best and fast enough (10k x 512
is a few ms per query); above it an HNSW graph keeps queries sub-linear at a small recall cost.

An index directory holds `index.faiss` (faiss' own serialisation, no pickle), `rows.parquet` (the
manifest rows, aligned with the vector ids), `spaces.safetensors` (the projections it was built
with, when any) and `meta.json` (backbone, backbone id, dimension, count, default mode, and the
SHA-256 of the other files). Each file is written atomically and `meta.json` last, so a run killed
half-way (kill -9, a full disk) never leaves an index that reads back as valid: a new
`index.faiss` beside old rows or an old `meta.json` fails its checksum on load.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from artlens.retrieval.checks import FORMAT, HNSW_EF_SEARCH, VERSION, check_faiss_layout, check_meta
from artlens.retrieval.errors import RetrievalError
from artlens.retrieval.spaces import Space, default_mode_of, default_spaces, read_spaces, spaces_bytes

INDEX_NAME, ROWS_NAME, META_NAME, SPACES_NAME = "index.faiss", "rows.parquet", "meta.json", "spaces.safetensors"
FEATURES = "features"  # the mode that searches the encoder features as they are
HNSW_THRESHOLD = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
DUPLICATE_SIM = 0.99  # feature cosine above this: the same picture (re-encoded, resized, lightly cropped)
# Or: perceptual hashes within this many bits (the manifest's near-duplicate rule) and a cosine
# above PHASH_SIM (two different flat monochrome canvases can share a pHash).
PHASH_DISTANCE = 4
PHASH_SIM = 0.9

LABEL_COLUMNS = ("style", "artist", "genre", "origin", "generator")

__all__ = ["DUPLICATE_SIM", "FEATURES", "HNSW_THRESHOLD", "FaissIndex", "Neighbour", "RetrievalError", "image_phash"]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, each row of unit length (FAISS inner product is then cosine)."""
    import faiss

    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"vectors must be (N, dim), got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


def _new_faiss(d: int, kind: str):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    raise ValueError(f"unknown index kind {kind!r} (flat, hnsw or auto)")


@dataclass
class Neighbour:
    rank: int
    id: int  # row in the index
    similarity: float  # cosine in the space searched
    path: str | None
    sha256: str | None
    labels: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False  # the same artwork as the query (same bytes, same pHash, or feature cosine > DUPLICATE_SIM)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["similarity"] = round(self.similarity, 6)
        return d


class FaissIndex:
    """A FAISS index of encoder features, the rows they came from, which backbone made them, and
    the spaces (search modes) it can be searched in."""

    def __init__(self, index, rows, meta: dict[str, Any], spaces: dict[str, Space] | None = None):
        if index.ntotal != len(rows):
            raise RetrievalError(f"index has {index.ntotal} vectors but {len(rows)} rows")
        self.index = index
        self.rows = rows.reset_index(drop=True)
        self.meta = meta
        self.spaces: dict[str, Space] = dict(spaces or {})
        for name, space in self.spaces.items():
            if space.in_dim != self.dim:
                raise RetrievalError(f"space {name!r} takes {space.in_dim}-d features, the index holds {self.dim}-d")
        self._stored_spaces = bool(spaces)
        self._mode_indexes: dict[str, Any] = {}
        self._sha = None
        self._phash = None

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Dimension of the encoder features it holds (what queries must have)."""
        return int(self.index.d)

    @property
    def backbone(self) -> str | None:
        return self.meta.get("backbone")

    @property
    def backbone_id(self) -> str | None:
        return self.meta.get("backbone_id")

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "flat")

    @property
    def modes(self) -> list[str]:
        return [*self.spaces, FEATURES]

    @property
    def default_mode(self) -> str:
        mode = self.meta.get("default_mode")
        return mode if mode in self.modes else FEATURES

    def __repr__(self) -> str:
        return f"FaissIndex({len(self)} x {self.dim}, {self.kind}, modes={self.modes}, backbone_id={self.backbone_id!r})"

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        rows=None,
        *,
        backbone: str | None = None,
        backbone_id: str | None = None,
        kind: str = "auto",
        hnsw_threshold: int = HNSW_THRESHOLD,
        spaces: dict[str, Space] | None = None,
        default_mode: str | None = None,
    ) -> "FaissIndex":
        """Index encoder features `vectors` (N, dim); `rows` (a DataFrame with N rows, e.g. manifest
        rows) go with them. `spaces`: the search modes it is built with (saved with it); without,
        the backbone's shipped ones are used on load. `default_mode`: what `neighbours` searches
        unless told (default: raw features; `auto`: the spaces' best, the backbone's shipped spaces
        stored with the index when none are given).

        `kind`: `flat` (exact), `hnsw`, or `auto` (flat up to `hnsw_threshold` vectors).
        Rows whose vector is not finite (failed embeddings) must be dropped before.
        """
        import pandas as pd

        x = normalise(vectors)
        if not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
            raise ValueError(f"{len(bad)} vectors are not finite (first at row {bad[0]}); drop failed rows first")
        if rows is None:
            rows = pd.DataFrame({"path": [None] * len(x)})
        if len(rows) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(rows)} rows")
        if kind == "auto":
            kind = "hnsw" if len(x) > hnsw_threshold else "flat"
        index = _new_faiss(x.shape[1], kind)
        if len(x):
            index.add(x)
        from artlens import __version__

        meta = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "metric": "cosine",
            "dim": int(x.shape[1]),
            "count": len(x),
            "backbone": backbone,
            "backbone_id": backbone_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artlens_version": __version__,
        }
        if kind == "hnsw":
            meta["hnsw"] = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
        idx = cls(index, rows, meta, spaces)
        if not spaces:
            idx._add_shipped_spaces()  # stored with the index when it is searched in one by default
            idx._stored_spaces = default_mode not in (None, FEATURES) and bool(idx.spaces)
        if default_mode == "auto":
            default_mode = default_mode_of(idx.spaces)
        if default_mode is not None:
            if default_mode not in idx.modes:
                raise RetrievalError(f"cannot search {backbone or 'these'} embeddings by {default_mode!r}; modes: {', '.join(idx.modes)}")
            meta["default_mode"] = default_mode
        return idx

    def _add_shipped_spaces(self) -> None:
        if self.backbone:
            shipped = default_spaces(self.backbone, self.dim, finetuned=bool(self.meta.get("finetuned")))
            self.spaces.update({k: v for k, v in shipped.items() if k not in self.spaces})

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        import faiss

        from artlens.paths import atomic_write_bytes, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {INDEX_NAME: faiss.serialize_index(self.index).tobytes()}
        buf = io.BytesIO()
        _rows_for_parquet(self.rows).to_parquet(buf, index=False)
        files[ROWS_NAME] = buf.getvalue()
        if self._stored_spaces:
            files[SPACES_NAME] = spaces_bytes(self.spaces, backbone=self.backbone, backbone_id=self.backbone_id)
        self.meta["count"] = len(self)
        # meta.json goes last and names the exact bytes of the others: until it is replaced,
        # a reader sees the old meta.json, whose checksums the new files do not match.
        self.meta["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        for name, data in files.items():
            atomic_write_bytes(directory / name, data)
        if not self._stored_spaces:
            (directory / SPACES_NAME).unlink(missing_ok=True)
        atomic_write_text(directory / META_NAME, json.dumps(self.meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FaissIndex":
        import faiss
        import pandas as pd

        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise RetrievalError(f"{directory}: not an index directory (no {META_NAME})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RetrievalError(f"{meta_path}: not valid JSON ({exc})") from None
        check_meta(meta, meta_path)
        sums = meta.get("sha256")  # absent in indexes written before checksums were recorded
        names = [INDEX_NAME, ROWS_NAME] + ([SPACES_NAME] if isinstance(sums, dict) and SPACES_NAME in sums else [])
        for name in names:
            if not (directory / name).is_file():
                raise RetrievalError(f"{directory}: missing {name}")
        raw = {name: (directory / name).read_bytes() for name in names}

        def check_sum(name: str) -> None:
            if isinstance(sums, dict) and sums.get(name) != hashlib.sha256(raw[name]).hexdigest():
                raise RetrievalError(
                    f"{directory / name}: does not match {META_NAME} (written by an interrupted or "
                    "concurrent `artlens index` run?); rebuild the index"
                )

        # The checksum and the FAISS header are checked before faiss parses the file: a crafted
        # size field would otherwise make it allocate whatever the file claims.
        check_sum(INDEX_NAME)
        check_faiss_layout(raw[INDEX_NAME], directory / INDEX_NAME, meta.get("dim"), meta["count"])
        try:
            index = faiss.deserialize_index(np.frombuffer(raw[INDEX_NAME], dtype=np.uint8))
        except (RuntimeError, MemoryError) as exc:
            raise RetrievalError(f"{directory / INDEX_NAME}: not a FAISS index ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        try:
            rows = pd.read_parquet(io.BytesIO(raw[ROWS_NAME]))
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise RetrievalError(f"{directory / ROWS_NAME}: unreadable ({exc})") from None
        if index.ntotal != len(rows) or index.ntotal != meta["count"]:
            raise RetrievalError(
                f"{directory}: index has {index.ntotal} vectors, rows.parquet {len(rows)}, meta.json says "
                f"{meta.get('count')} (written by two different runs?)"
            )
        check_sum(ROWS_NAME)
        spaces = None
        if SPACES_NAME in raw:
            check_sum(SPACES_NAME)
            spaces = read_spaces(raw[SPACES_NAME], directory / SPACES_NAME)[1]
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(meta.get("hnsw", {}).get("efSearch", HNSW_EF_SEARCH))
        idx = cls(index, rows, meta, spaces)
        if spaces is None:
            idx._add_shipped_spaces()
        return idx

    # ------------------------------------------------------------------ search
    def mode(self, by: str | None) -> str:
        """The mode `by` names (None: the index's default), or `RetrievalError` listing the others."""
        by = self.default_mode if by is None else by
        if by not in self.modes:
            raise RetrievalError(f"this index cannot search by {by!r}; it has: {', '.join(self.modes)}")
        return by

    def project(self, features: np.ndarray, by: str | None = None) -> np.ndarray:
        """Encoder features (N, dim) as the unit vectors mode `by` compares."""
        by = self.mode(by)
        q = normalise(features)
        if q.shape[1] != self.dim:
            raise RetrievalError(f"query has dimension {q.shape[1]}, index has {self.dim} (another backbone?)")
        return q if by == FEATURES else normalise(self.spaces[by].project(q))

    def features(self, ids=None) -> np.ndarray:
        """The stored (unit) feature vectors of rows `ids` (default: all)."""
        if ids is None:
            return self.index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def _faiss_for(self, by: str):
        if by == FEATURES:
            return self.index
        if by not in self._mode_indexes:
            x = self.project(self.features(), by) if len(self) else np.zeros((0, self.spaces[by].dim), np.float32)
            index = _new_faiss(x.shape[1], self.kind)
            if len(x):
                index.add(x)
            self._mode_indexes[by] = index
        return self._mode_indexes[by]

    def search(self, queries: np.ndarray, k: int, by: str = FEATURES) -> tuple[np.ndarray, np.ndarray]:
        """`(similarities (Q, k), ids (Q, k))` for (Q, dim) encoder features, compared in mode `by`
        (default: the features themselves); ids are -1 past the end."""
        by = self.mode(by)
        q = self.project(queries, by)
        k = max(1, min(int(k), len(self))) if len(self) else 1
        return self._faiss_for(by).search(q, k)

    def neighbours(
        self,
        query: np.ndarray,
        k: int = 5,
        *,
        by: str | None = None,
        query_sha256: str | None = None,
        query_phash: str | None = None,
        exclude: set[int] | None = None,
        exclude_duplicates: bool = False,
        duplicate_sim: float = DUPLICATE_SIM,
    ) -> list[Neighbour]:
        """The k nearest rows of one query's encoder features in mode `by` (default: the index's
        default mode), duplicates of the query marked (or left out)."""
        by = self.mode(by)
        query = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))
        exclude = exclude or set()
        fetch = k + len(exclude) + (8 if exclude_duplicates else 0)
        while True:
            sims, ids = self.search(query, fetch, by)
            out = self._collect(query[0], sims[0], ids[0], k, query_sha256, query_phash, exclude, exclude_duplicates, duplicate_sim)
            # Asked to drop duplicates and there were more than expected: look further.
            if len(out) >= k or fetch >= len(self):
                return out
            fetch = min(len(self), fetch * 2)

    def _sha_list(self) -> list:
        if self._sha is None:
            self._sha = list(self.rows["sha256"]) if "sha256" in self.rows.columns else [None] * len(self)
        return self._sha

    def _phash_list(self) -> list | None:
        if self._phash is None and "phash" in self.rows.columns:
            self._phash = [_phash_int(v) for v in self.rows["phash"]]
        return self._phash

    def _collect(self, q, sims, ids, k, query_sha256, query_phash, exclude, exclude_duplicates, duplicate_sim) -> list[Neighbour]:
        shas = self._sha_list()
        qp = _phash_int(query_phash)
        phashes = self._phash_list() if qp is not None else None
        cols = [c for c in self.rows.columns if c in LABEL_COLUMNS]
        keep = [(float(s), int(i)) for s, i in zip(sims, ids) if int(i) >= 0 and int(i) not in exclude]
        # Copies are judged on the features, whatever the mode ranks by.
        feature_sims = self.features([i for _, i in keep]) @ q if keep else np.zeros(0, np.float32)
        out: list[Neighbour] = []
        for (sim, i), fsim in zip(keep, feature_sims):
            sha = shas[i] if isinstance(shas[i], str) else None
            dup = bool((query_sha256 and sha == query_sha256) or fsim > duplicate_sim)
            if not dup and phashes is not None and phashes[i] is not None and fsim > PHASH_SIM:
                dup = bin(qp ^ phashes[i]).count("1") <= PHASH_DISTANCE
            if dup and exclude_duplicates:
                continue
            row = self.rows.iloc[i]
            labels = {c: str(row[c]) for c in cols if _present(row[c])}
            path = row["path"] if "path" in self.rows.columns and _present(row["path"]) else None
            out.append(Neighbour(len(out) + 1, i, min(1.0, sim), path, sha, labels, dup))
            if len(out) == k:
                break
        return out


def _phash_int(v) -> int | None:
    try:
        return int(str(v), 16) if v is not None and str(v) else None
    except ValueError:
        return None


def image_phash(img) -> str:
    """The manifest's perceptual hash (imagehash.phash, hex) of a PIL image."""
    import imagehash

    return str(imagehash.phash(img))


def _present(v) -> bool:
    import pandas as pd

    return v is not None and not (isinstance(v, float) and np.isnan(v)) and v is not pd.NA and str(v) != ""


def _rows_for_parquet(rows):
    """Parquet needs one type per column; object columns of mixed types become strings."""
    out = rows.copy()
    for c in out.columns:
        if out[c].dtype == object:
            kinds = {type(v) for v in out[c] if v is not None and not (isinstance(v, float) and np.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bytes}):
                out[c] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in out[c]]
    return out


