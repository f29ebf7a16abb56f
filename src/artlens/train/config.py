"""Training recipes: YAML files in `configs/`, resolved over defaults, overridden from the CLI.

A recipe is a plain nested dict (it is stored verbatim in the model's `config.json` under `recipe`).
Resolution order, later wins: `DEFAULTS` < the YAML file < CLI flags / `--set key=value`.
Unknown keys are an error (a typo must not silently train with a default).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe that cannot be used, with the reason (and the key)."""


# Every key a recipe may set. `None` means "not set / automatic".
DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": None,
    "mode": "probe",  # probe | finetune
    "seed": 0,
    "out": None,  # default: runs/<name>
    "backbone": {"name": "clip-vit-b16", "pretrained": True, "weights": None},
    "data": {
        # Each source: a folder (scanned), a manifest (.parquet/.csv), or a mapping
        # {path, layout, options: {levels: "{split}/{genre}"} (layout options),
        #  labels: {column: value} (fills missing labels), max_per_class}.
        "sources": [],
        "max_per_class": None,  # balanced subsample (per label of the first task) for quick runs
        "split": {"val": 0.15, "test": 0.15, "seed": 0, "group": None, "resplit": False},
        "store": None,  # embedding store root (probe); default: the shared user cache
        "embed_batch_size": 32,
    },
    # Each task: a name or {name, column, hidden, dropout, min_count, weight}. `column` may join
    # columns with `+` (e.g. `origin+style` -> labels like `ai_Baroque`). `min_count`: labels with
    # fewer labelled rows (all splits; `artlens train --min-per-class N` sets it on every task) are
    # kept out of the task and named in the run's notes.
    "tasks": ["style"],
    "probe": {
        "standardize": True,
        "metric": "macro_f1",  # selection metric on validation data: macro_f1 | accuracy
        # The search space: each candidate is a grid (lists are expanded). Types: linear | mlp.
        "candidates": [
            {"type": "linear", "weight_decay": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "class_weight": [None, "balanced"]},
            {"type": "mlp", "hidden": [[1024]], "dropout": [0.5], "weight_decay": [0.05], "lr": 3e-4,
             "class_weight": ["balanced"]},
        ],
        "max_iter": 300,  # LBFGS iterations (linear heads)
        "epochs": 40,  # MLP epochs (the best epoch, checked every `eval_every`, is kept)
        "eval_every": 2,
        "lr": 1e-3,
        "batch_size": 256,
        "ensemble": 1,  # seeds of the selected MLP averaged (merged exactly into one wider head)
        "threads": 1,  # torch threads while training (small matrices: 1 avoids contention; null = torch default)
    },
    "finetune": {
        "epochs": 10,
        "batch_size": 32,
        "num_workers": 2,
        "image_size": None,  # default: the backbone's input size
        "augment": "standard",  # none | flip | standard | patch
        "augment_options": {"rotation": 15.0, "scale": [0.6, 1.0], "color_jitter": 0.0, "vflip": False},
        "freeze": {
            "strategy": "none",  # none | named | top | two_phase
            "layers": [],  # named: module paths in the backbone (e.g. conv1, bn1, layer1, layer2)
            "trainable_fraction": 0.3,  # top: the last N% of parameterised layers stay trainable
            "milestone": 2,  # two_phase: the epoch at which the backbone is unfrozen
            "train_bn": False,  # frozen BatchNorm layers keep their running statistics
        },
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": False,
                      "backbone_lr_factor": 1.0},
        "scheduler": {"name": "cosine", "gamma": 0.9, "step_size": 3, "step_gamma": 0.5, "warmup_epochs": 0, "min_lr": 0.0},
        "loss": {"name": "ce", "label_smoothing": 0.0, "gamma": 2.0, "class_weights": None, "l1": 0.0, "l2": 0.0},
        "early_stopping": {"monitor": "val/macro_f1", "mode": "max", "patience": None},
        "monitor": "val/macro_f1",  # best checkpoint
        "val_check_interval": 1.0,
        "check_val_every_n_epoch": 1,
        "checkpoint_every_n_steps": 50,  # mid-epoch last.ckpt, so a killed run loses little
        "precision": "auto",  # auto: bf16/16-mixed on a GPU, 32-true on the CPU
        "deterministic": True,
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "num_nodes": 1,
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "log_every_n_steps": 10,
        "loggers": ["csv", "tensorboard"],
        "wandb": None,  # {project: ..., name: ...} or true
        "progress": "auto",  # auto | rich | tqdm | none
    },
    # Origin (human / AI) trained by groups (artlens.train.origin), after the probe: set
    # `enabled` and give rows `origin` plus `family` (AI) / `kind` (human) columns.
    "origin": {
        "enabled": False,
        # [{blocks: [block9], weight_decay: 0.1, train: groups | pairs}, ...]; null: the built-in list
        "candidates": None,
        "max_fpr": 0.02,  # at most this share of each held-out human kind called AI
        "reject": 0.5,  # P(ai) at or under which the answer is `human`; null: set by max_unsure
        "max_unsure": 0.2,  # with reject null: at most this share of any held-out group unsure
        "check": {"jpeg_quality": 70, "scale": 0.75},  # an `ai` answer must hold on such a copy; null: off
        "family": True,  # a generator-family head beside the `ai` answer
        "cap": 1500,  # rows per group in each leave-one-group-out fit
    },
    # The artist head with its `unknown artist` rule (artlens.train.artist), after the probe: the
    # rows matching `where` with an artist (the `column`, else WikiArt file names).
    "artist": {
        "enabled": False,
        "where": None,  # {column: value}: the rows that count, e.g. {kind: painting}
        "column": "artist",
        "min_per_class": 40,  # artists with fewer paintings stand for the unknown ones
        "shift": "period",  # out-of-fold known paintings: other periods / styles (period) or any (painting)
        "folds": 5,
        "candidates": None,  # [{components: 512, weight_decay: 0.01}, ...]; null: the built-in one
        "background": True,
        "background_min_paintings": 5,
        "target_known": 0.8,  # known paintings keeping their correct name, out of fold
        "target_unknown": 0.8,  # unknown artists' paintings called `unknown artist`, out of fold
        "known_rate": "correct",
        "test_fraction": 0.0,  # > 0: a test part kept out of everything (numbers: artlens.evaluate.artist)
        "threads": None,
    },
    "calibration": {
        "temperature": True,
        # precision: the lowest threshold whose accepted validation predictions reach `target`
        # precision, keeping at least `min_coverage` of them; fixed: `value`; none: 0.
        "threshold": {"rule": "precision", "target": 0.9, "min_coverage": 0.5, "value": None},
    },
}

