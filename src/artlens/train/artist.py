"""The artist task: a head over the artists with enough paintings, and `unknown artist` for the rest.

`train_artist_task(manifest, vectors)` does the whole job (`with_artist_task(model, manifest)` adds
it to a model; a recipe's `artist` section, `artist_from_recipe`, does it inside `artlens train`):

1. artists with >= `min_per_class` paintings are *known*; the others are kept out of the head and
   stand for the unknown artists (`artlens.data.artist_split.open_set_split`);
2. the train+val paintings are cut into `n_folds` folds (`crossfit_folds`): with `shift="period"`
   (the default) each known artist's paintings of another style, and its dated paintings by
   period, go to a fold as blocks, so a fold's known paintings are other periods / styles of the
   same artists; kept-out artists go to a fold whole;
3. every candidate head is scored out of fold: a linear head over the standardised features
   projected on their first principal axes (whitened; `components`), trained with "someone else"
   classes on the other folds' kept-out artists (`background_classes`). The candidate whose best
   open-set method reaches the highest balanced operating point (max over thresholds of
   min(known keeping their correct name, unknown called `unknown artist`)) is kept;
4. its temperature, open-set method (the one with the best balanced point) and threshold are
   chosen on those out-of-fold scores (`artlens.train.openset.calibrate_scores`), and the threshold is checked fold by fold: chosen on
   the other folds, applied to the held-out one (`metrics["fold_transfer"]`, mean and spread);
5. the shipped head is trained on the whole pool; the projection folds into its weights, so the
   model holds one Linear layer over its standardised features, like the other heads.

Test numbers (the `test` parts, when `fractions` keep one) are `artlens.evaluate.artist`'s.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from artlens import metrics as M
from artlens.data.artist_split import FOLD_COL, ROLE_COL, SHIFTS, crossfit_folds, open_set_split
from artlens.models.artmodel import ArtModel, TaskConfig
from artlens.train import openset
from artlens.train.artist_task import ArtistTask, add_artist_task
from artlens.train.calibrate import fit_temperature
from artlens.train.fitting import fit_linear, standardisation

TASK = "artist"
UNKNOWN_LABEL = openset.DEFAULT_LABEL
# Linear heads over the first `components` whitened principal axes of the standardised features
# (None: the standardised features themselves). On WikiArt's 25 artists with period-shifted folds
# (benchmarks/artist.py) 512 axes of CLIP's 2,816 features gave the head's accuracy and open-set
# AUROC of the full features at a tenth of the training time; see the README for the comparison.
CANDIDATES = [{"components": 512, "weight_decay": 1e-2}]
# A kept-out artist with this many paintings in the pool gets a background class of its own
# (`background_classes`); the rest share one per style.
BACKGROUND_MIN_PAINTINGS = 5
MAX_ITER = 300


def background_classes(artists: np.ndarray, rows: np.ndarray, min_paintings: int | None = BACKGROUND_MIN_PAINTINGS,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """The background ("someone else") class of each of `rows` (-1 elsewhere): each kept-out artist
    with >= `min_paintings` of them gets a class of its own (sorted by name); the others share one
    class per value of `groups` (e.g. the style; missing values form a group), or a single one.
    `min_paintings` None or 0: one class for all. A logit per well-represented other artist can win
    exactly where a painting is "like Monet, but by Sisley", which one shared logit cannot.
    """
    artists = np.asarray(artists, dtype=object)
    rows = np.asarray(rows, dtype=bool)
    out = np.full(len(artists), -1, dtype=np.int64)
    if not rows.any():
        return out
    if not min_paintings:
        out[rows] = 0
        return out
    names, counts = np.unique(artists[rows].astype(str), return_counts=True)
    own = {a: i for i, a in enumerate(names[counts >= int(min_paintings)])}
    rest = np.full(len(artists), "", dtype=object) if groups is None else np.asarray(groups, dtype=object)
    rest_keys = sorted({str(g) for a, g in zip(artists[rows].astype(str), rest[rows]) if a not in own})
    rest_ix = {g: len(own) + i for i, g in enumerate(rest_keys)}
    out[rows] = [own[a] if a in own else rest_ix[str(g)] for a, g in zip(artists[rows].astype(str), rest[rows])]
    return out


def fit_head(X: np.ndarray, y: np.ndarray, n_out: int, candidate: dict, rows: np.ndarray,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(weight, bias, mean, std)`: a linear head trained on `X[rows]` (targets `y[rows]`), as one
    Linear layer over `(x - mean) / std`. With `candidate["components"]` it is trained on the whitened
    principal axes of the standardised features (scikit-learn's PCA, fitted on `rows`) and the
    projection is folded into the weights."""
    from sklearn.decomposition import PCA

    mean, std = standardisation(X, rows)
    Z = (X[rows] - mean) / std
    k = candidate.get("components")
    pca = None
    if k:
        pca = PCA(n_components=int(min(k, Z.shape[1], len(Z) - 1)), whiten=True, svd_solver="full", random_state=seed)
        Z = pca.fit_transform(Z)
    head = fit_linear(Z.astype(np.float32), y[rows], n_out, float(candidate["weight_decay"]),
                      candidate.get("class_weight"), int(candidate.get("max_iter", MAX_ITER)))
    w = head[0].weight.detach().cpu().numpy().astype(np.float64)
    b = head[0].bias.detach().cpu().numpy().astype(np.float64)
    if pca is not None:  # logits = ((z - mu) C^T / sqrt(ev)) W^T + b = z W'^T + b - mu W'^T
        w = w @ (pca.components_ / np.sqrt(pca.explained_variance_)[:, None])
        b = b - w @ pca.mean_
    return w.astype(np.float32), b.astype(np.float32), mean, std


