"""Similar artworks: a FAISS index over L2-normalised embeddings (inner product = cosine).

Up to `HNSW_THRESHOLD` vectors an exact `IndexFlatIP` is both the best and fast enough (10k x 512
is a few ms per query); above it an HNSW graph keeps queries sub-linear at a small recall cost.

An index directory holds `index.faiss` (faiss' own serialisation, no pickle), `rows.parquet` (the
manifest rows, aligned with the vector ids) and `meta.json` (backbone, backbone id, dimension,
count, and the SHA-256 of the other two files). Each file is written atomically and `meta.json`
last, so a run killed half-way (kill -9, a full disk) never leaves an index that reads back as
valid: a new `index.faiss` beside old rows or an old `meta.json` fails its checksum on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "artlens-index"
VERSION = 1
INDEX_NAME, ROWS_NAME, META_NAME = "index.faiss", "rows.parquet", "meta.json"
HNSW_THRESHOLD = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
DUPLICATE_SIM = 0.99  # cosine above this: the same picture (re-encoded, resized, lightly cropped)
# Or: perceptual hashes within this many bits (the manifest's near-duplicate rule) and a cosine
# above PHASH_SIM (two different flat monochrome canvases can share a pHash).
PHASH_DISTANCE = 4
PHASH_SIM = 0.9

LABEL_COLUMNS = ("style", "artist", "genre", "origin", "generator")


class RetrievalError(ValueError):
    """An index directory that cannot be used, or a query that does not fit it (with the reason)."""


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


@dataclass
class Neighbour:
    rank: int
    id: int  # row in the index
    similarity: float  # cosine
    path: str | None
    sha256: str | None
    labels: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False  # the same artwork as the query (same bytes, same pHash, or cosine > DUPLICATE_SIM)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["similarity"] = round(self.similarity, 6)
        return d


class FaissIndex:
    """A FAISS index, the rows its vectors came from, and which backbone made them."""

    def __init__(self, index, rows, meta: dict[str, Any]):
        import pandas as pd

        if index.ntotal != len(rows):
            raise RetrievalError(f"index has {index.ntotal} vectors but {len(rows)} rows")
        self.index = index
        self.rows: pd.DataFrame = rows.reset_index(drop=True)
        self.meta = meta
        self._sha = None
        self._phash = None

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
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

    def __repr__(self) -> str:
        return f"FaissIndex({len(self)} x {self.dim}, {self.kind}, backbone_id={self.backbone_id!r})"

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
    ) -> "FaissIndex":
        """Index `vectors` (N, dim); `rows` (a DataFrame with N rows, e.g. manifest rows) go with them.

        `kind`: `flat` (exact), `hnsw`, or `auto` (flat up to `hnsw_threshold` vectors).
        Rows whose vector is not finite (failed embeddings) must be dropped before.
        """
        import faiss
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
        d = x.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            raise ValueError(f"unknown index kind {kind!r} (flat, hnsw or auto)")
        if len(x):
            index.add(x)
        from artlens import __version__

        meta = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "metric": "cosine",
            "dim": d,
            "count": len(x),
            "backbone": backbone,
            "backbone_id": backbone_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artlens_version": __version__,
        }
        if kind == "hnsw":
            meta["hnsw"] = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
        return cls(index, rows, meta)

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        import faiss

        from artlens.paths import atomic_write_bytes, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index_bytes = faiss.serialize_index(self.index).tobytes()
        buf = io.BytesIO()
        _rows_for_parquet(self.rows).to_parquet(buf, index=False)
        rows_bytes = buf.getvalue()
        self.meta["count"] = len(self)
        # meta.json goes last and names the exact bytes of the other two: until it is replaced,
        # a reader sees the old meta.json, whose checksums the new files do not match.
        self.meta["sha256"] = {INDEX_NAME: hashlib.sha256(index_bytes).hexdigest(), ROWS_NAME: hashlib.sha256(rows_bytes).hexdigest()}
        atomic_write_bytes(directory / INDEX_NAME, index_bytes)
        atomic_write_bytes(directory / ROWS_NAME, rows_bytes)
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
        _check_meta(meta, meta_path)
        for name in (INDEX_NAME, ROWS_NAME):
            if not (directory / name).is_file():
                raise RetrievalError(f"{directory}: missing {name}")
        raw = {name: (directory / name).read_bytes() for name in (INDEX_NAME, ROWS_NAME)}
        sums = meta.get("sha256")  # absent in indexes written before checksums were recorded

        def check_sum(name: str) -> None:
            if isinstance(sums, dict) and sums.get(name) != hashlib.sha256(raw[name]).hexdigest():
                raise RetrievalError(
                    f"{directory / name}: does not match {META_NAME} (written by an interrupted or "
                    "concurrent `artlens index` run?); rebuild the index"
                )

        # The checksum and the FAISS header are checked before faiss parses the file: a crafted
        # size field would otherwise make it allocate whatever the file claims.
        check_sum(INDEX_NAME)
        _check_faiss_layout(raw[INDEX_NAME], directory / INDEX_NAME, meta.get("dim"), meta["count"])
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
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(meta.get("hnsw", {}).get("efSearch", HNSW_EF_SEARCH))
        return cls(index, rows, meta)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(similarities (Q, k), ids (Q, k))` for (Q, dim) queries; ids are -1 past the end."""
        q = normalise(queries)
        if q.shape[1] != self.dim:
            raise RetrievalError(f"query has dimension {q.shape[1]}, index has {self.dim} (another backbone?)")
        k = max(1, min(int(k), len(self))) if len(self) else 1
        sims, ids = self.index.search(q, k)
        return sims, ids

    def _sha_list(self) -> list:
        if self._sha is None:
            self._sha = list(self.rows["sha256"]) if "sha256" in self.rows.columns else [None] * len(self)
        return self._sha

    def neighbours(
        self,
        query: np.ndarray,
        k: int = 5,
        *,
        query_sha256: str | None = None,
        query_phash: str | None = None,
        exclude: set[int] | None = None,
        exclude_duplicates: bool = False,
        duplicate_sim: float = DUPLICATE_SIM,
    ) -> list[Neighbour]:
        """The k nearest rows of one query vector, duplicates of the query marked (or left out)."""
        exclude = exclude or set()
        extra = len(exclude) + (8 if exclude_duplicates else 0)
        fetch = k + extra
        while True:
            sims, ids = self.search(np.asarray(query).reshape(1, -1), fetch)
            out = self._collect(sims[0], ids[0], k, query_sha256, query_phash, exclude, exclude_duplicates, duplicate_sim)
            # Asked to drop duplicates and there were more than expected: look further.
            if len(out) >= k or fetch >= len(self):
                return out
            fetch = min(len(self), fetch * 2)

    def _phash_list(self) -> list | None:
        if self._phash is None and "phash" in self.rows.columns:
            self._phash = [_phash_int(v) for v in self.rows["phash"]]
        return self._phash

    def _collect(self, sims, ids, k, query_sha256, query_phash, exclude, exclude_duplicates, duplicate_sim) -> list[Neighbour]:
        shas = self._sha_list()
        qp = _phash_int(query_phash)
        phashes = self._phash_list() if qp is not None else None
        cols = [c for c in self.rows.columns if c in LABEL_COLUMNS]
        out: list[Neighbour] = []
        for sim, i in zip(sims, ids):
            i = int(i)
            if i < 0 or i in exclude:
                continue
            sha = shas[i] if isinstance(shas[i], str) else None
            dup = bool((query_sha256 and sha == query_sha256) or sim > duplicate_sim)
            if not dup and phashes is not None and phashes[i] is not None and sim > PHASH_SIM:
                dup = bin(qp ^ phashes[i]).count("1") <= PHASH_DISTANCE
            if dup and exclude_duplicates:
                continue
            row = self.rows.iloc[i]
            labels = {c: str(row[c]) for c in cols if _present(row[c])}
            path = row["path"] if "path" in self.rows.columns and _present(row["path"]) else None
            out.append(Neighbour(len(out) + 1, i, min(1.0, float(sim)), path, sha, labels, dup))
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


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a registry backbone name: no path parts
_MAX_DIM = 1 << 16


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_meta(meta, path: Path) -> None:
    """Refuse a meta.json whose fields have the wrong type or range, naming the field."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RetrievalError(f"{path}: not an artlens index")

    def bad(field: str, why: str):
        raise RetrievalError(f"{path}: field {field!r} {why}")

    version = meta.get("version", 0)
    if not _is_int(version):
        bad("version", f"is not an integer ({version!r:.40})")
    if version > VERSION:
        raise RetrievalError(f"{path.parent}: index version {version} is newer than this artlens")
    count = meta.get("count")
    if not _is_int(count) or count < 0:
        bad("count", f"is not a non-negative integer ({count!r:.40})")
    dim = meta.get("dim")
    if dim is not None and (not _is_int(dim) or not 0 < dim <= _MAX_DIM):
        bad("dim", f"is not an integer in 1..{_MAX_DIM} ({dim!r:.40})")
    backbone = meta.get("backbone")
    if backbone is not None and not (isinstance(backbone, str) and _NAME.match(backbone) and ".." not in backbone):
        bad("backbone", f"is not a backbone name ({backbone!r:.40})")
    for key in ("backbone_id", "kind"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            bad(key, "is not a string")
    sums = meta.get("sha256")
    if sums is not None and not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())):
        bad("sha256", "is not an object of hex digests")
    hnsw = meta.get("hnsw")
    if hnsw is not None and not (isinstance(hnsw, dict) and _is_int(hnsw.get("efSearch", HNSW_EF_SEARCH))
                                 and 0 < hnsw.get("efSearch", HNSW_EF_SEARCH) <= 1 << 16):
        bad("hnsw", "needs an integer efSearch")


class _Layout(Exception):
    pass


def _check_faiss_layout(data: bytes, path: Path, dim: int | None, count: int) -> None:
    """Walk the serialised index types artlens writes (IndexFlatIP, IndexHNSWFlat) and check
    every size field against the bytes actually there, and the header against meta.json."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise _Layout(f"truncated at byte {pos} (needs {n} more, the file has {len(data)})")
        pos += n
        return data[pos - n:pos]

    def vector(item: int, what: str) -> int:
        (n,) = struct.unpack("<Q", take(8))
        if n > (len(data) - pos) // item:
            raise _Layout(f"{what} claims {n} items, more than the file's {len(data)} bytes hold")
        take(n * item)
        return n

    def header() -> tuple[bytes, int]:
        fourcc = take(4)
        d, ntotal = struct.unpack("<iq", take(12))
        take(17)  # two unused int64, is_trained
        (metric,) = struct.unpack("<i", take(4))
        if metric > 1:
            take(4)  # metric_arg
        if not 0 < d <= _MAX_DIM:
            raise _Layout(f"header dimension {d} is out of range")
        if dim is not None and d != dim:
            raise _Layout(f"header dimension {d}, meta.json 'dim' says {dim}")
        if ntotal != count:
            raise _Layout(f"header count {ntotal}, meta.json 'count' says {count}")
        return fourcc, d

    def flat(d: int) -> None:
        if vector(4, "vector data") != d * count:
            raise _Layout(f"vector data is not {count} x {d} floats")

    try:
        fourcc, d = header()
        if fourcc == b"IHNf":
            for item, what in ((8, "assign_probas"), (4, "cum_nneighbor_per_level"), (4, "levels"),
                               (8, "offsets"), (4, "neighbors")):
                vector(item, f"HNSW {what}")
            take(20)  # entry_point, max_level, efConstruction, efSearch, unused
            fourcc, d = header()
        if fourcc not in (b"IxFI", b"IxF2"):
            raise _Layout(f"index type {fourcc!r} is not one artlens writes")
        flat(d)
        if pos != len(data):
            raise _Layout(f"{len(data) - pos} bytes after the end of the index")
    except (_Layout, struct.error) as exc:
        raise RetrievalError(f"{path}: not a valid index file ({exc})") from None


