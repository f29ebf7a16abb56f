"""`artlens predict --engine ray`: the local `Predictor`'s answers, computed by a pool of Ray actors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from artlens.engine.cluster import RayOptions
from artlens.engine.pipeline import describe_encoder, run
from artlens.engine.stages import PredictWorker


def _predictor_encoder(kwargs: dict):
    from artlens.predict import Predictor

    return Predictor(**kwargs).encoder


def ray_iter_predict(
    paths: Sequence[str | os.PathLike],
    model=None,
    *,
    top_k: int = 3,
    thresholds: dict[str, float] | float | None = None,
    encoder=None,
    device: str = "cpu",
    options: RayOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Like `Predictor(model, top_k=..., thresholds=..., encoder=...).iter_predict(paths)`: one row
    `{"path", "error", "tasks"}` per path, in input order, with the same answers, computed on Ray.

    The model is loaded here and shipped to the actors (the cluster needs only the images at the
    same paths); `encoder` (optional) must be picklable, as it travels to them too. `device`: where
    the actors run the model (`cuda` needs `options.gpus_per_worker`).
    `on_progress(n)`: n more images answered (in any order)."""
    from artlens.models.artmodel import ArtModel
    from artlens.predict import Predictor

    options = options or RayOptions()
    if not isinstance(model, ArtModel):
        if model is None:
            from artlens import default_model_dir

            model = default_model_dir()
        model = ArtModel.load(model)
    kwargs = {"model": model, "top_k": top_k, "thresholds": thresholds, "encoder": encoder}
    Predictor(**kwargs)  # bad thresholds fail here, before any worker starts
    if device != "cpu":  # Predictors before the device option take none
        kwargs["device"] = device
    paths = [str(p) for p in paths]
    if not paths:
        return
    info = describe_encoder(partial(_predictor_encoder, kwargs), options)

    pending: dict[int, tuple[str, str]] = {}
    nxt = 0
    for batch in run(paths, info, PredictWorker, {"predictor_kwargs": kwargs}, options):
        fresh = 0
        for idx, err, tasks in zip(batch["idx"], batch["error"], batch["tasks"]):
            i = int(idx)
            if i >= nxt and i not in pending:  # a batch retried after a kill may arrive twice
                pending[i] = (err, tasks)
                fresh += 1
        while nxt in pending:  # rows go out in input order, as the local engine gives them
            err, tasks = pending.pop(nxt)
            yield {"path": paths[nxt], "error": err or None, "tasks": json.loads(tasks) if not err else {}}
            nxt += 1
        if on_progress and fresh:
            on_progress(fresh)
    for i in range(nxt, len(paths)):  # a gap is never expected: Ray answers every row or raises
        err, tasks = pending.pop(i, ("no answer from the Ray run", ""))
        yield {"path": paths[i], "error": err or None, "tasks": json.loads(tasks) if not err else {}}


def ray_predict_paths(paths: Sequence[str | os.PathLike], model=None, **kw) -> list[dict[str, Any]]:
    return list(ray_iter_predict(paths, model, **kw))
