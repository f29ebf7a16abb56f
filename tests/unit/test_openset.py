"""Artist task and open-set rules on synthetic embeddings (clusters): thresholds, rules, split, training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from artlens import metrics as M
from artlens.data.artist_split import (
    FOLD_COL,
    GROUP_COL,
    ROLE_COL,
    SPLIT_COL,
    crossfit_folds,
    open_set_split,
    title_year,
)
from artlens.data.taxonomy import artist_display_name, wikiart_name_fields
from artlens.evaluate.artist import evaluate_artist, known_scores
from artlens.models.artmodel import ArtModel
from artlens.predict import Predictor
from artlens.train import openset
from artlens.train.artist import background_classes, fit_head, fold_transfer, train_artist_task
from artlens.train.artist_task import add_artist_task

LINEAR = [{"components": None, "weight_decay": 1e-3}]

DIM = 24


def _train(df, X, **kw):
    """`train_artist_task` + the test numbers (`artlens.evaluate.artist`), as `artlens train-artist` does."""
    kw.setdefault("candidates", LINEAR)
    art = train_artist_task(df, X, threads=1, **kw)
    f = art.split.frame
    art.metrics.update(evaluate_artist(art.to_model(all_openset=True), f, X[f["row"].to_numpy()]))
    return art


def _clusters(n_known=6, n_unknown=8, per_known=40, per_unknown=12, spread=1.3, seed=0):
    """A WikiArt-like manifest (`<slug>_<title>.jpg`) and unit vectors clustered by artist."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    for a in range(n_known + n_unknown):
        n = per_known if a < n_known else per_unknown
        centre = rng.normal(size=DIM)
        centre /= np.linalg.norm(centre)
        for i in range(n):
            v = centre + spread * rng.normal(size=DIM) / np.sqrt(DIM)
            rows.append({"path": f"/data/Style/artist-{a:02d}_work-{i}.jpg", "sha256": f"{a:02d}{i:062d}"})
            vecs.append(v / np.linalg.norm(v))
    return pd.DataFrame(rows), np.asarray(vecs, dtype=np.float32)


@pytest.fixture(scope="module")
def trained():
    import torch

    torch.set_num_threads(1)
    df, X = _clusters(n_unknown=12, per_known=60, spread=1.2)
    return df, X, _train(df, X, min_per_class=40, backbone={"name": "synthetic"})


# ----------------------------------------------------------------------------- labels and split
def test_slug_names_and_file_names():
    assert artist_display_name("claude-monet") == "Claude Monet"
    assert artist_display_name("vincent-van-gogh") == "Vincent van Gogh"
    assert artist_display_name("rembrandt") == "Rembrandt"
    assert wikiart_name_fields(["/x/Impressionism/claude-monet_water-lilies-1916.jpg", "/x/untitled.jpg"],
                               "artist") == ["claude-monet", None]


def test_split_holds_out_whole_artists_and_counts_duplicates_once():
    df, _ = _clusters(n_known=3, n_unknown=6, per_known=40, per_unknown=10)
    # artist-00's first work filed twice (same bytes under another style) and an AI image "by" it
    dup = df.iloc[[0]].assign(path="/data/Other/artist-00_work-0.jpg")
    ai = pd.DataFrame([{"path": "/ai/artist-01_fake.jpg", "sha256": "f" * 64, "origin": "ai"}])
    df = pd.concat([df.assign(origin="human"), dup.assign(origin="human"), ai], ignore_index=True)
    sp = open_set_split(df, min_per_class=40, fractions=(0.6, 0.2, 0.2), seed=1)
    f = sp.frame
    assert sp.known == ["Artist 00", "Artist 01", "Artist 02"]
    assert len(sp.kept_out) == 6 and set(sp.kept_out.values()) == {10}
    assert len(f) == 3 * 40 + 6 * 10  # duplicate counted once, the AI image left out
    known = f[f[ROLE_COL] == "known"]
    for _, g in known.groupby("artist_label"):  # every known artist in all three parts, by painting
        assert g[SPLIT_COL].value_counts().to_dict() == {"train": 24, "val": 8, "test": 8}
    unk = f[f[ROLE_COL] == "unknown"]
    assert unk.groupby("artist_label")[SPLIT_COL].nunique().max() == 1  # never on two sides
    assert set(unk[SPLIT_COL]) == {"train", "val", "test"}
    counts = sp.counts()
    assert counts["unknown_train_artists"] + counts["unknown_val_artists"] + counts["unknown_test_artists"] == 6


