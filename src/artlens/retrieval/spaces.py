"""Retrieval spaces: what "similar" means. A space maps encoder features (N, in_dim) to the vectors
an index compares by cosine.

- `visual`: CLIP's image embedding alone (the first 512 values of clip-vit-b16's features; other
  backbones' features as they are): pictures that look alike.
- `style`, `artist`: the image embedding beside a small projection learned from labels (linear
  discriminant analysis of the whole feature vector, after PCA), each block unit length and
  weighted. The projection pulls paintings of one style (or one hand) together; the image
  embedding keeps the neighbours visually close within it.

The projections shipped with artlens (`artlens/default/retrieval.safetensors`, written by
`scripts/build_retrieval_spaces.py` from ../shared's WikiArt) were chosen by
`benchmarks/retrieval_quality.py` on queries by artists the projection never saw. A space is a
list of linear blocks, so it is stored as plain arrays (safetensors, no pickle) and applied to one
query in microseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artlens.metrics import l2_normalize
from artlens.retrieval.errors import RetrievalError

MODES = ("style", "artist", "visual")
DEFAULT_MODE = "style"
SPACES_FORMAT = "artlens-spaces"
SPACES_VERSION = 1
SHIPPED_NAME = "retrieval.safetensors"
# Chosen by benchmarks/retrieval_quality.py (artist-grouped folds of ../shared's WikiArt).
LDA_PCA_DIM = 512
LDA_SHRINKAGE = 0.1
LDA_WEIGHT = 1.5
ARTIST_MIN_WORKS = 10  # an artist needs this many paintings to shape the artist space
_MAX_DIM = 1 << 16
MATRIX_DTYPES = ("float32", "float16")  # how a file may store the projections (read back as float32)


class SpaceError(RetrievalError):
    """A space file that cannot be used, or features that do not fit a space."""


@dataclass
class Block:
    """Values `start:stop` of the features, unit length, minus `mean`, times `matrix`, unit length,
    times `weight`."""

    start: int
    stop: int
    weight: float = 1.0
    mean: np.ndarray | None = None  # (stop - start,)
    matrix: np.ndarray | None = None  # (stop - start, out)

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[1]) if self.matrix is not None else self.stop - self.start

    def project(self, x: np.ndarray) -> np.ndarray:
        z = l2_normalize(x[:, self.start : self.stop])
        if self.mean is not None:
            z = z - self.mean
        if self.matrix is not None:
            z = z @ self.matrix
        return l2_normalize(z) * np.float32(self.weight)


@dataclass
class Space:
    """Encoder features (N, in_dim) -> search vectors (N, dim); FAISS normalises them after."""

    name: str
    in_dim: int
    blocks: list[Block]
    info: dict[str, Any] = field(default_factory=dict)  # what it was fitted on

    @property
    def dim(self) -> int:
        return sum(b.out_dim for b in self.blocks)

    @property
    def learned(self) -> bool:
        return any(b.matrix is not None for b in self.blocks)

    def project(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise SpaceError(f"space {self.name!r} takes {self.in_dim}-d features, got shape {x.shape}")
        return np.ascontiguousarray(np.concatenate([b.project(x) for b in self.blocks], axis=1), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "in_dim": self.in_dim, "dim": self.dim,
                "blocks": [{"start": b.start, "stop": b.stop, "weight": b.weight, "mean": b.mean is not None,
                            "matrix": b.matrix is not None} for b in self.blocks], "info": self.info}

    def digest(self) -> str:
        """SHA-256 of the layout and every array: equal digests, equal projections."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        for b in self.blocks:
            for arr in (b.mean, b.matrix):
                h.update(b"-" if arr is None else np.ascontiguousarray(arr, np.float32).tobytes())
        return h.hexdigest()

    @classmethod
    def identity(cls, name: str, dim: int) -> "Space":
        return cls(name, int(dim), [Block(0, int(dim))])


# --------------------------------------------------------------------------- which spaces
def image_embedding_block(backbone: str | None, in_dim: int) -> tuple[int, int]:
    """Where the backbone's image embedding sits in its features: CLIP's first 512 values, else all."""
    from artlens.models.clip import BACKBONE_NAME, CLIP_EMBED_DIM, CLIP_FEATURE_DIM

    if backbone == BACKBONE_NAME and in_dim == CLIP_FEATURE_DIM:
        return 0, CLIP_EMBED_DIM
    return 0, int(in_dim)


