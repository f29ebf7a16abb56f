"""AI-ArtBench (Silva et al., 2024; Kaggle ``ravidussilva/real-ai-art``).

Published layout: ``train|test/<style>/`` human paintings (from ArtBench-10, i.e. WikiArt) and
``train|test/AI_LD_<style>/`` (Latent Diffusion) and ``AI_SD_<style>/`` (Stable Diffusion) AI
images of the same 10 styles. Style names stay as published (``art_nouveau``, ``ukiyo_e``...);
the ``aiartbench-styles`` taxonomy maps WikiArt's names onto them. A root without the split level
(the class folders directly) is read too.
"""

from __future__ import annotations

import re
from pathlib import Path

from artlens.data.sources import SPLIT_ALIASES, normalise_split, records_frame, register, walk_images

GENERATORS = {"LD": "latent-diffusion", "SD": "stable-diffusion"}
_AI_DIR = re.compile(r"^AI_(LD|SD)_(.+)$", re.IGNORECASE)


def _class_dirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _detect(root: Path) -> bool:
    if not root.is_dir():
        return False
    candidates = _class_dirs(root)
    for d in list(candidates):
        if d.name.lower() in SPLIT_ALIASES:
            candidates += _class_dirs(d)
    return any(_AI_DIR.match(d.name) for d in candidates)


def parse_class_dir(name: str) -> dict[str, str | None]:
    m = _AI_DIR.match(name)
    if m:
        return {"style": m.group(2), "origin": "ai", "generator": GENERATORS[m.group(1).upper()]}
    return {"style": name, "origin": "human", "generator": None}


@register(
    "aiartbench",
    detect=_detect,
    description="AI-ArtBench: train|test/<style> (human), AI_LD_<style> / AI_SD_<style> (AI)",
    priority=40,
)
def read_aiartbench(root: Path):
    errors: list[tuple[str, str]] = []
    rows = []
    for path in walk_images(root, errors=errors):
        dirs = list(path.relative_to(root).parts[:-1])
        split = None
        if dirs and dirs[0].lower() in SPLIT_ALIASES:
            split = normalise_split(dirs.pop(0))
        row = {"path": str(path), "split": split}
        if dirs:
            row.update(parse_class_dir(dirs[0]))
        rows.append(row)
    return records_frame(rows, errors)
