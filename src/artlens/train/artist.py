"""The artist task: a head over the artists with enough paintings, and `unknown artist` for the rest.

One call does the whole job (`train_artist_task(manifest, vectors)`, or `with_artist_task(model,
manifest)` to add it to a model):

1. artist labels (the manifest's `artist` column, or the WikiArt file name `<artist-slug>_<title>`),
   one row per distinct image (exact duplicates filed under two styles count once);
2. artists with >= `min_per_class` paintings are *known*; the others are kept out of the head and
   reported with their counts;
3. an open-set split: known artists' paintings are split by painting (train/val/test, near-
   duplicates on one side); the kept-out artists are split *by artist* into three parts: `train`
   (paintings by "someone else" that teach the head background logits), `val` (to choose the
   open-set rule and its threshold) and `test` (artists never seen in any choice);
4. the head (+ background logits) is a linear head over standardised embeddings. By default
   (`validation="crossfit"`) the train and val parts are pooled and cut into 5 folds (kept-out
   artists whole to a fold); the weight decay (when several are given), the temperature, the
   open-set method (max probability, energy, centroid distance, background logits) and its
   threshold are chosen on the out-of-fold scores (`artlens.train.openset.calibrate_scores`), then
   the head is trained on the whole pool. `validation="holdout"` trains on `train` with the probe
   trainer and chooses on `val`;
5. the test numbers: closed-set accuracy / macro-F1 / top-5 beside a nearest-centroid baseline, open-
   set AUROC, false attribution rate, unknown paintings called `unknown artist`, known paintings
   keeping their correct name (through `Predictor`, exactly as users see it).

`ArtistTask.to_model(...)` gives a standalone model; `add_artist_task(model, task)` puts the head, its
rule and its tensors into an existing model (the lead's default model).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artlens import metrics as M
from artlens.data.taxonomy import artist_labels, wikiart_name_fields
from artlens.models.artmodel import ArtModel
from artlens.train import openset

log = logging.getLogger(__name__)

TASK = "artist"
UNKNOWN_LABEL = "unknown artist"
SPLIT_COL = "artist_split"  # train / val / test / None (not used)
ROLE_COL = "artist_role"  # known / unknown
GROUP_COL = "painting_group"  # near-duplicates share one (they always travel together)
FOLD_COL = "artist_fold"  # cross-fitting fold of the train+val rows (-1 elsewhere)
# Linear heads only: over CLIP features an MLP gained < 1 point of accuracy on WikiArt's artists
# (and no open-set AUROC), and a linear head keeps the background logit a plain linear score.
LINEAR_CANDIDATES = [{"type": "linear", "weight_decay": [1e-3, 3e-3, 1e-2, 3e-2], "class_weight": [None, "balanced"]}]
# Cross-fitting (the default): class weights left out, since "balanced" shrinks the background class
# (thousands of paintings) to one artist's weight and cost 1-3 points of open-set AUROC on WikiArt
# for no accuracy. One weight decay: on WikiArt 3e-3 and 1e-2 gave the same open-set numbers (within
# 0.3 points, 5 seeds), and with a background class per kept-out artist every candidate costs ~6
# fits of ~30 s on 2 cores. Pass `candidates` to choose among several on out-of-fold macro-F1.
CROSSFIT_CANDIDATES = [{"type": "linear", "weight_decay": [1e-2], "class_weight": [None]}]
VALIDATION = ("crossfit", "holdout")
# A kept-out artist with this many paintings in the cross-fitting pool gets a background class of its
# own (`background_classes`); on WikiArt 3 and 5 gave the same open-set numbers, 5 trains faster.
BACKGROUND_MIN_PAINTINGS = 5


# ----------------------------------------------------------------------------- split
@dataclass
class ArtistSplit:
    frame: Any  # DataFrame: the distinct images with `artist_label`, SPLIT_COL, ROLE_COL, and `row` (index in the input)
    known: list[str]  # the head's classes, sorted
    kept_out: dict[str, int]  # artist -> paintings, for artists under min_per_class
    min_per_class: int

    def counts(self) -> dict:
        f = self.frame
        out: dict[str, Any] = {
            "known_artists": len(self.known),
            "kept_out_artists": len(self.kept_out),
            "kept_out_paintings": int(sum(self.kept_out.values())),
            "min_per_class": self.min_per_class,
        }
        for role in ("known", "unknown"):
            for part in ("train", "val", "test"):
                n = int(((f[ROLE_COL] == role) & (f[SPLIT_COL] == part)).sum())
                if n:
                    out[f"{role}_{part}"] = n
        for part in ("train", "val", "test"):
            out[f"unknown_{part}_artists"] = int(f.loc[(f[ROLE_COL] == "unknown") & (f[SPLIT_COL] == part), "artist_label"].nunique())
        return out


def open_set_split(
    df,
    *,
    column: str = "artist",
    min_per_class: int = 40,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    unknown_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3),
    seed: int = 0,
    human_only: bool = True,
) -> ArtistSplit:
    """Known artists split by painting, kept-out artists split by artist (see the module docstring).

    `fractions`: train/val/test shares of each known artist's paintings (test may be 0 for a final
    model). `unknown_fractions`: train/val/test shares of the kept-out artists' paintings, whole
    artists to each part: `train` ones teach the head's background ("someone else") logit, `val`
    ones calibrate the open-set rule, `test` ones measure it. With `human_only`, rows whose `origin` is `ai` are left
    out (an AI image "in the style of" an artist is not by that artist).
    """
    import pandas as pd

    if min_per_class < 2:
        raise ValueError("min_per_class must be at least 2")
    f = pd.DataFrame({"row": np.arange(len(df)), "path": df["path"].astype(str).to_numpy()})
    f["artist_label"] = artist_labels(df, column)
    for c in ("sha256", "phash", "title", "style"):
        if c in df.columns:
            f[c] = df[c].to_numpy()
    if "title" not in f.columns:
        f["title"] = [t.replace("-", " ") if t else None for t in wikiart_name_fields(f["path"], "title")]
    keep = np.array(f["artist_label"].notna(), dtype=bool)
    if human_only and "origin" in df.columns:
        keep &= (df["origin"].astype(str).str.lower() != "ai").to_numpy()
    f = f[keep]
    if "sha256" in f.columns:  # exact duplicates (the same file under two styles) are one painting
        f = f[~(f["sha256"].notna() & f.duplicated("sha256"))]
    # Near-duplicates (same bytes, or pHashes within the scan's distance) travel together.
    from artlens.data.manifest import duplicate_groups

    f = f.reset_index(drop=True)
    f["_group"] = duplicate_groups(f)

    counts = f.groupby("artist_label")["_group"].nunique()
    known = sorted(counts[counts >= min_per_class].index)
    kept_out = {str(k): int(v) for k, v in counts[counts < min_per_class].sort_values(ascending=False).items()}
    if len(known) < 2:
        raise ValueError(
            f"only {len(known)} artist(s) have >= {min_per_class} paintings; lower --min-per-class "
            f"(the most frequent: {', '.join(f'{a} {n}' for a, n in counts.nlargest(3).items())})"
        )
    rng = np.random.default_rng(seed)
    split = np.full(len(f), None, dtype=object)
    role = np.where(f["artist_label"].isin(known), "known", "unknown").astype(object)

    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    for artist in known:
        idx = np.flatnonzero((f["artist_label"] == artist).to_numpy())
        groups = np.array(sorted(set(f["_group"].iloc[idx])))
        rng.shuffle(groups)
        n = len(groups)
        n_val = max(1, int(round(n * fr[1]))) if fr[1] > 0 else 0
        n_test = max(1, int(round(n * fr[2]))) if fr[2] > 0 else 0
        part = {g: "val" for g in groups[:n_val]}
        part.update({g: "test" for g in groups[n_val : n_val + n_test]})
        for i in idx:
            split[i] = part.get(f["_group"].iloc[i], "train")

    unknown_artists = np.array(sorted(kept_out))
    rng.shuffle(unknown_artists)
    total = sum(kept_out.values())
    ufr = np.asarray(unknown_fractions, dtype=float)
    bounds = np.cumsum(ufr / ufr.sum()) * total
    part_of, acc = {}, 0
    for a in unknown_artists:  # whole artists, in random order, fill train, then val, then test
        k = int(np.searchsorted(bounds, acc, side="right"))
        part_of[a] = ("train", "val", "test")[min(k, 2)]
        acc += kept_out[a]
    is_unknown = role == "unknown"
    split[is_unknown] = [part_of[a] for a in f["artist_label"].to_numpy()[is_unknown]]
    f[SPLIT_COL] = split
    f[ROLE_COL] = role
    return ArtistSplit(frame=f.rename(columns={"_group": GROUP_COL}), known=known, kept_out=kept_out, min_per_class=min_per_class)


# ----------------------------------------------------------------------------- result
@dataclass
class ArtistTask:
    """A trained artist head with its open-set rule; `to_model` / `add_artist_task` package it."""

    task: Any  # TaskConfig (name, labels, temperature, unknown rule)
    layers: list[tuple[np.ndarray, np.ndarray]]  # the head's Linear (weight, bias), on standardised features
    mean: np.ndarray  # the standardisation the head was trained with
    std: np.ndarray
    centroids: np.ndarray  # (n_classes, dim) unit centroids of the training embeddings
    openset: dict  # `OpenSetCalibration.as_dict()`: the methods compared on validation
    # "someone else" logits (n, dim), (n,), standardised space: one per background class (`background_classes`)
    background: tuple[np.ndarray, np.ndarray] | None = None
    metrics: dict = field(default_factory=dict)
    split: ArtistSplit | None = None
    backbone: dict = field(default_factory=dict)  # {"name", "feature_dim", "backbone_id"?}
    # The validation scores the rule was chosen on (not saved): {"known": {method: scores},
    # "unknown": {method: scores}, "correct": bool per known painting}; out-of-fold with cross-fitting.
    calibration_scores: dict = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    def summary(self) -> dict:
        """The compact numbers a model's config.json carries (the full metrics name every kept-out artist)."""
        m = self.metrics
        out = {k: m[k] for k in ("split", "closed_set_val", "closed_set_test", "nearest_centroid_test") if k in m}
        v = m.get("open_set_validation") or {}
        if v:
            out["open_set_validation"] = {
                "method": v["method"],
                "auroc": {k: r["auroc"] for k, r in v["methods"].items()},
                "operating_point": v["methods"][v["method"]]["operating_point"],
            }
        if "open_set_test" in m:
            out["open_set_test"] = {"auroc": m["open_set_test"]["rule"]["auroc"], **m["open_set_test"].get("predict", {})}
        return out

    def tensors(self, norm: tuple[np.ndarray, np.ndarray] | None = None, *, all_openset: bool = False) -> dict[str, np.ndarray]:
        """Tensors of this task for a model whose features are standardised with `norm`
        (`(mean, std)`, or None for a model without `norm.*`). The `openset.*` tensors are those
        its rule needs (`all_openset`: those of every method, to compare them)."""
        name = self.task.name
        m2, s2 = (np.zeros_like(self.mean), np.ones_like(self.std)) if norm is None else norm

        def refold(w0, b0):
            # The model feeds z = (x - m2) / s2; the head was trained on (x - m1) / s1 = (s2 z + m2 - m1) / s1.
            return (w0 * (s2 / self.std)[None, :]).astype(np.float32), (b0 + w0 @ ((m2 - self.mean) / self.std)).astype(np.float32)

        (w0, b0), rest = self.layers[0], self.layers[1:]
        w, b = refold(w0, b0)
        out = {f"heads.{name}.0.weight": w, f"heads.{name}.0.bias": b}
        for j, (wj, bj) in enumerate(rest, start=1):
            # Linear layers sit at positions 0, 3, 6, ... of `[Linear, ReLU, Dropout] * k + Linear`.
            out[f"heads.{name}.{3 * j}.weight"] = wj.astype(np.float32)
            out[f"heads.{name}.{3 * j}.bias"] = bj.astype(np.float32)
        method = (self.task.unknown or {}).get("method")
        if all_openset or method == "centroid":
            out[f"openset.{name}.centroids"] = self.centroids.astype(np.float32)
        if self.background is not None and (all_openset or method == "background"):
            out[f"openset.{name}.background.weight"], out[f"openset.{name}.background.bias"] = refold(*self.background)
        return out

    def to_model(self, config: dict | None = None, *, all_openset: bool = False):
        """A standalone `ArtModel` with this one task (its own standardisation)."""
        from artlens.models.artmodel import ArtModel, new_config

        cfg = dict(config or {})
        cfg.setdefault("backbone", {k: v for k, v in self.backbone.items() if k in ("name", "feature_dim", "weights_id")})
        cfg["tasks"] = [self.task]
        cfg.setdefault("metrics", {self.task.name: self.summary()})
        tensors = {"norm.mean": self.mean.astype(np.float32), "norm.std": self.std.astype(np.float32)}
        tensors.update(self.tensors((self.mean, self.std), all_openset=all_openset))
        return ArtModel(new_config(cfg), tensors)