def test_split_refuses_too_few_known_artists():
    df, _ = _clusters(n_known=1, n_unknown=3, per_known=40, per_unknown=5)
    with pytest.raises(ValueError, match="only 1 artist"):
        open_set_split(df, min_per_class=40)


# ----------------------------------------------------------------------------- thresholds and rules
def test_choose_threshold_criteria():
    known = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    unknown = np.array([0.65, 0.35, 0.25, 0.15, 0.1, 0.0])
    # Both targets reachable: the cut with the largest margin over both (0.375: 6/10 correct kept,
    # 5/6 unknown rejected; margins 0.1 and 0.33 -> 0.1; at 0.45 only 0.0 for the unknowns)
    op = openset.choose_threshold(known, correct, unknown, target_known=0.5, target_unknown=0.5)
    assert op.criterion.startswith("both")
    assert op.known_correct >= 0.5 and op.unknown_rejected >= 0.5
    kc = lambda c: (correct & (known >= c)).mean()  # noqa: E731
    ur = lambda c: (unknown < c).mean()  # noqa: E731
    grid = np.linspace(-0.1, 1.0, 1101)
    best_margin = max(min(kc(c) - 0.5, ur(c) - 0.5) for c in grid)
    assert min(op.known_correct - 0.5, op.unknown_rejected - 0.5) == pytest.approx(best_margin)
    assert op.false_attribution_rate == pytest.approx(1 - op.unknown_rejected)
    # Each target reachable alone, not both (70% correct needs a cut <= 0.35, which rejects at most
    # half the unknowns): the cut closest to both, not the known target at the unknowns' expense
    op = openset.choose_threshold(known, correct, unknown, target_known=0.7, target_unknown=0.9)
    assert op.criterion.startswith("closest")
    closest = max(min(kc(c) - 0.7, ur(c) - 0.9) for c in grid)
    assert closest < 0 and min(op.known_correct - 0.7, op.unknown_rejected - 0.9) == pytest.approx(closest)
    # Known target only: the best sum among cuts keeping >= 60% correct; never above a sample
    op = openset.choose_threshold(known, correct, unknown, target_known=0.6)
    assert op.criterion.startswith("known") and op.known_correct >= 0.6
    assert op.known_correct + op.unknown_rejected == pytest.approx(max(kc(c) + ur(c) for c in grid if kc(c) >= 0.6))
    assert op.threshold not in set(known) | set(unknown)
    # Unreachable known target (accuracy 0.8 < 0.9): the balanced optimum over all cuts
    op = openset.choose_threshold(known, correct, unknown, target_known=0.9, target_unknown=0.9)
    assert op.criterion.startswith("balanced")
    assert op.known_correct + op.unknown_rejected == pytest.approx(max(kc(c) + ur(c) for c in grid))


def test_separable_scores_get_a_cut_in_the_gap():
    known = np.linspace(0.6, 1.0, 50)
    unknown = np.linspace(0.0, 0.4, 50)
    op = openset.choose_threshold(known, np.ones(50, bool), unknown, target_known=0.8, target_unknown=0.8)
    assert 0.4 < op.threshold < 0.6  # not pushed up to the 80% quantile of the known scores
    assert op.known_correct == 1.0 and op.unknown_rejected == 1.0


def test_auroc_orders_known_above_unknown():
    assert M.auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert M.auroc(np.array([0.1, 0.2]), np.array([0.9, 0.8])) == 0.0
    assert np.isnan(M.auroc(np.array([0.5]), np.array([])))


def test_balanced_point_is_the_best_cut_for_both():
    known = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    unknown = np.array([0.65, 0.35, 0.25, 0.15, 0.1, 0.0])
    grid = np.linspace(-0.1, 1.0, 1101)
    best = max(min((correct & (known >= c)).mean(), (unknown < c).mean()) for c in grid)
    assert openset.balanced_point(known, correct, unknown) == pytest.approx(best)
    assert openset.balanced_point(np.linspace(0.6, 1, 9), np.ones(9, bool), np.linspace(0, 0.4, 9)) == 1.0


