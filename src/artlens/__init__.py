"""artlens: what is this artwork? Style, artist, genre and human/AI origin, with the evidence."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def default_model_dir() -> Path:
    """The model shipped inside the package (CLIP ViT-B/16 embeddings + small heads)."""
    return Path(__file__).parent / "default"


def examples_dir() -> Path:
    """Small public-domain paintings shipped for demos and the web page."""
    return Path(__file__).parent / "examples"
