"""Attribution by similarity: which known artists' works does this painting sit closest to?

The evidence behind an artist name: for a query embedding, the nearest artists of a gallery (a
`FaissIndex` whose rows carry an `artist` column or WikiArt file names, e.g. the one `artlens index`
builds) ranked by

- `topk` (default): the mean cosine to the artist's `k` = 3 closest works (less swayed by one
  look-alike than `max`; benchmarks/artist.py compares the three),
- `max`: the cosine to the artist's closest work (a nearest-neighbour vote),
- `centroid`: the cosine to the artist's mean embedding direction (the whole oeuvre),

each with its closest works. `max` uses the FAISS search itself (exact for the ranking: an artist
outside the first k neighbours cannot beat one inside), the others score every artist exactly.

`attribute(gallery, images, model=...)` is what `artlens attribute` prints: per image the model's
answer (a known artist's name or `unknown artist`) with its evidence, the nearest known paintings
(`Attributor.evidence`: the named artist's closest works, or for `unknown artist` the closest
known paintings of any artist), beside the similarity ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artlens.data.taxonomy import artist_labels
from artlens.metrics import l2_normalize
from artlens.retrieval.index import FaissIndex

METHODS = ("max", "topk", "centroid")


@dataclass
class Work:
    id: int  # row in the index
    similarity: float
    path: str | None
    title: str | None = None
    sha256: str | None = None
    duplicate: bool = False  # the query itself (same bytes) or a near copy
    artist: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["similarity"] = round(self.similarity, 4)
        return d


@dataclass
class ArtistMatch:
    artist: str
    score: float  # by the method used
    max_similarity: float
    centroid_similarity: float
    n_works: int  # this artist's works in the gallery
    works: list[Work] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artist": self.artist,
            "score": round(self.score, 4),
            "max_similarity": round(self.max_similarity, 4),
            "centroid_similarity": round(self.centroid_similarity, 4),
            "n_works": self.n_works,
            "works": [w.to_dict() for w in self.works],
        }


def _normalise(x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.atleast_2d(np.asarray(x, dtype=np.float32)))


def _title(row, path) -> str | None:
    t = row.get("title") if hasattr(row, "get") else None
    if isinstance(t, str) and t.strip():
        return t.replace("-", " ").strip() if " " not in t else t.strip()  # WikiArt slugs read as words
    if path:
        stem = Path(str(path)).stem
        _, sep, rest = stem.partition("_")
        return (rest if sep else stem).replace("-", " ").strip() or None
    return None


class Attributor:
    """Artist attribution over a gallery index.

    >>> att = Attributor(FaissIndex.load("runs/index"), artists=model.task("artist").labels)
    >>> att.attribute(vectors)[0][0].artist
    """

    def __init__(self, index, *, column: str = "artist", artists: Sequence[str] | None = None, duplicate_sim: float = 0.99):
        if not isinstance(index, FaissIndex):
            index = FaissIndex.load(index)
        self.index = index
        names = artist_labels(index.rows, column)  # the column, else WikiArt file names
        if not any(isinstance(n, str) for n in names):
            raise ValueError(
                f"the gallery rows have no {column!r} labels and their file names are not <artist>_<title>: "
                "build the index from a manifest with artists"
            )
        allowed = None if artists is None else set(artists)
        valid = np.array([n is not None and (allowed is None or n in allowed) for n in names], dtype=bool)
        if not valid.any():
            raise ValueError("no gallery work belongs to a known artist" + (f" (looked for {len(allowed)} artists)" if allowed else ""))
        self.names = names
        self.valid = valid
        self.artists = sorted({n for n, v in zip(names, valid) if v})
        self._artist_idx = {a: i for i, a in enumerate(self.artists)}
        self.member = np.array([self._artist_idx.get(n, -1) if v else -1 for n, v in zip(names, valid)], dtype=np.int64)
        self.duplicate_sim = duplicate_sim
        self._vectors: np.ndarray | None = None
        self._centroids: np.ndarray | None = None

    # ------------------------------------------------------------------ gallery data
    @property
    def vectors(self) -> np.ndarray:
        """All gallery vectors (unit length), read back from the index once."""
        if self._vectors is None:
            self._vectors = _normalise(self.index.features())
        return self._vectors

    @property
    def centroids(self) -> np.ndarray:
        if self._centroids is None:
            v = self.vectors
            c = np.zeros((len(self.artists), v.shape[1]), dtype=np.float32)
            np.add.at(c, self.member[self.valid], v[self.valid])
            self._centroids = _normalise(c)
        return self._centroids

    def n_works(self, a: int) -> int:
        return int((self.member == a).sum())

    # ------------------------------------------------------------------ scoring
    def _candidates_max(self, q: np.ndarray, top_artists: int, exclude: set[int]) -> dict[int, float]:
        """Best similarity per artist from the k nearest works, k grown until `top_artists` artists."""
        n = len(self.index)
        k = min(n, max(64, 16 * top_artists))
        while True:
            sims, ids = self.index.search(q[None, :], k)
            best: dict[int, float] = {}
            for s, i in zip(sims[0], ids[0]):
                i = int(i)
                if i < 0 or i in exclude or self.member[i] < 0:
                    continue
                a = int(self.member[i])
                if a not in best:
                    best[a] = float(s)
            if len(best) >= min(top_artists, len(self.artists)) or k >= n:
                return best
            k = min(n, k * 4)

    def artist_scores(self, q: np.ndarray, method: str = "topk", k: int = 3, exclude: set[int] | None = None) -> np.ndarray:
        """Score of every artist for one query vector (exact; used by `topk`/`centroid` and tests)."""
        q = _normalise(q)[0]
        exclude = exclude or set()
        if method == "centroid":
            return self.centroids @ q
        sims = self.vectors @ q
        if exclude:
            sims[list(exclude)] = -np.inf
        out = np.full(len(self.artists), -np.inf, dtype=np.float32)
        for a in range(len(self.artists)):
            s = sims[self.member == a]
            s = s[np.isfinite(s)]
            if len(s):
                out[a] = s.max() if method == "max" else np.sort(s)[::-1][:k].mean()
        return out

    def _work(self, i: int, sim: float, query_sha256: str | None) -> Work:
        rows = self.index.rows
        row = rows.iloc[i]
        path = str(row["path"]) if "path" in rows.columns and isinstance(row["path"], str) else None
        sha = row["sha256"] if "sha256" in rows.columns and isinstance(row["sha256"], str) else None
        dup = bool((query_sha256 and sha == query_sha256) or sim > self.duplicate_sim)
        return Work(id=i, similarity=sim, path=path, title=_title(row, path), sha256=sha, duplicate=dup,
                    artist=self.names[i])

    def _works(self, q: np.ndarray, a: int, n: int, exclude: set[int], query_sha256: str | None) -> tuple[list[Work], float]:
        ids = np.array([i for i in np.flatnonzero(self.member == a) if i not in exclude], dtype=np.int64)
        sims = self.vectors[ids] @ q if len(ids) else np.zeros(0, np.float32)
        order = np.argsort(-sims, kind="stable")[:n]
        works = [self._work(int(ids[j]), float(sims[j]), query_sha256) for j in order]
        return works, float(sims.max()) if len(sims) else float("nan")

    def attribute(
        self,
        queries: np.ndarray,
        *,
        top_artists: int = 3,
        works_per_artist: int = 3,
        method: str = "topk",
        k: int = 3,
        query_sha256: Sequence[str | None] | None = None,
        exclude_duplicates: bool = False,
    ) -> list[list[ArtistMatch]]:
        """For each query vector, the `top_artists` nearest artists with their closest works.

        `exclude_duplicates` leaves the query's own file (same sha256) and near copies out of the
        gallery, e.g. to attribute a painting that is itself in the index.
        """
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r} (choose from {', '.join(METHODS)})")
        Q = _normalise(queries)
        if Q.shape[1] != self.index.dim:
            raise ValueError(f"queries have dimension {Q.shape[1]}, the gallery {self.index.dim} (another backbone?)")
        shas = list(query_sha256) if query_sha256 is not None else [None] * len(Q)
        results = []
        for q, sha in zip(Q, shas):
            exclude: set[int] = set()
            if exclude_duplicates:
                exclude = self._duplicates(q, sha)
            if method == "max":
                best = self._candidates_max(q, top_artists, exclude)
                ranked = sorted(best.items(), key=lambda kv: (-kv[1], self.artists[kv[0]]))[:top_artists]
            else:
                scores = self.artist_scores(q, method, k, exclude)
                order = np.lexsort((np.array(self.artists), -scores))[:top_artists]
                ranked = [(int(a), float(scores[a])) for a in order if np.isfinite(scores[a])]
            cent = self.centroids @ q
            matches = []
            for a, score in ranked:
                works, mx = self._works(q, a, works_per_artist, exclude, sha)
                matches.append(ArtistMatch(self.artists[a], float(score), mx, float(cent[a]), self.n_works(a), works))
            results.append(matches)
        return results

    def evidence(self, query: np.ndarray, artist: str | None, n: int = 3, *, query_sha256: str | None = None,
                 exclude_duplicates: bool = False) -> list[Work]:
        """The nearest known paintings behind an answer: `artist`'s `n` closest works, or with
        `artist` None (`unknown artist`) the `n` closest works of any known artist, so the answer
        shows how near (or far) the closest known painting is."""
        q = _normalise(query)[0]
        exclude = self._duplicates(q, query_sha256) if exclude_duplicates else set()
        if artist is not None:
            return self._works(q, self._artist_idx[artist], n, exclude, query_sha256)[0]
        sims = self.vectors @ q
        sims[~self.valid] = -np.inf
        if exclude:
            sims[list(exclude)] = -np.inf
        ids = [int(i) for i in np.argsort(-sims, kind="stable")[:n] if np.isfinite(sims[i])]
        return [self._work(i, float(sims[i]), query_sha256) for i in ids]

    def _duplicates(self, q: np.ndarray, sha: str | None) -> set[int]:
        out: set[int] = set()
        if sha and "sha256" in self.index.rows.columns:
            out |= set(np.flatnonzero((self.index.rows["sha256"] == sha).to_numpy()).tolist())
        sims, ids = self.index.search(q[None, :], min(len(self.index), 16))
        out |= {int(i) for s, i in zip(sims[0], ids[0]) if i >= 0 and s > self.duplicate_sim}
        return out



def open_gallery(gallery, errors: list | None = None, *, progress: bool = False) -> FaissIndex:
    """A gallery: an index folder (`artlens index`), or a manifest / image folder indexed on the
    fly (its unreadable files appended to `errors` as (path, reason))."""
    from pathlib import Path

    from artlens.retrieval.build import index_embeddings, read_rows
    from artlens.retrieval.index import META_NAME

    if isinstance(gallery, FaissIndex):
        return gallery
    if (Path(gallery) / META_NAME).is_file():
        return FaissIndex.load(gallery)
    index, failed = index_embeddings(read_rows(gallery, errors, progress=progress), progress=progress)
    if errors is not None:
        errors.extend(zip(failed["path"], failed["reason"]))
    return index


def attribute(
    gallery,
    queries,
    *,
    model=None,
    artists: Sequence[str] | None = None,
    column: str = "artist",
    encoder=None,
    top_artists: int = 3,
    works_per_artist: int = 3,
    method: str = "topk",
    exclude_duplicates: bool = False,
) -> list[dict[str, Any]]:
    """Nearest known artists, with their closest works, for image paths or vectors.

    `gallery`: a `FaissIndex`, an `Attributor` or a gallery `open_gallery` opens; `queries`: image
    paths (folders walked), or an `(N, dim)` array of embeddings. `model`: an `ArtModel` (or its
    folder) with an artist task: only its artists are ranked, and each image also gets `"model"`,
    the head's answer as `Predictor` gives it, and `"evidence"` (`Attributor.evidence`). Images are
    embedded with `encoder` (default: the gallery's backbone). A file that cannot be read gives
    `{"path", "error", "artists": []}` and the others go on.
    Returns one dict per query: `{"path", "error", "artists": [ArtistMatch.to_dict(), ...]}` (+ `model`, `evidence`).
    """
    from artlens.models.artmodel import ArtModel
    from artlens.predict import Predictor, expand_inputs

    if model is not None and not isinstance(model, ArtModel):
        model = ArtModel.load(model)
    if model is not None:
        if "artist" not in model.task_names:
            raise ValueError("the model has no artist task")
        artists = model.task("artist").labels
    if isinstance(gallery, Attributor):
        att = gallery
    else:
        att = Attributor(open_gallery(gallery), column=column, artists=artists)
    if model is not None and att.index.backbone and model.backbone_name != att.index.backbone:
        raise ValueError(f"the model reads {model.backbone_name} embeddings, the gallery holds {att.index.backbone} ones")
    if isinstance(queries, np.ndarray):
        paths, vectors, shas, errors = [None] * len(queries), np.asarray(queries, np.float32), [None] * len(queries), {}
    else:
        paths = expand_inputs(queries)
        if not paths:
            raise ValueError("no images found in " + ", ".join(map(str, queries)))
        if encoder is None:
            from artlens.retrieval.query import query_encoder

            encoder = query_encoder(att.index)
        vectors, shas, errors = embed_paths(paths, encoder)
    good = [i for i in range(len(paths)) if i not in errors]
    kw = dict(top_artists=top_artists, works_per_artist=works_per_artist, method=method, exclude_duplicates=exclude_duplicates)
    matches = att.attribute(vectors[good], query_sha256=[shas[i] for i in good], **kw) if good else []
    by_row = dict(zip(good, matches))
    out = [{"path": p, "error": errors.get(i), "artists": [m.to_dict() for m in by_row.get(i, [])]} for i, p in enumerate(paths)]
    if model is not None and good:
        answers = Predictor(model, top_k=3, encoder=encoder).predict_features(vectors[good])
        for i, a in zip(good, answers):
            name = a["artist"]["label"]
            works = att.evidence(vectors[i], name if name in att.artists else None, works_per_artist,
                                 query_sha256=shas[i], exclude_duplicates=exclude_duplicates)
            out[i]["model"] = a["artist"]
            out[i]["evidence"] = {"artist": name if name in att.artists else None, "works": [w.to_dict() for w in works]}
    return out

def embed_paths(paths: Sequence[str], encoder, batch_size: int = 32) -> tuple[np.ndarray, list[str | None], dict[int, str]]:
    """`(vectors (N, dim), sha256 per path, {position: reason})`; unreadable files get NaN rows."""
    from artlens.data.images import ImageDecodeError, load_image
    from artlens.embed import file_sha256

    shas: list[str | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    blocks: list[tuple[list[int], np.ndarray]] = []
    for start in range(0, len(paths), batch_size):
        idx, images = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(load_image(paths[i]))
                shas[i] = file_sha256(paths[i])
                idx.append(i)
            except ImageDecodeError as exc:
                errors[i] = exc.reason
            except OSError as exc:
                errors[i] = f"cannot read file ({exc.strerror or exc})"
        if images:
            blocks.append((idx, encoder.embed_images(images)))
    dim = blocks[0][1].shape[1] if blocks else int(getattr(encoder, "dim", 0))
    full = np.full((len(paths), dim), np.nan, dtype=np.float32)
    for idx, vecs in blocks:
        full[idx] = vecs
    return full, shas, errors
