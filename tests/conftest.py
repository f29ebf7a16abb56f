"""Shared fixtures: generated images for unit tests, ../shared/datasets for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARTLENS_SHARED", REPO.parent / "shared")) / "datasets"


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    # CI has 2 cores; tests should not oversubscribe them.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # The test session never touches the user's cache: one fresh cache for the whole run (built
    # models such as the CLIP rebuild are made once per run). ARTLENS_TEST_CACHE reuses a folder.
    old = os.environ.get("ARTLENS_CACHE")
    os.environ["ARTLENS_CACHE"] = os.environ.get("ARTLENS_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ARTLENS_CACHE", None)
    else:
        os.environ["ARTLENS_CACHE"] = old


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not there")
    return SHARED


def make_image(path: Path, size=(64, 48), color=None, seed=0, fmt=None, mode="RGB") -> Path:
    """A small random image (different seeds give different content)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    if color is not None:
        arr[...] = np.asarray(color, dtype=np.uint8)
        arr[: size[1] // 2, : size[0] // 2] = rng.integers(0, 256, 3)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_factory(tmp_path):
    def factory(rel: str, **kw) -> Path:
        return make_image(tmp_path / rel, **kw)

    return factory


@pytest.fixture(scope="session")
def clip_weights():
    """Skip where the offline CLIP weights are not installed."""
    from artlens.models.weights import MissingWeightsError, resolve_weights

    try:
        resolve_weights("clip-vit-b16")
    except MissingWeightsError as exc:
        pytest.skip(str(exc))
