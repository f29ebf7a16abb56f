"""artlens.paths: atomic writes and JSON-ready values (metrics.json of train and evaluate)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from artlens.paths import atomic_write_text, jsonable


def test_jsonable_turns_numpy_paths_and_nan_into_json():
    raw = {
        1: np.float32(0.5), "nan": np.float64("nan"), "py_nan": float("nan"), "inf": np.float64("inf"),
        "n": np.int64(3), "flag": np.bool_(True), "path": Path("/a/b"), "t": (1, np.int32(2)), "none": None,
        "keep": ["s", True, 2, 2.5],
    }
    out = jsonable(raw)
    assert out == {"1": 0.5, "nan": None, "py_nan": None, "inf": math.inf, "n": 3, "flag": True, "path": "/a/b",
                   "t": [1, 2], "none": None, "keep": ["s", True, 2, 2.5]}
    assert type(out["n"]) is int and type(out["flag"]) is bool and type(out["1"]) is float
    json.dumps(out, allow_nan=True)  # no numpy scalar left


def test_atomic_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["m.json"]