def add_artist_task(model, artist: ArtistTask, *, replace: bool = True):
    """A new `ArtModel`: `model` plus the artist head, its `unknown` rule and `openset.artist.*`.

    The head is re-expressed in the model's feature standardisation (exactly; see `ArtistTask.tensors`),
    so it can join a model whose other heads were trained with another `norm.mean`/`norm.std`.
    """
    from dataclasses import asdict

    from artlens.models.artmodel import ArtModel

    name = artist.task.name
    if artist.backbone.get("name") and artist.backbone["name"] != model.backbone_name:
        raise ValueError(
            f"the artist head was trained on {artist.backbone['name']} embeddings, the model uses {model.backbone_name}"
        )
    if int(artist.mean.shape[0]) != model.feature_dim:
        raise ValueError(f"the artist head expects {artist.mean.shape[0]}-d features, the model gives {model.feature_dim}")
    if name in model.task_names and not replace:
        raise ValueError(f"the model already has a task {name!r}")
    norm = (model.tensors["norm.mean"], model.tensors["norm.std"]) if "norm.mean" in model.tensors else None
    tensors = {k: v for k, v in model.tensors.items() if not k.startswith((f"heads.{name}.", f"openset.{name}."))}
    tensors.update(artist.tensors(norm))
    config = dict(model.config)
    config["tasks"] = [asdict(t) for t in model.tasks if t.name != name] + [asdict(artist.task)]
    metrics = dict(config.get("metrics") or {})
    metrics[name] = artist.summary()
    config["metrics"] = metrics
    return ArtModel(config, tensors)