# Keys whose value is free-form (not checked against DEFAULTS).
_FREE = {("data", "sources"), ("tasks",), ("probe", "candidates"), ("origin", "check"), ("finetune", "wandb"),
         ("finetune", "freeze", "layers"), ("finetune", "loggers"), ("finetune", "augment_options", "scale")}


def _merge(base: dict, new: dict, path: tuple = ()) -> dict:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        here = (*path, key)
        if key not in base:
            raise RecipeError(f"unknown recipe key {'.'.join(here)!r}")
        if isinstance(base[key], dict) and here not in _FREE:
            if not isinstance(value, dict):
                raise RecipeError(f"recipe key {'.'.join(here)!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: `1e-3`, `true`, `[conv1, bn1]`, `null`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_key(recipe: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a resolved recipe; the key must exist in DEFAULTS."""
    parts = dotted.split(".")
    node, ref = recipe, DEFAULTS
    for i, part in enumerate(parts):
        if not isinstance(ref, dict) or part not in ref:
            raise RecipeError(f"unknown recipe key {dotted!r}")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            ref = ref[part]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """DEFAULTS + the YAML file + dotted overrides (`{"finetune.epochs": 2}`), validated."""
    recipe = copy.deepcopy(DEFAULTS)
    base_dir = None
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read recipe ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: a recipe must be a mapping")
        try:
            recipe = _merge(recipe, raw)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None
        recipe["name"] = recipe["name"] or path.stem
        base_dir = path.resolve().parent
    for key, value in (overrides or {}).items():
        set_key(recipe, key, value)
    recipe["tasks"] = normalise_tasks(recipe["tasks"])
    recipe["data"]["sources"] = normalise_sources(recipe["data"]["sources"], base_dir)
    validate(recipe)
    recipe["name"] = recipe["name"] or f"{recipe['mode']}-{recipe['backbone']['name']}"
    return recipe


def normalise_tasks(tasks: Any) -> list[dict]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    out = []
    for t in tasks or []:
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, dict) or "name" not in t:
            raise RecipeError(f"a task must be a name or a mapping with a name, got {t!r}")
        unknown = set(t) - {"name", "column", "hidden", "dropout", "min_count", "weight"}
        if unknown:
            raise RecipeError(f"task {t['name']!r}: unknown keys {sorted(unknown)}")
        name = str(t["name"])
        out.append({
            "name": name,
            "column": str(t.get("column") or name),
            "hidden": [int(h) for h in t.get("hidden") or []],
            "dropout": float(t.get("dropout") or 0.0),
            "min_count": int(t.get("min_count") or 1),
            "weight": float(t.get("weight", 1.0)),
        })
    return out


