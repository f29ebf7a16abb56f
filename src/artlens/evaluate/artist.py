"""Held-out numbers of an artist head with its `unknown artist` rule.

`evaluate_artist(model, frame, X)` scores the `test` parts of an `artlens.data.artist_split` frame
(`X` aligned with its rows): the head's closed-set accuracy / macro-F1 / top-k on the known artists'
paintings beside a nearest-centroid baseline, the open-set AUROC of every method the model carries
data for, and what users see through `Predictor`: known paintings keeping their correct name, called
`unknown artist` or given a wrong name, and unknown artists' paintings called `unknown artist`.
"""

from __future__ import annotations

import numpy as np

from artlens import metrics as M
from artlens.data.artist_split import ROLE_COL, SPLIT_COL
from artlens.models.artmodel import ArtModel
from artlens.predict import Predictor

TASK = "artist"


def nearest_centroid_scores(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine to each class centroid: the nearest-centroid baseline's class scores."""
    return M.l2_normalize(features) @ M.l2_normalize(centroids).T


def known_scores(model: ArtModel, features: np.ndarray, task: str = TASK) -> dict[str, np.ndarray]:
    """Known scores of every open-set method the model has data for (`ArtModel.known_scores`)."""
    logits = model.head_logits(features)[task]
    probs = model.predict_proba(features)[task]
    out = {}
    for m in ArtModel.OPEN_SET_METHODS:
        if m == "centroid" and f"openset.{task}.centroids" not in model.tensors:
            continue
        if m == "background" and f"openset.{task}.background.weight" not in model.tensors:
            continue
        out[m] = model.known_scores(task, features, logits, method=m, probs=probs)
    return out


def predictor_rates(model, known_features, known_y, unknown_features, task: str = TASK) -> dict:
    """What users see, through `Predictor`: shares of answers per group of paintings."""
    pred = Predictor(model, top_k=1)
    rule = model.task(task).unknown
    unk = rule.get("label") if rule else None
    labels = model.task(task).labels
    out = {}
    if len(known_features):
        names = np.array([r[task]["label"] for r in pred.predict_features(known_features)], dtype=object)
        truth = np.array([labels[i] for i in known_y], dtype=object)
        out["known_correct_name"] = round(float((names == truth).mean()), 4)
        out["known_called_unknown"] = round(float((names == unk).mean()), 4)
        out["known_wrong_name"] = round(float(((names != truth) & (names != unk)).mean()), 4)
    if len(unknown_features):
        names = np.array([r[task]["label"] for r in pred.predict_features(unknown_features)], dtype=object)
        out["unknown_called_unknown"] = round(float((names == unk).mean()), 4)
        out["false_attribution_rate"] = round(float((names != unk).mean()), 4)
    return out


def evaluate_artist(model: ArtModel, frame, X: np.ndarray, part: str = "test", task: str = TASK) -> dict:
    """`{"closed_set_<part>", "nearest_centroid_<part>", "open_set_<part>"}` on a split's `part`.

    `model` carries the artist task (a model with every method's tensors, e.g.
    `ArtistTask.to_model(all_openset=True)`, also gets each method's AUROC); `frame` is an
    `open_set_split` frame (`artist_label`, SPLIT_COL, ROLE_COL) and `X` its rows' features.
    Empty when the split keeps no such part.
    """
    labels = model.task(task).labels
    index = {a: i for i, a in enumerate(labels)}
    split, role = frame[SPLIT_COL].to_numpy(), frame[ROLE_COL].to_numpy()
    kt, ut = (role == "known") & (split == part), (role == "unknown") & (split == part)
    y = np.array([index.get(a, -1) for a in frame["artist_label"]], dtype=np.int64)[kt]
    out: dict = {}
    if not kt.any() and not ut.any():
        return out
    if kt.any():
        out[f"closed_set_{part}"] = M.closed_set_metrics(model.predict_proba(X[kt])[task], y, len(labels))
        c = model.tensors.get(f"openset.{task}.centroids")
        if c is not None:
            out[f"nearest_centroid_{part}"] = M.closed_set_metrics(nearest_centroid_scores(X[kt], c), y, len(labels))
    sk, su = known_scores(model, X[kt], task), known_scores(model, X[ut], task)
    rule = model.task(task).unknown or {}
    open_set = {"auroc_by_method": {m: round(M.auroc(sk[m], su[m]), 4) for m in sk}}
    if rule.get("method") in sk:
        open_set["auroc"] = open_set["auroc_by_method"][rule["method"]]
    open_set.update(predictor_rates(model, X[kt], y, X[ut], task))
    out[f"open_set_{part}"] = open_set
    return out

