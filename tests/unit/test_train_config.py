"""Recipes: defaults, YAML, CLI overrides, validation; the shipped configs all load."""

from __future__ import annotations

from pathlib import Path

import pytest

from artlens.train.config import RecipeError, load_recipe, parse_overrides

REPO = Path(__file__).resolve().parents[2]


def test_defaults_then_yaml_then_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("mode: finetune\nbackbone: {name: resnet18}\nfinetune:\n  epochs: 10\n  optimizer: {name: sgd, lr: 0.001}\n")
    r = load_recipe(p, parse_overrides(["finetune.epochs=2", "finetune.freeze.layers=[conv1, bn1]",
                                        "finetune.freeze.strategy=named", "tasks=style,origin+style"]))
    assert r["name"] == "r" and r["mode"] == "finetune"
    assert r["finetune"]["epochs"] == 2  # CLI wins over YAML
    assert r["finetune"]["optimizer"] == {**r["finetune"]["optimizer"], "name": "sgd", "lr": 0.001}
    assert r["finetune"]["optimizer"]["weight_decay"] == 1e-4  # default kept under a partial mapping
    assert r["finetune"]["freeze"]["layers"] == ["conv1", "bn1"]
    assert [t["name"] for t in r["tasks"]] == ["style", "origin+style"]
    assert r["tasks"][1]["column"] == "origin+style"


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("finetune: {epoch: 3}\n")
    with pytest.raises(RecipeError, match="finetune.epoch"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="unknown recipe key"):
        load_recipe(None, {"probe.nope": 1})
    with pytest.raises(RecipeError, match="optimizer.name"):
        load_recipe(None, {"finetune.optimizer.name": "lion"})
    with pytest.raises(RecipeError, match="needs finetune.freeze.layers"):
        load_recipe(None, {"finetune.freeze.strategy": "named"})
    with pytest.raises(RecipeError, match="key=value"):
        parse_overrides(["epochs"])
    p.write_text("- a list\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(p)


def test_relative_data_paths_resolve_from_the_repo_root(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "data" / "set").mkdir(parents=True)
    p = tmp_path / "configs" / "x.yaml"
    p.write_text("data:\n  sources: [data/set, {path: data/set, labels: {origin: human}}]\n")
    r = load_recipe(p)
    assert r["data"]["sources"][0]["path"] == str((tmp_path / "data" / "set").resolve())
    assert r["data"]["sources"][1]["labels"] == {"origin": "human"}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert r["tasks"] and r["data"]["sources"]



def test_origin_candidates_are_checked():
    def load(c):
        return load_recipe(None, {"origin.candidates": [c]})

    with pytest.raises(RecipeError, match="origin.candidates"):
        load({"blocks": ["block9"], "weight_decay": 0.1, "train": "pair"})
    with pytest.raises(RecipeError, match="origin.candidates"):
        load({"blocks": "block9", "weight_decay": 0.1})
    assert load({"blocks": ["block9"], "weight_decay": 0.1, "train": "pairs"})["origin"]["candidates"][0]["train"] == "pairs"
