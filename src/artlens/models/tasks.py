"""A model's tasks as config.json describes them: `TaskConfig`, its band, and the links between
tasks (`attach`, `withhold`), each checked on load with `ModelFormatError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class ModelFormatError(ValueError):
    """A model directory that cannot be loaded safely, with the reason."""


@dataclass
class TaskConfig:
    name: str
    labels: list[str]
    column: str | None = None  # manifest column; `origin+style` for a joint label
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    temperature: float = 1.0
    threshold: float = 0.0  # top probability under this -> "unsure"
    unknown: dict | None = None  # open-set rule, e.g. {"method": "max_prob", "threshold": .4, "label": "unknown artist"}
    # Two-sided answer for a yes/no task (origin): {"label": "ai", "accept": .9, "reject": .3, ...}.
    # P(label) >= accept -> label; <= reject -> the other label; between -> unsure. Optional
    # "check": {"jpeg_quality": q, "scale": s}: an accepted answer must hold on a degraded copy.
    band: dict | None = None
    # A task reported inside another one's answer: {"task": "origin", "when": "ai", "key": "family"}.
    attach: dict | None = None
    # A named answer withheld (`unsure`, with a reason; the top list stays) when another task gives
    # a label: {"task": "origin", "when": "ai"} keeps the artist head from naming the painter an AI
    # image imitates as its maker (`unknown artist` stays as it is). Where that task is banded, a
    # label the image reaches but its degraded copy does not also withholds.
    withhold: dict | None = None

    def __post_init__(self) -> None:
        if self.column is None:
            self.column = self.name
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ModelFormatError(f"task {self.name!r}: labels must be a non-empty list of distinct names")
        if not self.temperature > 0:
            raise ModelFormatError(f"task {self.name!r}: temperature must be positive")
        if self.band is not None:
            self.band = _valid_band(self.name, self.band, self.labels)


def _valid_band(task: str, band: Any, labels: list[str]) -> dict:
    where = f"task {task!r}: band"
    if not isinstance(band, dict) or band.get("label") not in labels or len(labels) != 2:
        raise ModelFormatError(f"{where} needs a 'label' of a two-label task")
    try:
        accept, reject = float(band["accept"]), float(band["reject"])
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{where} needs numeric 'accept' and 'reject'") from None
    if not (0.0 <= reject <= accept <= 1.0):
        raise ModelFormatError(f"{where}: need 0 <= reject <= accept <= 1, got reject={reject}, accept={accept}")
    check = band.get("check")
    if check is not None:
        try:
            q, sc = int(check["jpeg_quality"]), float(check["scale"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{where}.check needs integer 'jpeg_quality' and numeric 'scale'") from None
        if not (1 <= q <= 100 and 0.1 <= sc <= 1.0):
            raise ModelFormatError(f"{where}.check: jpeg_quality in 1..100 and scale in 0.1..1, got {q}, {sc}")
    return {**band, "accept": accept, "reject": reject}


def validate_links(tasks: Sequence[TaskConfig]) -> None:
    """`attach` and `withhold` name another task of the model and, where they give one, a label of it."""
    by_name = {t.name: t for t in tasks}
    for t in tasks:
        for kind, link in (("attach", t.attach), ("withhold", t.withhold)):
            if link is None:
                continue
            if not isinstance(link, dict) or link.get("task") not in by_name or link.get("task") == t.name \
                    or (kind == "attach" and not link.get("key")):
                need = "another task's name and a key" if kind == "attach" else "another task's name"
                raise ModelFormatError(f"config.json: task {t.name!r}: {kind} needs {need}")
            when = link.get("when")
            if (when is not None or kind == "withhold") and when not in by_name[link["task"]].labels:
                raise ModelFormatError(f"config.json: task {t.name!r}: {kind} 'when' is not a label of {link['task']!r}")
