"""Splits and balanced sampling: disjoint, complete, stratified, grouped, seeded, order-free."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from artlens.cli import app
from artlens.data.manifest import read_manifest, write_manifest
from artlens.data.splits import assign_splits, balance, split_groups, split_leaks


def fake_manifest(n=600, n_styles=4, n_artists=60, dup_every=25, seed=0) -> pd.DataFrame:
    """Rows with distinct content, every `dup_every`-th an exact copy of the row before it."""
    rng = np.random.default_rng(seed)
    sha = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    phash = [f"{int(v):016x}" for v in rng.integers(0, 2**63, n, dtype=np.uint64)]
    for i in range(dup_every, n, dup_every):
        sha[i], phash[i] = sha[i - 1], phash[i - 1]
    return pd.DataFrame(
        {
            "path": [f"/data/img_{i:05d}.jpg" for i in range(n)],
            "style": [f"style{int(v)}" for v in rng.integers(0, n_styles, n)],
            "artist": [f"Artist {int(v)}" for v in rng.integers(0, n_artists, n)],
            "origin": rng.choice(["human", "ai"], n),
            "sha256": sha,
            "phash": phash,
        }
    )


def test_fractions_disjoint_complete():
    df = fake_manifest()
    out = assign_splits(df, val=0.1, test=0.2, seed=0)
    assert out["split"].notna().all() and set(out["split"]) == {"train", "val", "test"}
    frac = out["split"].value_counts(normalize=True)
    assert abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.2) < 0.03
    assert out.drop(columns="split").equals(df)  # nothing else touched, order kept


def test_stratified_per_class():
    df = fake_manifest(n=1200)
    out = assign_splits(df, seed=3)
    table = pd.crosstab(out["style"], out["split"], normalize="index")
    assert (table["test"] - 0.2).abs().max() < 0.04
    assert (table["val"] - 0.1).abs().max() < 0.04


def test_same_seed_same_split_other_seed_other_split():
    df = fake_manifest()
    a = assign_splits(df, seed=7)
    b = assign_splits(df, seed=7)
    c = assign_splits(df, seed=8)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_stable_under_row_order():
    df = fake_manifest()
    a = assign_splits(df, seed=1, group_by="artist")
    shuffled = df.sample(frac=1.0, random_state=5)
    b = assign_splits(shuffled, seed=1, group_by="artist")
    assert b.loc[df.index, "split"].tolist() == a["split"].tolist()
    c = assign_splits(df.reset_index(drop=True).iloc[::-1].reset_index(drop=True), seed=1, group_by="artist")
    assert c.set_index("path").loc[df["path"], "split"].tolist() == a["split"].tolist()


def test_duplicates_stay_together():
    df = fake_manifest(dup_every=5)
    # a near duplicate: same picture re-encoded (different bytes, pHash 1 bit away)
    df.loc[3, "phash"] = f"{int(df.loc[2, 'phash'], 16) ^ 1:016x}"
    out = assign_splits(df, seed=0)
    assert split_leaks(out) == {"duplicate_groups_across_splits": 0}
    assert out.loc[2, "split"] == out.loc[3, "split"]
    for i in range(5, len(df), 5):
        assert out.loc[i, "split"] == out.loc[i - 1, "split"]


def test_group_by_artist():
    df = fake_manifest()
    out = assign_splits(df, seed=0, group_by="artist")
    assert split_leaks(out, group_by="artist") == {"duplicate_groups_across_splits": 0, "artist_across_splits": 0}
    loose = assign_splits(df, seed=0)
    assert split_leaks(loose, group_by="artist")["artist_across_splits"] > 0  # the check can fail


def test_group_by_joins_duplicates_and_artists():
    df = pd.DataFrame(
        {
            "path": list("abcd"),
            "sha256": ["x", "y", "x", "z"],  # a and c identical
            "artist": ["P", "Q", "Q", None],  # c shares an artist with b
        }
    )
    groups = split_groups(df, group_by="artist")
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_no_stratify_column_and_zero_fractions():
    df = fake_manifest().drop(columns="style")
    out = assign_splits(df, seed=0, stratify="style", val=0.0, test=0.25)
    assert set(out["split"]) == {"train", "test"}
    assert set(assign_splits(df, val=0, test=0)["split"]) == {"train"}


@pytest.mark.parametrize("val,test", [(0.5, 0.5), (-0.1, 0.2), (0.1, 1.0)])
def test_bad_fractions(val, test):
    with pytest.raises(ValueError):
        assign_splits(fake_manifest(n=30), val=val, test=test)


def test_too_few_groups():
    with pytest.raises(ValueError, match="too few"):
        assign_splits(fake_manifest(n=5, dup_every=100), val=0.1, test=0.2)


def test_balance_per_class_and_origin():
    df = fake_manifest(n=800)
    out = balance(df, 30, by="style")
    assert out["style"].value_counts().max() == 30 and out["style"].nunique() == 4
    both = balance(df, 20, by="style", also_by="origin")
    assert (both.groupby(["style", "origin"]).size() == 20).all()
    assert list(both.index) == sorted(both.index)  # kept rows keep their order
    small = balance(df, 10_000, by="style")
    assert len(small) == len(df)


def test_balance_is_seeded_and_order_free():
    df = fake_manifest(n=500)
    a = balance(df, 25, seed=4)
    b = balance(df.sample(frac=1.0, random_state=9), 25, seed=4)
    assert sorted(a["path"]) == sorted(b["path"])
    assert sorted(balance(df, 25, seed=5)["path"]) != sorted(a["path"])


def test_balance_drops_unlabelled_and_checks_columns():
    df = fake_manifest(n=100)
    df.loc[:9, "style"] = None
    assert balance(df, 1000)["style"].notna().all() and len(balance(df, 1000)) == 90
    with pytest.raises(KeyError):
        balance(df, 5, by="genre")


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=20, max_value=200),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=2, max_value=40),
    st.integers(min_value=0, max_value=2**16),
    st.sampled_from([None, "artist"]),
)
def test_split_properties(n, n_styles, dup_every, seed, group_by):
    """Any manifest: every row gets exactly one split, duplicates never straddle, and shuffling
    the rows changes nothing."""
    df = fake_manifest(n=n, n_styles=n_styles, n_artists=max(12, n // 4), dup_every=dup_every, seed=seed % 97)
    assume(split_groups(df, group_by=group_by).max() + 1 >= 10)  # fewer groups than folds is refused (tested above)
    out = assign_splits(df, seed=seed, group_by=group_by)
    assert out["split"].isin(["train", "val", "test"]).all() and len(out) == len(df)
    leaks = split_leaks(out, group_by=group_by)
    assert all(v == 0 for v in leaks.values())
    perm = np.random.default_rng(seed).permutation(len(df))
    again = assign_splits(df.iloc[perm], seed=seed, group_by=group_by)
    assert again.loc[df.index, "split"].tolist() == out["split"].tolist()


# ---------------------------------------------------------------------------------------------
# `artlens split`
# ---------------------------------------------------------------------------------------------


def _manifest_file(tmp_path):
    df = fake_manifest(n=300)
    df["width"], df["height"] = 64, 48
    return write_manifest(df, tmp_path / "m.parquet")


def test_cli_split_twice_identical(tmp_path):
    src = _manifest_file(tmp_path)
    runner = CliRunner()
    args = ["split", str(src), "--seed", "3", "--group-by", "artist"]
    r1 = runner.invoke(app, [*args, "--out", str(tmp_path / "a.parquet")])
    r2 = runner.invoke(app, [*args, "--out", str(tmp_path / "b.parquet")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output
    a, b = read_manifest(tmp_path / "a.parquet"), read_manifest(tmp_path / "b.parquet")
    assert a["split"].tolist() == b["split"].tolist() and a["split"].notna().all()
    assert "artist across splits" in r1.stdout


def test_cli_split_json_balance_taxonomy(tmp_path):
    src = _manifest_file(tmp_path)
    out = tmp_path / "s.parquet"
    res = CliRunner().invoke(
        app, ["split", str(src), "--out", str(out), "--balance", "15", "--balance-also", "origin", "-t", "origin-style", "--json"]
    )
    assert res.exit_code == 0, res.output
    import json

    summary = json.loads(res.stdout)
    assert summary["balanced"]["kept"] == 4 * 2 * 15
    assert summary["leaks"]["duplicate_groups_across_splits"] == 0
    df = read_manifest(out)
    assert len(df) == 120 and df["joint"].str.match(r"^(AI_)?style\d$").all()


def test_cli_split_errors(tmp_path):
    res = CliRunner().invoke(app, ["split", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 1 and "no such manifest" in res.stderr


def test_a_small_collection_still_gets_val_and_test():
    # fewer groups than the 13 folds a 0.15/0.15 split takes: each group is a fold of its own
    out = assign_splits(fake_manifest(n=12, dup_every=100), val=0.15, test=0.15, seed=0)
    counts = out["split"].value_counts().to_dict()
    assert counts == {"train": 8, "val": 2, "test": 2}