def _describe(c: dict) -> str:
    return f"linear wd={c['weight_decay']:g}" + (f" pca{c['components']}" if c.get("components") else "")


def _oof(X, y, K, fold, pool_known, bg_class, cand, seed) -> np.ndarray:
    """Out-of-fold logits `(N, K + n_background)` of the pool rows (zeros elsewhere)."""
    n_bg = int(bg_class.max()) + 1 if (bg_class >= 0).any() else 0
    targets = np.where(pool_known, y, K + bg_class)
    logits = np.zeros((len(X), K + n_bg), np.float32)
    for k in range(int(fold.max()) + 1):
        tr = (pool_known | (bg_class >= 0)) & (fold != k)
        w, b, mean, std = fit_head(X, targets, K + n_bg, cand, tr, seed)
        te = fold == k
        logits[te] = ((X[te] - mean) / std) @ w.T + b
    return logits


def _centroid_cos(X, y, K, fold, pool_known) -> np.ndarray:
    """Out-of-fold cosine of every pool row to each known artist's centroid (0 for an artist absent
    from the other folds)."""
    cents = np.zeros((len(X), K), np.float32)
    for k in range(int(fold.max()) + 1):
        tr = pool_known & (fold != k)
        present = np.isin(np.arange(K), y[tr])
        c = np.zeros((K, X.shape[1]), np.float32)
        c[present] = openset.class_centroids(X[tr], np.searchsorted(np.flatnonzero(present), y[tr]), int(present.sum()))
        te = fold == k
        cents[te] = M.l2_normalize(X[te]) @ c.T
    return cents


def _scores(z: np.ndarray, n_known: int, temperature: float, cents: np.ndarray) -> dict[str, np.ndarray]:
    """Known scores of every open-set method from logits `[known | background]`, as the model computes them."""
    zk, zb = z[:, :n_known], z[:, n_known:]
    score = ArtModel.open_set_score
    out = {"max_prob": score("max_prob", probs=M.softmax(zk / temperature)), "energy": score("energy", logits=zk),
           "centroid": cents.max(axis=1).astype(np.float64)}
    if zb.shape[1]:
        out["background"] = score("background", logits=zk, background_logits=zb)
    return out


def fold_transfer(sk: np.ndarray, correct: np.ndarray, su: np.ndarray, fold_k: np.ndarray, fold_u: np.ndarray, *,
                  target_known: float, target_unknown: float | None, known_rate: str = "correct") -> dict:
    """The threshold rule checked fold by fold: for each fold, the threshold chosen (as the shipped
    one is) on the other folds' out-of-fold scores, applied to this fold's known paintings (other
    periods / styles of the known artists) and unknown artists. Per fold and mean / std / min / max."""
    rows = []
    for k in sorted(set(fold_k) | set(fold_u)):
        ik, iu = fold_k == k, fold_u == k
        if not ik.any() or not iu.any():
            continue
        target_correct = correct[~ik] if known_rate == "correct" else np.ones((~ik).sum(), bool)
        op = openset.choose_threshold(sk[~ik], target_correct, su[~iu], target_known=target_known, target_unknown=target_unknown)
        r = openset.operating_point(op.threshold, sk[ik], correct[ik], su[iu])
        rows.append({"fold": int(k), "n_known": r.n_known, "n_unknown": r.n_unknown, "accuracy": round(float(correct[ik].mean()), 4),
                     "known_correct": round(r.known_correct, 4), "unknown_rejected": round(r.unknown_rejected, 4)})
    out: dict[str, Any] = {"folds": rows}
    for key in ("accuracy", "known_correct", "unknown_rejected"):
        v = np.array([r[key] for r in rows], float)
        if len(v):
            out[key] = {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4),
                        "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}
    return out


