"""Embeddings exported with the rows they belong to (what `artlens embed --out` writes).

Three shapes, chosen by the path:
- `NAME.npy`: the vectors; `NAME.rows.parquet` the manifest rows (row i <-> vector i);
  `NAME.json` the backbone id, dimension and counts.
- `NAME.parquet`: one table, the manifest rows plus an `embedding` column (float32 lists); the
  info JSON sits in the Parquet schema metadata under `artlens`.
- anything else is a directory: `vectors.npy`, `rows.parquet`, `embedding.json`.
Every file is written atomically. No pickles: `.npy` is saved and loaded with allow_pickle=False.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from artlens.paths import atomic_write_bytes, atomic_write_text

INFO_FORMAT = "artlens-embeddings"


def _paths(path: Path) -> tuple[str, Path, Path, Path]:
    if path.suffix == ".npy":
        return "npy", path, path.with_name(path.stem + ".rows.parquet"), path.with_name(path.stem + ".json")
    if path.suffix == ".parquet":
        return "parquet", path, path, path
    return "dir", path / "vectors.npy", path / "rows.parquet", path / "embedding.json"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def save_embeddings(path: str | os.PathLike, rows, vectors: np.ndarray, info: dict[str, Any]) -> Path:
    """Write `vectors` (N, dim) with their `rows` (a DataFrame of N rows) and `info`; returns `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(rows) != len(vectors):
        raise ValueError(f"{len(rows)} rows but {len(vectors)} vectors")
    info = {"format": INFO_FORMAT, "version": 1, "count": int(len(vectors)), "dim": int(vectors.shape[1]), **info}
    kind, vec_path, rows_path, info_path = _paths(path)
    rows = rows.reset_index(drop=True)
    if kind == "parquet":
        table = pa.Table.from_pandas(rows, preserve_index=False)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"artlens": json.dumps(info).encode()})
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        atomic_write_bytes(path, buf.getvalue().to_pybytes())
        return path
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False)
    atomic_write_bytes(vec_path, _npy_bytes(vectors))
    atomic_write_bytes(rows_path, buf.getvalue())
    atomic_write_text(info_path, json.dumps(info, indent=2, default=str) + "\n")
    return path


def load_embeddings(path: str | os.PathLike):
    """`(rows DataFrame, vectors (N, dim) float32, info dict)` from what `save_embeddings` wrote."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(path)
    kind, vec_path, rows_path, info_path = _paths(path)
    if kind == "parquet":
        table = pq.read_table(path)
        info = json.loads((table.schema.metadata or {}).get(b"artlens", b"{}"))
        emb = table.column("embedding").combine_chunks()
        vectors = emb.flatten().to_numpy().astype(np.float32).reshape(len(table), -1)
        rows = table.drop(["embedding"]).to_pandas()
        return rows, vectors, info
    vectors = np.load(vec_path, allow_pickle=False)
    rows = pd.read_parquet(rows_path)
    info = json.loads(Path(info_path).read_text())
    if len(rows) != len(vectors):
        raise ValueError(f"{path}: {len(rows)} rows but {len(vectors)} vectors")
    return rows, vectors, info