# --------------------------------------------------------------------------- building from data
def index_embeddings(
    df,
    backbone: str = "clip-vit-b16",
    *,
    store_root=None,
    backbone_state=None,
    preprocessing=None,
    kind: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
):
    """Embed a manifest (reusing the embedding store) and index the rows that worked.

    Returns `(FaissIndex, errors)`: errors is a DataFrame `path, reason` for rows left out.
    `preprocessing`: a fine-tuned model's own (config.json), for its `backbone_state`.
    """
    from artlens.embed import embed_manifest, get_encoder

    encoder = get_encoder(backbone, backbone_state=backbone_state, preprocessing=preprocessing)
    vectors, ok, errors = embed_manifest(
        df, encoder, store_root=store_root, batch_size=batch_size, workers=workers, progress=progress
    )[:3]
    rows = df.loc[ok].reset_index(drop=True) if hasattr(df, "loc") else None
    idx = FaissIndex.build(vectors[ok], rows, backbone=backbone, backbone_id=encoder.backbone_id, kind=kind)
    if backbone_state:
        idx.meta["finetuned"] = True
    return idx, errors


def index_from_store(store_dir: str | Path, df, backbone: str | None = None, kind: str = "auto"):
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
    idx = FaissIndex.build(vectors[found], rows, backbone=backbone or info.get("backbone"), backbone_id=backbone_id, kind=kind)
    return idx, df.loc[~found].reset_index(drop=True)


# --------------------------------------------------------------------------- queries
def similar(
    index: "FaissIndex | str | Path",
    query,
    k: int = 5,
    *,
    encoder=None,
    query_sha256: str | None = None,
    exclude_duplicates: bool = False,
    duplicate_sim: float = DUPLICATE_SIM,
) -> list[Neighbour]:
    """The k artworks most similar to `query`: a vector (dim,), a PIL image, or an image path.

    Images are embedded with `encoder` (default: the index's backbone encoder), which must be the
    one that made the index (same backbone id) or the similarities would mean nothing. The query's
    own file (same sha256) and near-copies (cosine > `duplicate_sim`, or a pHash within
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
        vector, k, query_sha256=query_sha256, query_phash=query_phash,
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