@pytest.mark.parametrize("n_background", [1, 3])
@pytest.mark.parametrize("method", openset.METHODS)
def test_open_set_reject_applies_the_calibrated_rule(method, n_background):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 8)).astype(np.float32)
    cents = openset.l2n(rng.normal(size=(4, 8)))
    cfg = {"format": "artlens-model", "version": 1, "mode": "probe", "backbone": {"name": "x", "feature_dim": 8},
           "tasks": [{"name": "artist", "labels": list("abcd"), "temperature": 1.7}]}
    model = ArtModel(cfg, {"heads.artist.0.weight": w, "heads.artist.0.bias": np.zeros(4, np.float32),
                           "openset.artist.centroids": cents, "norm.mean": rng.normal(size=8).astype(np.float32),
                           "norm.std": rng.uniform(0.5, 2, size=8).astype(np.float32),
                           "openset.artist.background.weight": rng.normal(size=(n_background, 8)).astype(np.float32),
                           "openset.artist.background.bias": np.full(n_background, 0.3, np.float32)})
    X = rng.normal(size=(200, 8)).astype(np.float32)
    scores = known_scores(model, X)[method]
    cut = float(np.median(scores))
    model.task("artist").unknown = openset.make_rule(method, cut)
    np.testing.assert_array_equal(model.known_scores("artist", X), scores)
    rejected = model.open_set_reject("artist", X)
    np.testing.assert_array_equal(rejected, scores < cut)
    assert 80 < rejected.sum() < 120
    # with the logits and probabilities the predictor passes, the same rows
    logits = model.head_logits(X)["artist"]
    np.testing.assert_array_equal(model.open_set_reject("artist", X, logits, model.probabilities({"artist": logits})["artist"]), rejected)


# ----------------------------------------------------------------------------- the whole task
def test_trained_head_names_known_artists_and_rejects_unknown_ones(trained):
    _, _, art = trained
    m = art.metrics
    assert art.labels == [f"Artist {i:02d}" for i in range(6)]
    assert m["split"]["known_artists"] == 6 and m["split"]["kept_out_artists"] == 12
    assert m["closed_set_test"]["accuracy"] >= 0.9
    assert m["nearest_centroid_test"]["accuracy"] >= 0.9
    val = m["open_set_validation"]
    assert set(val["methods"]) == set(openset.METHODS)
    # the method whose best threshold does best on both targets at once (balanced point)
    assert val["method"] == max(val["methods"], key=lambda k: (val["methods"][k]["balanced"], val["methods"][k]["auroc"]))
    assert art.task.unknown["method"] == val["method"] and art.task.unknown["label"] == "unknown artist"
    test = m["open_set_test"]
    # Unknown artists form clusters of their own in random directions: closeness to the known
    # centroids separates them better than the head's confidence (which grows with distance from its
    # decision boundaries, not with closeness to the training paintings). (A background logit needs
    # other artists that resemble the unknown ones, as on WikiArt; here they do not.)
    auc = {k: r["auroc"] for k, r in val["methods"].items()}
    assert auc["centroid"] > auc["max_prob"]
    assert test["auroc"] == test["auroc_by_method"][val["method"]] > 0.9
    assert m["background"] and m["split"]["unknown_train"] > 0
    assert test["known_correct_name"] >= 0.8
    assert test["unknown_called_unknown"] >= 0.8
    assert test["false_attribution_rate"] == pytest.approx(1 - test["unknown_called_unknown"])
    assert test["known_correct_name"] + test["known_called_unknown"] + test["known_wrong_name"] == pytest.approx(1, abs=1e-3)


def test_standalone_model_predicts_unknown_artist(trained, tmp_path):
    df, X, art = trained
    model = ArtModel.load(art.to_model().save(tmp_path / "m"))
    assert model.task("artist").unknown == art.task.unknown
    pred = Predictor(model, top_k=2)
    known_row = X[df["path"].str.contains("artist-02_").to_numpy()][:1]
    far = -X[:1]  # the opposite direction: like no artist at all
    out = pred.predict_features(np.vstack([known_row, far]))
    assert out[0]["artist"]["label"] == "Artist 02"
    assert out[1]["artist"]["label"] == "unknown artist"