# ----------------------------------------------------------------------------- training
def _probe_config(candidates: list[dict] | None, threads: int | None) -> tuple[dict, dict]:
    import copy

    from artlens.train.config import DEFAULTS

    pcfg = copy.deepcopy(DEFAULTS["probe"])
    pcfg["candidates"] = copy.deepcopy(candidates or LINEAR_CANDIDATES)
    pcfg["metric"] = "macro_f1"
    if threads:
        pcfg["threads"] = threads
    # No "unsure" threshold on the artist head: the open-set rule decides when to withhold a name.
    calibration = {"temperature": True, "threshold": {"rule": "none"}}
    return pcfg, calibration


def closed_set_metrics(proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """accuracy, macro-F1 (over the classes present, as everywhere in artlens) and top-3/5 accuracy."""
    if len(y) == 0:
        return {"n": 0}
    pred = proba.argmax(axis=1)
    out = {
        "n": int(len(y)),
        "accuracy": round(M.accuracy(y, pred), 4),
        "macro_f1": round(M.macro_f1(y, pred), 4),
    }
    for k in (3, 5):
        if k < n_classes:
            out[f"top{k}_accuracy"] = round(M.top_k_accuracy(y, proba, k), 4)
    return out


def nearest_centroid_scores(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine to each class centroid: the nearest-centroid baseline's class scores."""
    return M.l2_normalize(features) @ M.l2_normalize(centroids).T


def predictor_rates(model, known_features, known_y, unknown_features, task: str = TASK) -> dict:
    """What users see, through `Predictor`: shares of answers per group of paintings."""
    from artlens.predict import Predictor

    pred = Predictor(model, top_k=1)
    unk = model.task(task).unknown.get("label", UNKNOWN_LABEL) if model.task(task).unknown else None
    labels = model.task(task).labels
    out = {}
    if len(known_features):
        rows = pred.predict_features(known_features)
        names = np.array([r[task]["label"] for r in rows], dtype=object)
        truth = np.array([labels[i] for i in known_y], dtype=object)
        out["known_correct_name"] = round(float((names == truth).mean()), 4)
        out["known_called_unknown"] = round(float((names == unk).mean()), 4)
        out["known_wrong_name"] = round(float(((names != truth) & (names != unk)).mean()), 4)
    if len(unknown_features):
        rows = pred.predict_features(unknown_features)
        names = np.array([r[task]["label"] for r in rows], dtype=object)
        out["unknown_called_unknown"] = round(float((names == unk).mean()), 4)
        out["false_attribution_rate"] = round(float((names != unk).mean()), 4)
    return out


def crossfit_folds(frame, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """A fold id (0..n_folds-1) per row of an `open_set_split` frame's train+val rows (-1 elsewhere).

    Known artists' paintings are dealt to the folds by painting (near-duplicate groups stay
    together), each artist spread evenly over all folds; kept-out artists go to the folds *whole*
    (largest first, each to the fold with the fewest paintings so far), so every fold's unknown
    paintings are by artists the other folds never saw.
    """
    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    rng = np.random.default_rng(seed)
    role = frame[ROLE_COL].to_numpy()
    pool = np.isin(frame[SPLIT_COL].to_numpy().astype(str), ["train", "val"])
    groups = frame[GROUP_COL].to_numpy()
    artists = frame["artist_label"].to_numpy()
    fold = np.full(len(frame), -1, dtype=np.int64)
    start = 0
    for artist in sorted(set(artists[pool & (role == "known")])):
        idx = np.flatnonzero(pool & (role == "known") & (artists == artist))
        gs = np.array(sorted(set(groups[idx])))
        rng.shuffle(gs)
        # round robin from a rotating start, so small artists do not all fill fold 0 first
        of = {g: (start + i) % n_folds for i, g in enumerate(gs)}
        start = (start + len(gs)) % n_folds
        fold[idx] = [of[g] for g in groups[idx]]
    unknown = pool & (role == "unknown")
    names = np.array(sorted(set(artists[unknown])))
    rng.shuffle(names)
    sizes = {a: int((artists[unknown] == a).sum()) for a in names}
    filled = np.zeros(n_folds)
    of = {}
    for a in sorted(names, key=lambda a: -sizes[a]):  # stable: ties keep the shuffled order
        k = int(np.argmin(filled))
        of[a] = k
        filled[k] += sizes[a]
    fold[unknown] = [of[a] for a in artists[unknown]]
    return fold


def background_classes(artists: np.ndarray, rows: np.ndarray, min_paintings: int | None = BACKGROUND_MIN_PAINTINGS,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """The background ("someone else") class of each of `rows` (-1 elsewhere): each kept-out artist
    with >= `min_paintings` of them gets a class of its own (sorted by name); the others share one
    class per value of `groups` (e.g. the style; missing values form a group), or a single one.
    `min_paintings` None or 0: one class for all.

    Why several: a single linear "someone else" logit has to stand against every known artist at
    once; a logit per well-represented other artist can win exactly where a painting is "like
    Monet, but by Sisley". On WikiArt (exploratory runs, 5 seeds, weight decay 1e-2), the share of
    known paintings keeping their correct name where 80% of unknown-artist paintings are rejected
    (threshold read on test) went from 81.0% (one class) to 81.7% (the rest in one class) and
    82.0% (the rest by style).
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


def _fit_linear_head(X, y, n_out: int, cand: dict, max_iter: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from artlens.train.probe import fit_linear

    head = fit_linear(X, y, n_out, float(cand["weight_decay"]), cand.get("class_weight"), int(cand.get("max_iter", max_iter)))
    lin = head[0]
    return [(lin.weight.detach().cpu().numpy().astype(np.float32), lin.bias.detach().cpu().numpy().astype(np.float32))]


def _crossfit(X, y, K: int, fold: np.ndarray, pool_known: np.ndarray, bg_class: np.ndarray, candidates: list[dict],
              max_iter: int, progress=None) -> dict:
    """Out-of-fold logits (known classes, background logits) and centroid cosines of every pool row,
    for each candidate; the candidate with the best out-of-fold macro-F1 on the known paintings.
    `bg_class`: each background row's class (`background_classes`), -1 for the others."""
    from artlens.train.probe import _describe, expand_candidates, standardisation

    n_folds = int(fold.max()) + 1
    pool_bg = bg_class >= 0
    n_bg = int(bg_class.max()) + 1 if pool_bg.any() else 0
    scored = fold >= 0
    targets = np.where(pool_known, y, K + bg_class)
    trials, best = [], None
    cents = np.zeros((len(X), K), np.float32)
    for k in range(n_folds):  # centroids do not depend on the candidate
        tr = pool_known & (fold != k)
        present = np.isin(np.arange(K), y[tr])  # an artist whose pool paintings all fall in fold k has none
        c = np.zeros((K, X.shape[1]), np.float32)
        c[present] = openset.class_centroids(X[tr], np.searchsorted(np.flatnonzero(present), y[tr]), int(present.sum()))
        cents[scored & (fold == k)] = M.l2_normalize(X[scored & (fold == k)]) @ c.T
    for cand in expand_candidates(candidates):
        t0 = time.perf_counter()
        logits = np.zeros((len(X), K + n_bg), np.float32)
        for k in range(n_folds):
            tr = (pool_known | pool_bg) & (fold != k)
            mean, std = standardisation(X, tr)
            (w, b), = _fit_linear_head((X[tr] - mean) / std, targets[tr], K + n_bg, cand, max_iter)
            te = scored & (fold == k)
            z = ((X[te] - mean) / std) @ w.T + b
            logits[te, : z.shape[1]] = z
        zk = logits[pool_known, :K]
        f1 = M.macro_f1(y[pool_known], zk.argmax(1))
        nll = M.log_loss(M.softmax(zk), y[pool_known])
        trial = {"candidate": cand, "describe": _describe(cand), "val_macro_f1": round(f1, 4), "val_nll": round(nll, 4),
                 "seconds": round(time.perf_counter() - t0, 2)}
        trials.append(trial)
        if progress is not None:
            progress(trial)
        if best is None or (f1, -nll) > (best[0], -best[1]):
            best = (f1, nll, cand, logits)
    _, _, cand, logits = best
    return {"candidate": cand, "trials": trials, "logits": logits[:, :K], "background": logits[:, K:] if n_bg else None,
            "centroid_cos": cents, "n_folds": n_folds}


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
    validation: str = "crossfit",
    n_folds: int = 5,
    target_known: float = 0.8,
    target_unknown: float | None = 0.8,
    known_rate: str = "correct",
    methods: tuple[str, ...] = openset.METHODS,
    select_by: str = "auroc",
    candidates: list[dict] | None = None,
    backbone: dict | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress=None,
) -> ArtistTask:
    """Train the artist head with its open-set rule from a manifest and its embeddings.

    `vectors` are aligned with `df` rows (as `embed_manifest` returns them); rows where `ok_mask` is
    False (or the vector is not finite) are left out. With `background`, the head is trained with
    "someone else" classes on paintings of kept-out artists (outlier exposure): with cross-fitting,
    one per kept-out artist with >= `background_min_paintings` paintings and one per style for the
    rest (one in all without a `style` column; `background_classes`); with `holdout`, one. Those
    logits are kept apart from the head's labels as the `background` open-set method's data, so
    the head still names only known artists.

    `validation` says where the choices (weight decay, temperature, open-set method and threshold)
    are made:

    - `crossfit` (default): the known artists' train+val paintings and the kept-out artists of the
      train+val parts are pooled and cut into `n_folds` folds (`crossfit_folds`: known paintings by
      painting, kept-out artists whole); each fold is scored by a head trained on the other folds,
      and every choice is made on these out-of-fold scores; the shipped head is then trained on the
      whole pool. Compared with `holdout` the head sees a third more known paintings (0.8 instead
      of 0.6 of each artist's, by default) and the background logit every train+val kept-out
      artist, and the threshold rests on all of them. On WikiArt (25 artists, benchmarks/artist.py,
      5 seeds, test parts identical): accuracy 0.841 vs 0.820, background AUROC 0.908 vs 0.896,
      unknown-artist paintings rejected 80.9% vs 78.2%, known ones keeping their correct name
      73.2% vs 71.2%.
    - `holdout`: the head is trained on the `train` parts, its choices made on the `val` parts.

    The open-set methods are compared on those scores (`select_by`), and the threshold aims at
    `target_known` / `target_unknown` (see `openset.choose_threshold`). `known_rate` says what
    `target_known` counts: `correct` (default), known paintings keeping their correct name (what a
    user is promised), or `accepted`, known paintings the rule leaves a name (its own cost; the
    head's mistakes are not its doing). `correct` cannot be met above the head's accuracy; when no
    threshold meets both targets the one closest to both is taken (`openset.choose_threshold`).
    On WikiArt (benchmarks/artist.py, 5 seeds, 2026-11-21) `correct` gave 80.2% of unknown-artist
    paintings rejected / 82.0% of known ones keeping their correct name, `accepted` 84.8% / 79.7%.
    Returns an `ArtistTask` whose `metrics` hold the split counts, the kept-out artists, the
    validation comparison of the methods and the test numbers.
    """
    if validation not in VALIDATION:
        raise ValueError(f"validation must be one of {', '.join(VALIDATION)}, not {validation!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(df):
        raise ValueError(f"{len(vectors)} vectors for {len(df)} manifest rows")
    ok = np.isfinite(vectors).all(axis=1)
    if ok_mask is not None:
        ok &= np.asarray(ok_mask, dtype=bool)
    sp = open_set_split(df[ok], column=column, min_per_class=min_per_class, fractions=fractions,
                        unknown_fractions=unknown_fractions, seed=seed)
    f = sp.frame
    X = vectors[np.flatnonzero(ok)[f["row"].to_numpy()]]
    labels = sp.known
    K = len(labels)
    index = {a: i for i, a in enumerate(labels)}
    y = np.array([index.get(a, -1) for a in f["artist_label"]], dtype=np.int64)
    role, split = f[ROLE_COL].to_numpy(), f[SPLIT_COL].to_numpy()
    is_known, is_unknown = role == "known", role == "unknown"
    kt, ut = is_known & (split == "test"), is_unknown & (split == "test")
    bb = dict(backbone or {})
    bb.setdefault("feature_dim", int(X.shape[1]))
    cfg = {"backbone": {"name": bb.get("name", "features"), "feature_dim": int(X.shape[1])}}

    if validation == "crossfit":
        art, cal_known, cal_unknown, extra = _train_crossfit(
            f, X, y, K, labels, column, background=background, background_min_paintings=background_min_paintings,
            n_folds=n_folds, candidates=candidates, threads=threads, seed=seed, progress=progress, cfg=cfg)
    else:
        art, cal_known, cal_unknown, extra = _train_holdout(
            f, X, y, K, labels, column, background=background, candidates=candidates, threads=threads, seed=seed,
            progress=progress, cfg=cfg)
    art.split, art.backbone = sp, bb
    task = art.task

    # Open set: compare the methods on the validation scores (known paintings vs whole held-out artists).
    sk, su, correct = cal_known, cal_unknown, art.calibration_scores["correct"]
    best, rule, results = openset.calibrate_scores(sk, correct, su, methods=methods, target_known=target_known,
                                                   target_unknown=target_unknown, known_rate=known_rate,
                                                   label=UNKNOWN_LABEL, select_by=select_by)
    task.unknown = rule
    art.openset = {"method": best, "rule": rule, "methods": results, "validation": extra["validation"]}
    model = art.to_model(cfg)
    scoring = art.to_model(cfg, all_openset=True)

    metrics: dict[str, Any] = {"split": {**sp.counts(), "validation": extra["validation"]}, "kept_out": sp.kept_out,
                               "selected_head": extra["selected_head"], "background": art.background is not None,
                               "temperature": round(task.temperature, 4), "open_set_validation": art.openset}
    if extra.get("trials"):
        metrics["head_trials"] = extra["trials"]
    metrics.update(extra.get("val_metrics", {}))
    if kt.any():
        proba = model.predict_proba(X[kt])[TASK]
        metrics["closed_set_test"] = closed_set_metrics(proba, y[kt], K)
        metrics["nearest_centroid_test"] = closed_set_metrics(nearest_centroid_scores(X[kt], art.centroids), y[kt], K)
    if kt.any() or ut.any():
        sk_t = openset.model_known_scores(scoring, TASK, X[kt])
        su_t = openset.model_known_scores(scoring, TASK, X[ut]) if ut.any() else {}
        metrics["open_set_test"] = {
            "rule": openset.evaluate_rule(scoring, TASK, rule, X[kt], y[kt], X[ut]),
            "auroc_by_method": {k: round(openset.auroc(sk_t[k], su_t[k]), 4) for k in sk_t if k in su_t},
            # every method at its own validation threshold (the comparison behind the choice)
            "by_method": {k: openset.evaluate_rule(scoring, TASK, openset.make_rule(k, r["operating_point"]["threshold"]),
                                                   X[kt], y[kt], X[ut]) for k, r in results.items()} if ut.any() else {},
            "predict": predictor_rates(model, X[kt], y[kt], X[ut]),
        }
    art.metrics = metrics
    return art


def _train_crossfit(f, X, y, K, labels, column, *, background, background_min_paintings, n_folds, candidates, threads,
                    seed, progress, cfg):
    """The `crossfit` path of `train_artist_task`: (ArtistTask without rule, known scores, unknown scores, extra)."""
    import torch

    from artlens.models.artmodel import TaskConfig
    from artlens.train.calibrate import fit_temperature
    from artlens.train.config import DEFAULTS
    from artlens.train.probe import standardisation

    role = f[ROLE_COL].to_numpy()
    fold = crossfit_folds(f, n_folds, seed)
    f[FOLD_COL] = fold
    pool_known = (role == "known") & (fold >= 0)
    pool_unknown = (role == "unknown") & (fold >= 0)
    if not pool_unknown.any():
        raise ValueError("open-set calibration needs kept-out artists in the train/val parts (unknown_fractions)")
    if len(set(fold[pool_unknown])) < 2 and background:
        raise ValueError(f"cross-fitting with a background logit needs kept-out artists in >= 2 folds "
                         f"(found {len(set(f.loc[pool_unknown, 'artist_label']))} artist(s))")
    bg_class = background_classes(f["artist_label"].to_numpy(), pool_unknown if background else np.zeros(len(f), bool),
                                  background_min_paintings, f["style"].to_numpy() if "style" in f.columns else None)
    n_bg = int(bg_class.max()) + 1
    cands = [c for c in (candidates or CROSSFIT_CANDIDATES) if c.get("type", "linear") == "linear"]
    if not cands:
        raise ValueError("cross-fitting trains linear heads: give linear candidates")
    max_iter = int(DEFAULTS["probe"]["max_iter"])
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        cv = _crossfit(X, y, K, fold, pool_known, bg_class, cands, max_iter, progress)
        rows = pool_known | (bg_class >= 0)
        mean, std = standardisation(X, rows)
        (w, b), = _fit_linear_head((X[rows] - mean) / std, np.where(pool_known, y, K + bg_class)[rows], K + n_bg,
                                   cv["candidate"], max_iter)
    finally:
        torch.set_num_threads(old_threads)
    layers, bg = [(w[:K], b[:K])], ((w[K:], b[K:]) if n_bg else None)
    zk = cv["logits"][pool_known]
    temperature = float(fit_temperature(zk, y[pool_known]))
    task = TaskConfig(name=TASK, labels=list(labels), column=column, hidden=[], dropout=0.0,
                      temperature=temperature, threshold=0.0, unknown=None)
    centroids = openset.class_centroids(X[pool_known], y[pool_known], K)
    art = ArtistTask(task=task, layers=layers, mean=mean, std=std, centroids=centroids, openset={}, background=bg)

    def scores(m):
        z = cv["logits"][m]
        score = ArtModel.open_set_score
        out = {"max_prob": score("max_prob", probs=M.softmax(z / temperature)),
               "energy": score("energy", logits=z),
               "centroid": cv["centroid_cos"][m].max(axis=1).astype(np.float64)}
        if cv["background"] is not None:
            out["background"] = score("background", logits=z, background_logits=cv["background"][m])
        return out

    correct = zk.argmax(axis=1) == y[pool_known]
    sk, su = scores(pool_known), scores(pool_unknown)
    art.calibration_scores = {"known": sk, "unknown": su, "correct": correct}
    desc = f"crossfit: {cv['n_folds']} folds over the train+val paintings ({int(pool_known.sum())} known, {int(pool_unknown.sum())} by kept-out artists)"
    val_metrics = {"closed_set_val": {**closed_set_metrics(M.softmax(zk / temperature), y[pool_known], K), "out_of_fold": True},
                   "nearest_centroid_val": {**closed_set_metrics(cv["centroid_cos"][pool_known], y[pool_known], K), "out_of_fold": True}}
    extra = {"validation": desc, "selected_head": cv["candidate"], "trials": cv["trials"], "val_metrics": val_metrics}
    return art, sk, su, extra


def _train_holdout(f, X, y, K, labels, column, *, background, candidates, threads, seed, progress, cfg):
    """The `holdout` path of `train_artist_task`: the head trained on `train`, choices made on `val`."""
    from artlens.models.artmodel import TaskConfig
    from artlens.models.heads import linear_indices
    from artlens.train.calibrate import fit_temperature
    from artlens.train.probe import train_probe

    role, split = f[ROLE_COL].to_numpy(), f[SPLIT_COL].to_numpy()
    is_known, is_unknown = role == "known", role == "unknown"
    use_bg = background and bool((is_unknown & (split == "train")).any())
    # The probe trainer sees the known artists (+ "someone else": the train and val unknowns).
    targets = y.copy()
    probe_split = np.where(is_known, split, "none").astype(object)
    probe_labels = list(labels)
    pcfg, calibration = _probe_config(candidates, threads)
    if use_bg:
        bg_rows = is_unknown & np.isin(split, ["train", "val"])
        targets[bg_rows] = K
        probe_split[bg_rows] = split[bg_rows]
        probe_labels.append("\x00someone else")  # never a real artist's name
        pcfg["candidates"] = [c for c in pcfg["candidates"] if c.get("type", "linear") == "linear"]
        if not pcfg["candidates"]:
            raise ValueError("the background logit needs a linear head: give linear candidates")
    res = train_probe(X, {TASK: targets}, probe_split.astype(str), [{"name": TASK, "labels": probe_labels, "column": column}],
                      pcfg, calibration, seed=seed, progress=progress)
    r = res.results[TASK]
    layers = [
        (r.head[i].weight.detach().cpu().numpy().astype(np.float32), r.head[i].bias.detach().cpu().numpy().astype(np.float32))
        for i in linear_indices(r.head)
    ]
    bg = None
    if use_bg:  # the last output is the background logit: kept apart from the labels
        (w, b) = layers[-1]
        layers[-1] = (w[:K], b[:K])
        bg = (w[K:], b[K:])
    tr, kv = is_known & (split == "train"), is_known & (split == "val")
    uv = is_unknown & (split == "val")
    if not uv.any():
        raise ValueError("open-set calibration needs validation paintings of unknown classes")
    centroids = openset.class_centroids(X[tr], y[tr], K)
    task = TaskConfig(name=TASK, labels=list(labels), column=column, hidden=list(r.hidden), dropout=float(r.dropout),
                      temperature=1.0, threshold=0.0, unknown=None)
    art = ArtistTask(task=task, layers=layers, mean=res.mean, std=res.std, centroids=centroids, openset={}, background=bg)
    # Temperature of the probabilities users see (softmax over the known artists only).
    task.temperature = float(fit_temperature(art.to_model(cfg).head_logits(X[kv])[TASK], y[kv]))
    scoring = art.to_model(cfg, all_openset=True)
    sk = openset.model_known_scores(scoring, TASK, X[kv])
    su = openset.model_known_scores(scoring, TASK, X[uv])
    correct = scoring.predict_proba(X[kv])[TASK].argmax(axis=1) == y[kv]
    art.calibration_scores = {"known": sk, "unknown": su, "correct": correct}
    model = art.to_model(cfg)
    val_metrics = {"closed_set_val": closed_set_metrics(model.predict_proba(X[kv])[TASK], y[kv], K),
                   "nearest_centroid_val": closed_set_metrics(nearest_centroid_scores(X[kv], centroids), y[kv], K)}
    extra = {"validation": "holdout: choices on the val parts", "selected_head": r.chosen, "val_metrics": val_metrics}
    return art, sk, su, extra


def artist_task_from_manifest(
    df,
    backbone: str = "clip-vit-b16",
    *,
    store_root=None,
    progress: bool = False,
    workers: int = 2,
    **kw,
) -> tuple[ArtistTask, Any]:
    """Embed a manifest (reusing the embedding store) and `train_artist_task` on it.

    Returns `(ArtistTask, errors)`: errors is the DataFrame `path, reason` of rows left out.
    """
    from artlens.embed import embed_manifest, get_encoder

    encoder = get_encoder(backbone)
    vectors, ok, errors = embed_manifest(df, encoder, store_root=store_root, progress=progress, workers=workers)[:3]
    bb = {"name": backbone, "feature_dim": int(encoder.dim), "backbone_id": encoder.backbone_id}
    return train_artist_task(df, vectors, ok, backbone=bb, **kw), errors


def with_artist_task(model, df, **kw) -> tuple[Any, ArtistTask]:
    """One call for a shipped model: `(model + artist head + unknown rule, the ArtistTask)`.

    >>> model, art = with_artist_task(ArtModel.load(d), manifest, min_per_class=40)
    >>> model.save(d); art.metrics["open_set_test"]

    The head reads the model's backbone embeddings (from the store when present); `kw` go to
    `train_artist_task` (e.g. `fractions=(0.8, 0.2, 0.0)` to keep no test part once the numbers are
    known: with cross-fitting the head then trains on every known painting).
    """
    art, _ = artist_task_from_manifest(df, model.backbone_name, **kw)
    return add_artist_task(model, art), art
