"""From recipe sources to labelled, split rows: scanning, label filling, joint labels, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from artlens.train.config import load_recipe
from artlens.train.data import ensure_splits, prepare, task_values
from tests.conftest import make_image


@pytest.fixture
def two_sets(tmp_path):
    for style in ("Baroque", "Cubism"):
        for i in range(6):
            make_image(tmp_path / "paint" / style / f"{style}_{i}.jpg", size=(32, 32), seed=hash((style, i)) % 1000)
    for i in range(4):
        make_image(tmp_path / "ai" / "Cubism" / f"gen_{i}.png", size=(32, 32), seed=500 + i)
    return tmp_path


def test_prepare_fills_labels_builds_joint_and_splits(two_sets):
    recipe = load_recipe(None, {
        "tasks": "style,origin+style",
        "data.sources": [{"path": str(two_sets / "paint"), "labels": {"origin": "human"}},
                         {"path": str(two_sets / "ai"), "labels": {"origin": "ai"}}],
        "data.split": {"val": 0.2, "test": 0.2, "seed": 0, "group": None, "resplit": False},
    })
    p = prepare(recipe, progress=False)
    assert len(p.df) == 16 and set(p.df["split"]) == {"train", "val", "test"}
    assert p.tasks[0]["labels"] == ["Baroque", "Cubism"]
    joint = p.tasks[1]["labels"]
    assert set(joint) <= {"human_Baroque", "human_Cubism", "ai_Cubism"} and "human_Cubism" in joint
    # every labelled row gets a target, in the train label order
    assert (p.targets["style"] >= 0).all()
    ai = p.df["origin"].to_numpy() == "ai"
    names = np.array(joint)[p.targets["origin+style"][ai & (p.targets["origin+style"] >= 0)]]
    assert set(names) <= {"ai_Cubism"}
    # a second call reuses the cached manifests (same result)
    p2 = prepare(recipe, progress=False)
    assert p2.df["path"].tolist() == p.df["path"].tolist()


def test_task_values_joint_is_null_when_a_part_is_missing():
    df = pd.DataFrame({"origin": ["ai", None, "human"], "style": ["Cubism", "Baroque", None]})
    assert task_values(df, "origin+style").tolist() == ["ai_Cubism", None, None]
    with pytest.raises(KeyError, match="genre"):
        task_values(df, "genre")


def test_splits_keep_duplicates_together_and_stratify():
    n = 60
    df = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(n)],
                       "sha256": [f"{i // 2:064x}" for i in range(n)],  # pairs of exact duplicates
                       "phash": [None] * n,
                       "style": ["a" if i < 40 else "b" for i in range(n)]})
    tasks = [{"name": "style", "column": "style"}]
    cfg = {"val": 0.2, "test": 0.2, "seed": 0}
    split = ensure_splits(df, tasks, cfg)["split"].tolist()
    for i in range(0, n, 2):
        assert split[i] == split[i + 1]
    for s in ("a", "b"):
        parts = [split[i] for i in range(n) if df["style"][i] == s]
        assert {"train", "val", "test"} <= set(parts)
    assert ensure_splits(df, tasks, cfg)["split"].tolist() == split  # seeded
    # the same assignment as `artlens split` (one algorithm), in any row order
    from artlens.data.splits import assign_splits

    assert assign_splits(df, val=0.2, test=0.2, seed=0, stratify="style")["split"].tolist() == split
    shuffled = df.sample(frac=1, random_state=1)
    assert ensure_splits(shuffled, tasks, cfg)["split"].tolist() == [split[i] for i in shuffled.index]
    # splits already given are kept unless the recipe says resplit
    given = df.assign(split=["test"] * n)
    assert set(ensure_splits(given, tasks, cfg)["split"]) == {"test"}
    assert set(ensure_splits(given, tasks, {**cfg, "resplit": True})["split"]) == {"train", "val", "test"}


def test_too_few_rows_for_a_split_train_on_all(caplog):
    df = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(3)], "sha256": [f"{i:064x}" for i in range(3)],
                       "style": ["a", "b", "a"]})
    out = ensure_splits(df, [{"name": "style", "column": "style"}], {"val": 0.15, "test": 0.15})
    assert out["split"].tolist() == ["train"] * 3
    assert "too few" in caplog.text


def test_unseen_labels_are_masked_with_a_note(two_sets):
    from artlens.train.data import encode_targets

    df = pd.DataFrame({"style": ["a", "a", "b", "b", "c", None], "split": ["train"] * 4 + ["val", "val"]})
    tasks, targets, notes = encode_targets(df, [{"name": "style", "column": "style", "min_count": 1}])
    assert tasks[0]["labels"] == ["a", "b"]
    assert targets["style"].tolist() == [0, 0, 1, 1, -1, -1]
    assert notes and "1 rows" in notes[0]
    with pytest.raises(ValueError, match="no row of the data carries a label"):
        prepare(load_recipe(None, {"data.sources": [str(two_sets / "paint")], "tasks": "genre"}), progress=False)


def test_balanced_subsample_caps_each_label_and_keeps_unlabelled():
    from artlens.train.data import balanced_subsample

    df = pd.DataFrame({"style": ["a"] * 10 + ["b"] * 3 + [None] * 2, "path": [str(i) for i in range(15)]})
    out = balanced_subsample(df, "style", 4, seed=1)
    assert out["style"].value_counts().to_dict() == {"a": 4, "b": 3}
    assert out["style"].isna().sum() == 2
    assert balanced_subsample(df, "style", 4, seed=1)["path"].tolist() == out["path"].tolist()