def test_add_artist_task_keeps_logits_under_another_normalisation(trained):
    _, X, art = trained
    rng = np.random.default_rng(5)
    cfg = {"format": "artlens-model", "version": 1, "mode": "probe", "backbone": {"name": "synthetic", "feature_dim": DIM},
           "tasks": [{"name": "style", "labels": ["a", "b"]}]}
    base = ArtModel(cfg, {
        "heads.style.0.weight": rng.normal(size=(2, DIM)).astype(np.float32),
        "heads.style.0.bias": np.zeros(2, np.float32),
        "norm.mean": rng.normal(size=DIM).astype(np.float32),
        "norm.std": rng.uniform(0.5, 2.0, size=DIM).astype(np.float32),
    })
    merged = add_artist_task(base, art)
    assert merged.task_names == ["style", "artist"]
    np.testing.assert_allclose(merged.head_logits(X)["artist"], art.to_model().head_logits(X)["artist"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(merged.head_logits(X)["style"], base.head_logits(X)["style"])
    assert merged.task("artist").unknown == art.task.unknown
    assert merged.task("artist").withhold is None  # no origin task to defer to
    # beside an origin head, the artist's name is withheld when origin says `ai`
    with_origin = ArtModel({**cfg, "tasks": [*cfg["tasks"], {"name": "origin", "labels": ["human", "ai"]}]},
                           {**base.tensors, "heads.origin.0.weight": np.zeros((2, DIM), np.float32),
                            "heads.origin.0.bias": np.zeros(2, np.float32)})
    assert add_artist_task(with_origin, art).task("artist").withhold == {"task": "origin", "when": "ai"}
    with pytest.raises(ValueError, match="trained on synthetic"):
        add_artist_task(ArtModel({**cfg, "backbone": {"name": "other", "feature_dim": DIM}}, base.tensors), art)


def test_background_logit_travels_with_the_rule(trained):
    """A background rule carries its logit (folded into the model's normalisation); others do not."""
    _, X, art = trained
    # kept-out artists of 12 paintings: each one in the cross-fitting pool has a background class
    n_pool = art.split.frame.loc[lambda f: (f[ROLE_COL] == "unknown") & (f[FOLD_COL] >= 0), "artist_label"].nunique()
    assert art.background is not None and art.background[0].shape == (n_pool, DIM) and n_pool >= 2
    old = art.task.unknown
    try:
        art.task.unknown = openset.make_rule("background", 0.5)
        model = art.to_model()
        assert set(k for k in model.tensors if k.startswith("openset.")) == {
            "openset.artist.background.weight", "openset.artist.background.bias"}
        # the logit seen by predict is the trained one: w.(x - m)/s + b
        w, b = art.background
        expected = ((X - art.mean) / art.std) @ w.T + b
        got = model.normalise(X) @ model.tensors["openset.artist.background.weight"].T + model.tensors["openset.artist.background.bias"]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        art.task.unknown = openset.make_rule("energy", -1.0)
        assert not any(k.startswith("openset.") for k in art.to_model().tensors)
    finally:
        art.task.unknown = old


def test_background_classes_give_well_represented_artists_their_own():
    artists = np.array(["b", "a", "b", "c", "a", "b", "x", "d"], dtype=object)
    rows = np.array([True, True, True, True, True, True, False, True])
    # b: 3 paintings, a: 2, c and d: 1 -> a and b (sorted) get 0 and 1, c and d share 2; x is not a row
    np.testing.assert_array_equal(background_classes(artists, rows, 2), [1, 0, 1, 2, 0, 1, -1, 2])
    np.testing.assert_array_equal(background_classes(artists, rows, None), [0, 0, 0, 0, 0, 0, -1, 0])
    np.testing.assert_array_equal(background_classes(artists, rows, 9), [0, 0, 0, 0, 0, 0, -1, 0])
    assert (background_classes(artists, np.zeros(8, bool), 2) == -1).all()
    # the rest by group (missing values are a group of their own)
    style = np.array(["Cubism", "x", "x", None, "x", "x", "x", "Cubism"], dtype=object)
    np.testing.assert_array_equal(background_classes(artists, rows, 2, style), [1, 0, 1, 3, 0, 1, -1, 2])


def test_without_background_the_method_is_not_offered():
    import torch

    torch.set_num_threads(1)
    df, X = _clusters(n_known=3, n_unknown=4, per_known=40, per_unknown=10, seed=2)
    art = train_artist_task(df, X, min_per_class=40, background=False, threads=1, candidates=LINEAR)
    assert art.background is None and not art.metrics["background"]
    assert set(art.metrics["open_set_validation"]["methods"]) == {"max_prob", "energy", "centroid"}


def test_final_model_without_test_split():
    """Shipping: every known painting but the validation ones trains the head; no test numbers."""
    import torch

    torch.set_num_threads(1)
    df, X = _clusters(n_known=3, n_unknown=6, per_known=40, per_unknown=10, seed=4)
    art = _train(df, X, min_per_class=40, fractions=(0.8, 0.2, 0.0), unknown_fractions=(0.7, 0.3, 0.0))
    s = art.metrics["split"]
    assert s["known_train"] == 3 * 32 and s["known_val"] == 3 * 8 and "known_test" not in s and "unknown_test" not in s
    assert "open_set_test" not in art.metrics and art.task.unknown["label"] == "unknown artist"


# ----------------------------------------------------------------------------- the shipped rule: cross-fitting
def test_crossfit_folds_spread_known_paintings_and_keep_unknown_artists_whole():
    df, _ = _clusters(n_known=3, n_unknown=9, per_known=40, per_unknown=10, seed=6)
    dup = df.iloc[[0]].assign(path="/data/Other/artist-00_work-0b.jpg")  # a near copy (same bytes): one group
    df = pd.concat([df, dup], ignore_index=True)
    f = open_set_split(df, min_per_class=40, seed=3).frame
    fold = crossfit_folds(f, n_folds=4, seed=3, shift="painting")
    pool = f[SPLIT_COL].isin(["train", "val"]).to_numpy()
    assert (fold[~pool] == -1).all() and (fold[pool] >= 0).all() and set(fold[pool]) == {0, 1, 2, 3}
    known = pool & (f[ROLE_COL] == "known").to_numpy()
    for _, idx in f[known].groupby("artist_label").groups.items():  # every known artist in every fold, evenly
        counts = np.bincount(fold[idx], minlength=4)
        assert counts.min() >= 1 and counts.max() - counts.min() <= 2
    g = pd.DataFrame({"group": f[GROUP_COL], "fold": fold})[pool]
    assert g.groupby("group")["fold"].nunique().max() == 1  # near-duplicates never on two sides
    unknown = pool & (f[ROLE_COL] == "unknown").to_numpy()
    per_artist = pd.Series(fold[unknown]).groupby(f["artist_label"].to_numpy()[unknown]).nunique()
    assert per_artist.max() == 1 and len(set(fold[unknown])) == 4  # whole artists, spread over the folds
    assert (crossfit_folds(f, n_folds=4, seed=3, shift="painting") == fold).all()  # seeded
    with pytest.raises(ValueError, match="at least 2 folds"):
        crossfit_folds(f, n_folds=1)
    with pytest.raises(ValueError, match="shift must be"):
        crossfit_folds(f, shift="random")


def test_title_year_reads_the_last_year_of_a_title():
    assert title_year("water lilies 1916") == 1916.0
    assert title_year("polynesia the sky 1946(1)") == 1946.0
    assert title_year("view from 1870 to 1875") == 1875.0
    assert np.isnan(title_year("sunday 12345 afternoon")) and np.isnan(title_year(None)) and np.isnan(title_year("untitled"))


def test_period_folds_hold_out_other_styles_and_periods_of_the_same_artists():
    """The shipped folds: an artist's paintings in a minority style travel to one fold together, and
    its dated paintings go to the folds in contiguous periods (a fold's years never interleave with
    another's); undated paintings are dealt one at a time; unknown artists stay whole."""
    rows = []
    for a in range(3):
        for i in range(60):
            style = "Cubism" if (a == 0 and i < 15) else "Impressionism"
            year = f"-{1880 + i}" if i % 3 else ""  # two thirds dated
            rows.append({"path": f"/d/{style}/artist-{a:02d}_work-{i}{year}.jpg", "style": style, "sha256": f"{a}{i:063d}"})
    for a in range(3, 13):
        rows += [{"path": f"/d/Cubism/artist-{a:02d}_w-{i}.jpg", "style": "Cubism", "sha256": f"{a:02d}{i:062d}"} for i in range(5)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    f = open_set_split(df, min_per_class=40, fractions=(0.8, 0.2, 0.0), unknown_fractions=(0.7, 0.3, 0.0), seed=0).frame
    fold = crossfit_folds(f, n_folds=5, seed=0)
    assert (fold >= 0).all() and set(fold) == set(range(5))
    known = (f[ROLE_COL] == "known").to_numpy()
    cubism0 = known & (f["artist_label"] == "Artist 00").to_numpy() & (f["style"] == "Cubism").to_numpy()
    assert len(set(fold[cubism0])) == 1  # 15 Cubist paintings of artist 00: one block
    years = np.array([title_year(t) for t in f["title"]])
    for artist in ("Artist 01", "Artist 02"):  # (artist 00's Cubist block makes two periods share a fold)
        rows_a = known & (f["artist_label"] == artist).to_numpy() & ~cubism0 & np.isfinite(years)
        ranges = sorted((years[rows_a & (fold == k)].min(), years[rows_a & (fold == k)].max()) for k in set(fold[rows_a]))
        assert len(ranges) == 5 and all(hi < lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))  # contiguous periods
    for artist in ("Artist 00", "Artist 01", "Artist 02"):
        assert np.bincount(fold[known & (f["artist_label"] == artist).to_numpy()], minlength=5).min() >= 5
    unknown = ~known
    assert pd.Series(fold[unknown]).groupby(f["artist_label"].to_numpy()[unknown]).nunique().max() == 1
    assert (crossfit_folds(f, n_folds=5, seed=0) == fold).all()  # seeded


def test_shipped_head_trains_on_train_and_val_and_calibrates_out_of_fold(trained):
    """Cross-fitting (the default): the shipped head and centroids use every train+val painting,
    and the threshold is chosen on out-of-fold scores, which are the only honest ones: the
    background logit was trained on these very unknown artists."""
    df, X, art = trained
    m = art.metrics
    assert m["split"]["validation"].startswith("crossfit") and art.openset["validation"].startswith("crossfit")
    assert m["closed_set_val"]["out_of_fold"] and m["closed_set_val"]["n"] == m["split"]["known_train"] + m["split"]["known_val"]
    f = art.split.frame
    Xf = X[f["row"].to_numpy()]
    role, fold = f[ROLE_COL].to_numpy(), f[FOLD_COL].to_numpy()
    pool_known, pool_unknown = (role == "known") & (fold >= 0), (role == "unknown") & (fold >= 0)
    y = np.array([art.labels.index(a) if a in art.labels else -1 for a in f["artist_label"]])
    np.testing.assert_allclose(art.centroids, openset.class_centroids(Xf[pool_known], y[pool_known], len(art.labels)), atol=1e-6)
    np.testing.assert_allclose(art.mean, Xf[pool_known | pool_unknown].mean(axis=0), atol=1e-5)
    c = art.calibration_scores
    assert len(c["correct"]) == pool_known.sum() and set(c["unknown"]) == set(openset.METHODS)
    assert len(c["unknown"]["background"]) == pool_unknown.sum()
    in_sample = known_scores(art.to_model(all_openset=True), Xf[pool_unknown])["background"]
    assert c["unknown"]["background"].mean() > in_sample.mean() + 0.05  # unseen artists look more known
    # The rule is the validation operating point of the chosen method on those scores.
    rule, op = art.task.unknown, art.openset["methods"][art.openset["method"]]["operating_point"]
    method = rule["method"]
    thr = -rule["threshold"] if method == "energy" else rule["threshold"]
    again = openset.operating_point(thr, c["known"][method], c["correct"], c["unknown"][method])
    assert again.unknown_rejected == pytest.approx(op["unknown_rejected"]) and again.known_correct == pytest.approx(op["known_correct"])
    assert op["unknown_rejected"] >= 0.8 and op["known_accepted"] >= 0.8
    # The rule checked fold by fold (threshold chosen without the fold), every pool painting once.
    ft = m["fold_transfer"]
    assert sum(r["n_known"] for r in ft["folds"]) == pool_known.sum()
    assert sum(r["n_unknown"] for r in ft["folds"]) == pool_unknown.sum()
    assert ft["known_correct"]["min"] <= ft["known_correct"]["mean"] <= ft["known_correct"]["max"]


def test_unknown_fold_shifts_are_refused():
    df, X = _clusters(n_known=3, n_unknown=8, per_known=40, per_unknown=10, seed=7)
    with pytest.raises(ValueError, match="shift must be"):
        train_artist_task(df, X, min_per_class=40, shift="test")


def test_fold_transfer_chooses_each_threshold_without_its_fold():
    """Fold 1's scores are shifted down (other periods of the artists): the threshold chosen on fold
    0 alone (>= 80% of its known paintings kept, its unknown ones rejected) keeps few of fold 1's."""
    known = np.r_[np.linspace(0.5, 1.0, 50), np.linspace(0.1, 0.6, 50)]
    unknown = np.r_[np.linspace(0.0, 0.45, 50), np.linspace(0.0, 0.45, 50)]
    fold_k, fold_u = np.repeat([0, 1], 50), np.repeat([0, 1], 50)
    ft = fold_transfer(known, np.ones(100, bool), unknown, fold_k, fold_u, target_known=0.8, target_unknown=0.8)
    by = {r["fold"]: r for r in ft["folds"]}
    assert by[1]["known_correct"] < 0.3 and by[1]["unknown_rejected"] == 1.0  # fold 0's cut is too high for fold 1
    assert by[0]["known_correct"] == 1.0  # fold 1's cut is low enough for fold 0
    assert ft["known_correct"]["min"] == by[1]["known_correct"] and ft["known_correct"]["max"] == 1.0


def test_pca_head_folds_into_one_linear_layer():
    """A head trained on whitened principal axes is one Linear layer over the standardised features:
    the same logits as the projection followed by the head."""
    import torch
    from sklearn.decomposition import PCA

    from artlens.train.fitting import fit_linear

    torch.set_num_threads(1)
    df, X = _clusters(n_known=4, n_unknown=0, per_known=30, seed=9)
    y = np.repeat(np.arange(4), 30)
    rows = np.ones(len(X), bool)
    w, b, mean, std = fit_head(X, y, 4, {"components": 8, "weight_decay": 1e-2}, rows)
    assert w.shape == (4, DIM) and b.shape == (4,)
    Z = (X - mean) / std
    pca = PCA(8, whiten=True, svd_solver="full", random_state=0).fit(Z)
    head = fit_linear(pca.transform(Z).astype(np.float32), y, 4, 1e-2)
    with torch.no_grad():
        expected = head(torch.as_tensor(pca.transform(Z), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(Z @ w.T + b, expected, atol=1e-3)
    assert ((Z @ w.T + b).argmax(1) == y).mean() > 0.9


def test_train_artist_report_names_the_kept_out_artists(trained):
    from io import StringIO

    from rich.console import Console

    from artlens.cli.artist import print_artist_report

    _, _, art = trained
    buf = StringIO()
    print_artist_report(art.metrics, Console(file=buf, width=200))
    out = buf.getvalue()
    assert "kept out (< 40 paintings): Artist 06 (12)" in out and "Artist 17 (12)" in out


def _lookalikes(n_known=6, n_unknown=24, per_known=50, per_unknown=10, spread=1.0, mix=0.5, seed=0):
    """Unknown artists that resemble the known ones (WikiArt's case: other painters of the same
    schools): each sits between a known artist and a direction the unknown artists share."""
    rng = np.random.default_rng(seed)

    def unit(v):
        return v / np.linalg.norm(v)

    known = [unit(rng.normal(size=DIM)) for _ in range(n_known)]
    shared = unit(rng.normal(size=DIM))
    rows, vecs = [], []
    for a in range(n_known + n_unknown):
        if a < n_known:
            centre, n = known[a], per_known
        else:
            centre = unit((1 - mix) * known[rng.integers(n_known)] + mix * shared + 0.3 * unit(rng.normal(size=DIM)))
            n = per_unknown
        for i in range(n):
            rows.append({"path": f"/data/Style/artist-{a:02d}_work-{i}.jpg", "sha256": f"{a:02d}{i:062d}"})
            vecs.append(unit(centre + spread * rng.normal(size=DIM) / np.sqrt(DIM)))
    return pd.DataFrame(rows), np.asarray(vecs, dtype=np.float32)


def test_background_rule_is_chosen_when_unknown_artists_look_like_known_ones():
    """The shipped rule on WikiArt: a background logit trained on other kept-out artists separates
    look-alike unknown artists better than confidence or centroid distance, and its threshold, chosen
    out of fold, holds on artists never seen (>= 80% rejected, >= 80% keep their correct name).
    One background class: here what the unknown artists share is one direction, which one logit
    learns; a logit per kept-out artist (the default, better on WikiArt) learns each artist's own."""
    import torch

    torch.set_num_threads(1)
    df, X = _lookalikes(seed=0)
    art = _train(df, X, min_per_class=40, background_min_paintings=0, shift="painting")
    val, test = art.metrics["open_set_validation"], art.metrics["open_set_test"]
    assert art.task.unknown["method"] == val["method"] == "background"
    auc = test["auroc_by_method"]
    assert auc["background"] > max(auc["max_prob"], auc["energy"], auc["centroid"])
    assert test["unknown_called_unknown"] >= 0.8 and test["known_correct_name"] >= 0.8
    # Predictor (what users see) and the rule's threshold on the model's known scores agree exactly.
    model, f = art.to_model(), art.split.frame
    Xf, part, role = X[f["row"].to_numpy()], f[SPLIT_COL].to_numpy(), f[ROLE_COL].to_numpy()
    kt, ut = (role == "known") & (part == "test"), (role == "unknown") & (part == "test")
    y = np.array([art.labels.index(a) if a in art.labels else -1 for a in f["artist_label"]])[kt]
    correct = model.predict_proba(Xf[kt])["artist"].argmax(1) == y
    op = openset.operating_point(art.task.unknown["threshold"], model.known_scores("artist", Xf[kt]), correct,
                                 model.known_scores("artist", Xf[ut]))
    assert test["unknown_called_unknown"] == pytest.approx(op.unknown_rejected, abs=1e-4)
    assert test["known_correct_name"] == pytest.approx(op.known_correct, abs=1e-4)


def test_crossfit_copes_with_artists_smaller_than_the_folds():
    """--min-per-class 2: each known artist has one train+val painting for 5 folds (so the fold
    holding it trains without that artist)."""
    import torch

    torch.set_num_threads(1)
    df, X = _clusters(n_known=4, n_unknown=10, per_known=2, per_unknown=1, spread=0.5, seed=8)
    art = train_artist_task(df, X, min_per_class=2, threads=1, candidates=[{"components": None, "weight_decay": 1e-2}])
    assert art.metrics["split"]["known_artists"] == 4 and art.metrics["closed_set_val"]["n"] == 4
    assert np.isfinite(art.calibration_scores["known"]["centroid"]).all()
    assert art.task.unknown["label"] == "unknown artist"


def test_cli_background_default_is_the_library_one():
    import inspect

    from artlens.cli.artist import train_artist
    from artlens.train.artist import BACKGROUND_MIN_PAINTINGS

    assert inspect.signature(train_artist).parameters["background_min_paintings"].default == BACKGROUND_MIN_PAINTINGS


def test_calibrate_scores_picks_the_method_by_what_is_asked():
    """`balanced` picks the method whose best threshold serves both targets, even when another
    separates slightly better over all thresholds (AUROC)."""
    rng = np.random.default_rng(0)
    correct = np.r_[np.ones(80, bool), np.zeros(20, bool)]
    # energy: wrong answers score highest (good for AUROC) but correct ones overlap the unknown ones;
    # background: correct ones clear of the unknown ones, wrong answers low (bad for AUROC, harmless)
    sk = {"energy": np.r_[rng.uniform(0.3, 1, 80), rng.uniform(0.95, 1, 20)],
          "background": np.r_[rng.uniform(0.45, 1, 80), rng.uniform(0.0, 0.3, 20)]}
    su = {"energy": rng.uniform(0.0, 0.5, 100), "background": rng.uniform(0.0, 0.5, 100)}
    by_auc = openset.calibrate_scores(sk, correct, su, select_by="auroc", known_rate="correct")
    by_bal = openset.calibrate_scores(sk, correct, su, select_by="balanced", known_rate="correct")
    res = by_bal[2]
    assert res["energy"]["auroc"] > res["background"]["auroc"] and by_auc[0] == "energy"
    assert res["background"]["balanced"] > res["energy"]["balanced"] and by_bal[0] == "background"
    assert by_bal[1]["method"] == "background" and by_bal[1]["label"] == "unknown artist"
    with pytest.raises(ValueError, match="select_by"):
        openset.calibrate_scores(sk, correct, su, select_by="f1")
    with pytest.raises(ValueError, match="known_rate"):
        openset.calibrate_scores(sk, correct, su, known_rate="named")