def visual_space(backbone: str | None, in_dim: int) -> Space:
    start, stop = image_embedding_block(backbone, in_dim)
    return Space("visual", int(in_dim), [Block(start, stop)], {"fitted": False})


def fit_label_space(
    name: str,
    features: np.ndarray,
    labels,
    *,
    backbone: str | None = None,
    pca_dim: int = LDA_PCA_DIM,
    shrinkage: float = LDA_SHRINKAGE,
    weight: float = LDA_WEIGHT,
    min_per_class: int = 2,
) -> Space:
    """The image embedding beside an LDA projection of the features, fitted on `labels` (rows with
    no label, or a class of fewer than `min_per_class` rows, are left out of the fit)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = np.asarray(features, dtype=np.float32)
    y = np.array([str(v) if isinstance(v, str) and v else "" for v in labels], dtype=object)
    classes, counts = np.unique(y[y != ""], return_counts=True)
    keep_classes = set(classes[counts >= min_per_class])
    keep = np.array([v in keep_classes for v in y], dtype=bool)
    if len(keep_classes) < 2:
        raise SpaceError(f"space {name!r}: needs 2 or more labels with {min_per_class}+ rows each, has {len(keep_classes)}")
    z = l2_normalize(x[keep])
    pca = PCA(n_components=min(pca_dim, z.shape[1], len(z) - 1), svd_solver="covariance_eigh", random_state=0).fit(z)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(pca.transform(z), y[keep])
    n_out = min(len(keep_classes) - 1, pca.n_components_)
    comps = pca.components_.astype(np.float64)  # (p, in_dim), orthonormal rows
    # lda.transform(pca.transform(v)) = (v - pca.mean_) @ comps.T @ scalings: one block
    matrix = (comps.T @ lda.scalings_[:, :n_out]).astype(np.float32)
    mean = pca.mean_.astype(np.float32)
    start, stop = image_embedding_block(backbone, x.shape[1])
    blocks = [Block(start, stop), Block(0, x.shape[1], float(weight), mean, matrix)]
    info = {"fitted": True, "labels": name, "classes": len(keep_classes), "rows": int(keep.sum()),
            "pca_dim": int(pca.n_components_), "shrinkage": shrinkage}
    return Space(name, int(x.shape[1]), blocks, info)


def shipped_spaces_path() -> Path:
    from artlens import default_model_dir

    return default_model_dir() / SHIPPED_NAME


def default_spaces(backbone: str | None, in_dim: int, *, finetuned: bool = False) -> dict[str, Space]:
    """`visual` always; `style` and `artist` from the projections shipped for this backbone (not for
    fine-tuned weights, whose features differ)."""
    spaces = {"visual": visual_space(backbone, in_dim)}
    path = shipped_spaces_path()
    if not finetuned and path.is_file():
        meta, shipped = read_spaces(path.read_bytes(), path)
        if meta.get("backbone") == backbone:
            spaces.update({k: v for k, v in shipped.items() if v.in_dim == in_dim and k != "visual"})
    return ordered(spaces)


def ordered(spaces: dict[str, Space]) -> dict[str, Space]:
    """`spaces` in `MODES` order (style, artist, visual), others after by name."""
    return {k: spaces[k] for k in sorted(spaces, key=lambda k: (MODES.index(k) if k in MODES else len(MODES), k))}


def default_mode_of(spaces) -> str:
    """`style` where the spaces have it (the mode chosen by retrieval quality), else `visual`, else
    the raw features."""
    return DEFAULT_MODE if DEFAULT_MODE in spaces else "visual" if "visual" in spaces else "features"


# --------------------------------------------------------------------------- files
def spaces_bytes(spaces: dict[str, Space], *, matrix_dtype: str = "float32", **meta: Any) -> bytes:
    """One safetensors file holding every space: arrays as tensors, the rest as JSON metadata.

    `matrix_dtype`: `float16` halves the file (the shipped projections: their retrieval results are
    unchanged); means stay float32, and `read_spaces` gives float32 either way."""
    from safetensors.numpy import save

    if matrix_dtype not in MATRIX_DTYPES:
        raise ValueError(f"matrix_dtype is one of {', '.join(MATRIX_DTYPES)}, not {matrix_dtype!r}")
    tensors: dict[str, np.ndarray] = {}
    described = {}
    for name, space in spaces.items():
        described[name] = space.describe()
        for i, b in enumerate(space.blocks):
            if b.mean is not None:
                tensors[f"{name}.{i}.mean"] = np.ascontiguousarray(b.mean, np.float32)
            if b.matrix is not None:
                tensors[f"{name}.{i}.matrix"] = np.ascontiguousarray(b.matrix, matrix_dtype)
    # One metadata entry: safetensors writes several in no fixed order, one keeps the bytes reproducible.
    header = {"artlens": json.dumps({"format": SPACES_FORMAT, "version": SPACES_VERSION, "spaces": described,
                                     "meta": meta}, sort_keys=True, default=str)}
    if not tensors:  # safetensors wants at least one tensor
        tensors["_"] = np.zeros(1, np.float32)
    return save(tensors, metadata=header)


def read_spaces(data: bytes, where: Path | str) -> tuple[dict[str, Any], dict[str, Space]]:
    """`(meta, spaces)` from `spaces_bytes`; every field and shape checked, `SpaceError` naming `where`."""
    from safetensors.numpy import load

    def bad(why: str):
        raise SpaceError(f"{where}: {why}")

    try:
        tensors = load(data)
        header = json.loads(_safetensors_metadata(data).get("artlens", "{}"))
    except Exception as exc:  # safetensors raises its own types for damaged headers
        bad(f"not a spaces file ({type(exc).__name__}: {str(exc)[:200]})")
    if not isinstance(header, dict) or header.get("format") != SPACES_FORMAT:
        bad("not an artlens spaces file")
    if not isinstance(header.get("version"), int) or header["version"] > SPACES_VERSION:
        bad(f"version {header.get('version')!r:.20} is not one this artlens reads")
    described, meta = header.get("spaces"), header.get("meta", {})
    if not isinstance(described, dict) or not isinstance(meta, dict):
        bad("metadata is not an object")
    spaces = {}
    for name, d in described.items():
        try:
            in_dim = d["in_dim"]
            if not (isinstance(in_dim, int) and 0 < in_dim <= _MAX_DIM):
                raise ValueError(f"in_dim {in_dim!r:.40}")
            blocks = []
            for i, bd in enumerate(d["blocks"]):
                start, stop, weight = bd["start"], bd["stop"], bd["weight"]
                if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= in_dim):
                    raise ValueError(f"block {i} range {start!r:.20}:{stop!r:.20}")
                if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
                    raise ValueError(f"block {i} weight {weight!r:.20}")
                mean = tensors.get(f"{name}.{i}.mean") if bd.get("mean") else None
                matrix = tensors.get(f"{name}.{i}.matrix") if bd.get("matrix") else None
                width = stop - start
                if bd.get("mean") and (mean is None or mean.shape != (width,)):
                    raise ValueError(f"block {i} mean is not ({width},)")
                if bd.get("matrix") and (matrix is None or matrix.ndim != 2 or matrix.shape[0] != width
                                         or not 0 < matrix.shape[1] <= _MAX_DIM):
                    raise ValueError(f"block {i} matrix is not ({width}, out)")
                if mean is not None and mean.dtype != np.float32:
                    raise ValueError(f"block {i} mean is {mean.dtype}, not float32")
                if matrix is not None:
                    if matrix.dtype.name not in MATRIX_DTYPES:
                        raise ValueError(f"block {i} matrix is {matrix.dtype}, not {' or '.join(MATRIX_DTYPES)}")
                    matrix = matrix.astype(np.float32)
                for arr in (mean, matrix):
                    if arr is not None and not np.isfinite(arr).all():
                        raise ValueError(f"block {i} holds values that are not finite")
                blocks.append(Block(start, stop, float(weight), mean, matrix))
            if not blocks:
                raise ValueError("no blocks")
            info = d.get("info") if isinstance(d.get("info"), dict) else {}
        except (KeyError, TypeError, ValueError) as exc:
            bad(f"space {str(name)[:40]!r}: {exc}")
        spaces[str(name)] = Space(str(name), in_dim, blocks, info)
    return meta, ordered(spaces)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    return meta
