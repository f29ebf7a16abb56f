"""The shipped default model's predictions on the example paintings, pinned.

Preprocessing, the CLIP encoder, the feature normalisation and the heads all feed these numbers; a
refactor of any of them must leave them as they are. When the default model is rebuilt on
purpose, regenerate EXPECTED with `artlens predict src/artlens/examples --json`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from artlens.models.weights import MissingWeightsError, resolve_weights

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "artlens" / "examples"

# file -> task -> (label, unsure, top 3 (label, probability rounded to 4 decimals))
EXPECTED = {
    'antoine-watteau_embarkation-for-cythere.jpg': {
        'style': ('Rococo', False, [('Rococo', 0.9297), ('Baroque', 0.07), ('Impressionism', 0.0003)]),
        'genre': ('landscape', False, [('landscape', 0.9997), ('genre_painting', 0.0003), ('portrait', 0.0)]),
        'origin': ('human', False, [('human', 1.0), ('ai', 0.0)]),
        'artist': ('unknown artist', False, [('Thomas Gainsborough', 0.6043), ('Peter Paul Rubens', 0.2797), ('Rembrandt', 0.1038)]),
    },
    'camille-pissarro_avenue-de-l-opera-rain-effect-1898.jpg': {
        'style': ('Impressionism', False, [('Impressionism', 0.9857), ('Pointillism', 0.008), ('Rococo', 0.003)]),
        'genre': ('landscape', False, [('landscape', 1.0), ('portrait', 0.0), ('genre_painting', 0.0)]),
        'origin': ('human', False, [('human', 1.0), ('ai', 0.0)]),
        'artist': ('Pierre Auguste Renoir', False, [('Pierre Auguste Renoir', 0.4925), ('Camille Pissarro', 0.3946), ('Claude Monet', 0.0965)]),
    },
    'diego-velazquez_pablo-de-valladolid-1637.jpg': {
        'style': ('Baroque', False, [('Baroque', 0.9505), ('Rococo', 0.0238), ('Naive_Art_Primitivism', 0.0064)]),
        'genre': ('portrait', False, [('portrait', 1.0), ('genre_painting', 0.0), ('still_life', 0.0)]),
        'origin': ('human', False, [('human', 1.0), ('ai', 0.0)]),
        'artist': ('unknown artist', False, [('Niko Pirosmani', 0.3084), ('Rembrandt', 0.1488), ('Pierre Auguste Renoir', 0.0719)]),
    },
    'georges-seurat_beach-at-bas-butin-honfleur-1886.jpg': {
        'style': ('Pointillism', False, [('Pointillism', 0.7788), ('Impressionism', 0.1865), ('Rococo', 0.0221)]),
        'genre': ('landscape', False, [('landscape', 1.0), ('portrait', 0.0), ('still_life', 0.0)]),
        'origin': ('human', False, [('human', 1.0), ('ai', 0.0)]),
        'artist': ('Georges Seurat', False, [('Georges Seurat', 0.7957), ('Theo van Rysselberghe', 0.1572), ('Katsushika Hokusai', 0.0111)]),
    },
    'katsushika-hokusai_a-colored-version-of-the-big-wave.jpg': {
        'style': ('Ukiyo_e', False, [('Ukiyo_e', 0.9939), ('Naive_Art_Primitivism', 0.0046), ('Abstract_Expressionism', 0.0005)]),
        'genre': ('landscape', False, [('landscape', 1.0), ('still_life', 0.0), ('portrait', 0.0)]),
        'origin': ('human', False, [('human', 0.7329), ('ai', 0.2671)]),
        'artist': ('Katsushika Hokusai', False, [('Katsushika Hokusai', 0.9812), ('Hiroshige', 0.0115), ('Utagawa Kuniyoshi', 0.0053)]),
    },
}


@pytest.fixture(scope="module")
def predictions():
    try:
        resolve_weights("clip-vit-b16")
    except MissingWeightsError as exc:
        pytest.skip(str(exc))
    from artlens.predict import Predictor

    paths = sorted(EXAMPLES.glob("*.jpg"))
    return {Path(r["path"]).name: r for r in Predictor().predict_paths(paths)}


def test_the_examples_are_the_pinned_ones(predictions):
    assert sorted(predictions) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_model_predictions_are_pinned(predictions, name):
    row = predictions[name]
    assert row["error"] is None
    assert list(row["tasks"]) == list(EXPECTED[name])
    for task, (label, unsure, top) in EXPECTED[name].items():
        got = row["tasks"][task]
        assert (got["label"], got["unsure"]) == (label, unsure), task
        assert [p["label"] for p in got["top"]] == [lab for lab, _ in top], task
        # INT8 kernels may round differently on another CPU: allow the 4th decimal to flip once.
        assert [p["prob"] for p in got["top"]] == pytest.approx([p for _, p in top], abs=1.01e-4), task