def _resolve_path(p: str, base_dir: Path | None) -> str:
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists() or base_dir is None:
        return str(path)
    # Recipes live in configs/ and name data relative to the repository root.
    for root in (base_dir.parent, base_dir):
        if (root / path).exists():
            return str((root / path).resolve())
    return str(path)


def normalise_sources(sources: Any, base_dir: Path | None = None) -> list[dict]:
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out = []
    for s in sources or []:
        if isinstance(s, (str, Path)):
            s = {"path": str(s)}
        if not isinstance(s, dict) or "path" not in s:
            raise RecipeError(f"a data source must be a path or a mapping with a path, got {s!r}")
        unknown = set(s) - {"path", "layout", "options", "labels", "max_per_class"}
        if unknown:
            raise RecipeError(f"data source {s['path']!r}: unknown keys {sorted(unknown)}")
        out.append({
            "path": _resolve_path(str(s["path"]), base_dir),
            "layout": s.get("layout"),
            "options": {str(k): str(v) for k, v in (s.get("options") or {}).items()},
            "labels": dict(s.get("labels") or {}),
            "max_per_class": s.get("max_per_class"),
        })
    return out


def validate(recipe: dict) -> None:
    if recipe["mode"] not in ("probe", "finetune"):
        raise RecipeError(f"mode must be probe or finetune, got {recipe['mode']!r}")
    if not recipe["tasks"]:
        raise RecipeError("a recipe needs at least one task")
    names = [t["name"] for t in recipe["tasks"]]
    if len(set(names)) != len(names):
        raise RecipeError(f"task names must be distinct, got {names}")
    ft = recipe["finetune"]
    choices = {
        ("finetune", "augment"): ("none", "flip", "standard", "patch"),
        ("finetune", "freeze", "strategy"): ("none", "named", "top", "two_phase"),
        ("finetune", "optimizer", "name"): ("sgd", "adam", "adamw", "rmsprop"),
        ("finetune", "scheduler", "name"): ("none", "cosine", "exponential", "step"),
        ("finetune", "loss", "name"): ("ce", "focal"),
        ("finetune", "loss", "class_weights"): (None, "balanced"),
        ("finetune", "progress"): ("auto", "rich", "tqdm", "none"),
        ("probe", "metric"): ("macro_f1", "accuracy"),
        ("calibration", "threshold", "rule"): ("precision", "fixed", "none"),
    }
    for keys, allowed in choices.items():
        node = recipe
        for k in keys:
            node = node[k]
        value = node.lower() if isinstance(node, str) else node
        if value not in allowed:
            raise RecipeError(f"{'.'.join(keys)} must be one of {list(allowed)}, got {node!r}")
    if ft["freeze"]["strategy"] == "named" and not ft["freeze"]["layers"]:
        raise RecipeError("finetune.freeze.strategy 'named' needs finetune.freeze.layers")
    if not 0.0 <= float(ft["freeze"]["trainable_fraction"]) <= 1.0:
        raise RecipeError("finetune.freeze.trainable_fraction must be within [0, 1]")
    for c in recipe["probe"]["candidates"]:
        if not isinstance(c, dict) or c.get("type", "linear") not in ("linear", "mlp"):
            raise RecipeError(f"probe.candidates: each needs type linear or mlp, got {c!r}")
    for c in recipe["origin"]["candidates"] or []:
        if (not isinstance(c, dict) or not isinstance(c.get("blocks"), list)
                or not isinstance(c.get("weight_decay"), (int, float)) or c.get("train", "groups") not in ("groups", "pairs")):
            raise RecipeError(f"origin.candidates: each needs blocks (a list), weight_decay (a number) and "
                              f"train groups or pairs, got {c!r}")
    for key in ("val", "test"):
        if not 0.0 <= float(recipe["data"]["split"][key]) < 1.0:
            raise RecipeError(f"data.split.{key} must be a fraction in [0, 1)")


def dump_recipe(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