def train_artist_task(
    df,
    vectors: np.ndarray,
    ok_mask: np.ndarray | None = None,
    *,
    column: str = "artist",
    min_per_class: int = 40,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    unknown_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3),
    background: bool = True,
    background_min_paintings: int | None = BACKGROUND_MIN_PAINTINGS,
    shift: str = "period",
    n_folds: int = 5,
    target_known: float = 0.8,
    target_unknown: float | None = 0.8,
    known_rate: str = "correct",
    methods: tuple[str, ...] = openset.METHODS,
    select_by: str = "balanced",
    candidates: list[dict] | None = None,
    known: list[str] | None = None,
    backbone: dict | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress=None,
) -> ArtistTask:
    """Train the artist head with its open-set rule from a manifest and its embeddings (see the
    module docstring). `vectors` are aligned with `df` rows; rows where `ok_mask` is False (or the
    vector is not finite) are left out. The train and val parts are pooled for the out-of-fold
    choices; the test parts are not touched (score them with `artlens.evaluate.artist`). `known`:
    the artists to name (default: those with >= `min_per_class` paintings).

    `known_rate` says what `target_known` counts: `correct` (default), known paintings keeping their
    correct name, or `accepted`, known paintings the rule leaves a name. When no threshold meets both
    targets, the one closest to both is taken (`openset.choose_threshold`).
    """
    import torch

    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, not {shift!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(df):
        raise ValueError(f"{len(vectors)} vectors for {len(df)} manifest rows")
    ok = np.isfinite(vectors).all(axis=1)
    if ok_mask is not None:
        ok &= np.asarray(ok_mask, dtype=bool)
    sp = open_set_split(df[ok], column=column, min_per_class=min_per_class, fractions=fractions,
                        unknown_fractions=unknown_fractions, seed=seed, known=known)
    f = sp.frame
    f["row"] = np.flatnonzero(ok)[f["row"].to_numpy()]  # rows of `df` / `vectors`
    X = vectors[f["row"].to_numpy()]
    labels, K = sp.known, len(sp.known)
    y = np.array([labels.index(a) if a in labels else -1 for a in f["artist_label"]], dtype=np.int64)
    role = f[ROLE_COL].to_numpy()
    fold = crossfit_folds(f, n_folds, seed, shift=shift)
    f[FOLD_COL] = fold
    pool_known, pool_unknown = (role == "known") & (fold >= 0), (role == "unknown") & (fold >= 0)
    if not pool_unknown.any():
        raise ValueError("open-set calibration needs kept-out artists in the train/val parts (unknown_fractions)")
    if background and len(set(fold[pool_unknown])) < 2:
        raise ValueError(f"cross-fitting with a background logit needs kept-out artists in >= 2 folds "
                         f"(found {len(set(f.loc[pool_unknown, 'artist_label']))} artist(s))")
    bg_class = background_classes(f["artist_label"].to_numpy(), pool_unknown if background else np.zeros(len(f), bool),
                                  background_min_paintings, f["style"].to_numpy() if "style" in f.columns else None)
    n_bg = int(bg_class.max()) + 1
    cents = _centroid_cos(X, y, K, fold, pool_known)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        trials, best = [], None
        for cand in candidates or CANDIDATES:
            t0 = time.perf_counter()
            z = _oof(X, y, K, fold, pool_known, bg_class, cand, seed)
            t = float(fit_temperature(z[pool_known, :K], y[pool_known]))
            sc = _scores(z, K, t, cents)
            correct = z[pool_known, :K].argmax(1) == y[pool_known]
            balanced = max(openset.balanced_point(s[pool_known], correct, s[pool_unknown]) for s in sc.values())
            f1 = M.macro_f1(y[pool_known], z[pool_known, :K].argmax(1))
            trial = {"candidate": cand, "describe": _describe(cand), "val_balanced": round(balanced, 4),
                     "val_macro_f1": round(f1, 4), "seconds": round(time.perf_counter() - t0, 1)}
            trials.append(trial)
            if progress is not None:
                progress(trial)
            if best is None or (balanced, f1) > best[0]:
                best = ((balanced, f1), cand, z, t, sc, correct)
        _, cand, z, temperature, sc, correct = best
        rows = pool_known | (bg_class >= 0)
        w, b, mean, std = fit_head(X, np.where(pool_known, y, K + bg_class), K + n_bg, cand, rows, seed)
    finally:
        torch.set_num_threads(old_threads)
    task = TaskConfig(name=TASK, labels=list(labels), column=column, hidden=[], dropout=0.0,
                      temperature=temperature, threshold=0.0, unknown=None)
    art = ArtistTask(task=task, layers=[(w[:K], b[:K])], mean=mean, std=std,
                     centroids=openset.class_centroids(X[pool_known], y[pool_known], K), openset={},
                     background=(w[K:], b[K:]) if n_bg else None, split=sp, backbone=dict(backbone or {}))
    art.backbone.setdefault("name", "features")
    art.backbone.setdefault("feature_dim", int(X.shape[1]))
    sk = {m: s[pool_known] for m, s in sc.items()}
    su = {m: s[pool_unknown] for m, s in sc.items()}
    art.calibration_scores = {"known": sk, "unknown": su, "correct": correct}
    best_m, rule, results = openset.calibrate_scores(sk, correct, su, methods=methods, target_known=target_known,
                                                     target_unknown=target_unknown, known_rate=known_rate,
                                                     label=UNKNOWN_LABEL, select_by=select_by)
    task.unknown = rule
    desc = (f"crossfit ({shift}-shifted): {int(fold.max()) + 1} folds over the train+val paintings "
            f"({int(pool_known.sum())} known, {int(pool_unknown.sum())} by kept-out artists)")
    art.openset = {"method": best_m, "rule": rule, "methods": results, "validation": desc}
    zk = z[pool_known, :K]
    art.metrics = {
        "split": {**sp.counts(), "validation": desc}, "kept_out": sp.kept_out, "selected_head": cand,
        "head_trials": trials, "background": n_bg > 0, "temperature": round(temperature, 4),
        "closed_set_val": {**M.closed_set_metrics(M.softmax(zk / temperature), y[pool_known], K), "out_of_fold": True},
        "nearest_centroid_val": {**M.closed_set_metrics(cents[pool_known], y[pool_known], K), "out_of_fold": True},
        "open_set_validation": art.openset,
        "fold_transfer": fold_transfer(sk[best_m], correct, su[best_m], fold[pool_known], fold[pool_unknown],
                                       target_known=target_known, target_unknown=target_unknown, known_rate=known_rate),
    }
    return art


def artist_task_from_manifest(df, backbone: str = "clip-vit-b16", *, store_root=None, progress: bool = False,
                              workers: int = 2, **kw) -> tuple[ArtistTask, Any, np.ndarray]:
    """Embed a manifest (reusing the embedding store) and `train_artist_task` on it.

    Returns `(ArtistTask, errors, vectors)`: errors is the DataFrame `path, reason` of rows left
    out; `vectors` are aligned with `df` (`vectors[art.split.frame["row"]]`: the split's rows).
    """
    from artlens.embed import embed_manifest, get_encoder

    encoder = get_encoder(backbone)
    vectors, ok, errors = embed_manifest(df, encoder, store_root=store_root, progress=progress, workers=workers)[:3]
    bb = {"name": backbone, "feature_dim": int(encoder.dim), "backbone_id": encoder.backbone_id}
    return train_artist_task(df, vectors, ok, backbone=bb, **kw), errors, vectors


def with_artist_task(model, df, **kw) -> tuple[Any, ArtistTask]:
    """`(model + artist head + unknown rule, the ArtistTask)`: the head reads the model's backbone
    embeddings (from the store when present); `kw` go to `train_artist_task`."""
    art = artist_task_from_manifest(df, model.backbone_name, **kw)[0]
    return add_artist_task(model, art), art


def artist_rows(df, where: dict | None) -> np.ndarray:
    """Rows of a prepared manifest the artist task uses: those matching every `where` column value."""
    keep = np.ones(len(df), bool)
    for col, value in (where or {}).items():
        if col not in df.columns:
            raise ValueError(f"artist.where: the data has no column {col!r}")
        keep &= (df[col].astype(str) == str(value)).to_numpy()
    return keep


def artist_from_recipe(model, features: np.ndarray, df, cfg: dict, seed: int = 0) -> tuple[Any, ArtistTask]:
    """The recipe's `artist` section (`artlens.train.config.DEFAULTS["artist"]`) on the prepared rows
    and their features: `(model + the artist task, the ArtistTask)`."""
    keep = artist_rows(df, cfg.get("where"))
    test = float(cfg.get("test_fraction") or 0.0)
    art = train_artist_task(
        df[keep].reset_index(drop=True), features[keep], column=cfg.get("column") or "artist",
        min_per_class=int(cfg["min_per_class"]), fractions=(0.8 - test, 0.2, test),
        unknown_fractions=(0.7 - 1.5 * test, 0.3, 1.5 * test), background=bool(cfg.get("background", True)),
        background_min_paintings=cfg.get("background_min_paintings"), shift=cfg.get("shift") or "period",
        n_folds=int(cfg.get("folds") or 5), target_known=float(cfg["target_known"]),
        target_unknown=cfg.get("target_unknown"), known_rate=cfg.get("known_rate") or "correct",
        candidates=cfg.get("candidates"), backbone={"name": model.backbone_name}, seed=seed,
        threads=cfg.get("threads"))
    return add_artist_task(model, art), art
