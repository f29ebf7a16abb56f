"""Does the human-vs-AI answer survive ordinary handling of the picture?

A detector that keys on compression, resolution or framing (the confounds of our data sets) looks
perfect on its test split and fails on real uploads. Each condition re-encodes or resizes the test
images the way sharing sites do, and the model scores them again.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from artlens.data.images import ImageDecodeError, load_image, load_image_bytes
from artlens.evaluate import plots


def _reencode(img: Image.Image, fmt: str, name: str, **kw) -> Image.Image:
    # Through bytes and the project's decoder, exactly as an upload in that format would arrive.
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return load_image_bytes(buf.getvalue(), name)


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def f(img: Image.Image) -> Image.Image:
        return _reencode(img, "JPEG", f"<jpeg q{quality}>", quality=quality)

    return f


def downscale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def f(img: Image.Image) -> Image.Image:
        w, h = img.size
        return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)

    return f


def center_crop(fraction: float) -> Callable[[Image.Image], Image.Image]:
    def f(img: Image.Image) -> Image.Image:
        w, h = img.size
        cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
        left, top = (w - cw) // 2, (h - ch) // 2
        return img.crop((left, top, left + cw, top + ch))

    return f


def png_resave(img: Image.Image) -> Image.Image:
    return _reencode(img, "PNG", "<png>")


# name -> transform (None: the image as it is)
CONDITIONS: dict[str, Callable[[Image.Image], Image.Image] | None] = {
    "original": None,
    "jpeg_q90": jpeg(90),
    "jpeg_q70": jpeg(70),
    "jpeg_q50": jpeg(50),
    "downscale_0.5x": downscale(0.5),
    "center_crop_80%": center_crop(0.8),
    "png_resave": png_resave,
}


# ---------------------------------------------------------------------------- the origin task
def origin_scorer(model) -> tuple[str, Callable[[dict], np.ndarray]]:
    """(task name, proba dict -> P(ai)) for the model's human-vs-AI answer.

    A task on the `origin` column gives P(ai) directly; a joint `origin+...` task gives the sum over
    its `ai_*` labels. Raises ValueError when the model does not tell human from AI.
    """
    for t in model.tasks:
        if t.column == "origin" and "ai" in t.labels:
            j = t.labels.index("ai")
            return t.name, lambda proba, n=t.name, j=j: proba[n][:, j]
    for t in model.tasks:
        if str(t.column).startswith("origin+"):
            cols = [i for i, lab in enumerate(t.labels) if lab.startswith("ai_")]
            if cols:
                return t.name, lambda proba, n=t.name, c=cols: proba[n][:, c].sum(axis=1)
    raise ValueError(f"the model has no human-vs-AI task (tasks: {', '.join(model.task_names)})")


def is_ai_labels(origin: Sequence) -> np.ndarray:
    return np.asarray([str(v).lower() == "ai" for v in origin], dtype=bool)


def sample_rows(df, max_rows: int | None, strata: Sequence[str] = ("origin", "generator"), seed: int = 0):
    """At most `max_rows` rows, stratified so each origin/generator keeps its share."""
    if not max_rows or len(df) <= max_rows:
        return df
    cols = [c for c in strata if c in df.columns]
    frac = max_rows / len(df)
    if not cols:
        return df.sample(n=max_rows, random_state=seed)
    out = df.groupby(cols, dropna=False, group_keys=False).sample(frac=frac, random_state=seed)
    return out.loc[sorted(out.index, key=df.index.get_loc)]


# ---------------------------------------------------------------------------- scoring
def embed_conditions(
    paths: Sequence[str],
    encoder,
    conditions: dict[str, Callable | None],
    *,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[int, str]]:
    """Embeddings of every image under every condition (NaN rows for failures).

    Each image is decoded once per batch and transformed in memory; returns
    `({condition: (N, dim)}, ok_mask, {row: reason})`.
    """
    n = len(paths)
    feats = {c: np.full((n, encoder.dim), np.nan, dtype=np.float32) for c in conditions}
    reasons: dict[int, str] = {}
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        per_cond: dict[str, list[np.ndarray]] = {c: [] for c in conditions}
        good: list[int] = []
        for i in idx:
            try:
                img = load_image(paths[i])
                arrays = {c: encoder.preprocess(f(img) if f else img) for c, f in conditions.items()}
            except ImageDecodeError as exc:
                reasons[i] = exc.reason
                continue
            except Exception as exc:  # a transform or decoder bug must not lose the batch
                reasons[i] = f"could not process image ({type(exc).__name__}: {exc})"
                continue
            good.append(i)
            for c, a in arrays.items():
                per_cond[c].append(a)
        if good:
            for c in conditions:
                feats[c][good] = encoder.embed_batch(np.stack(per_cond[c]))
        if on_progress:
            on_progress(len(idx))
    ok = np.ones(n, dtype=bool)
    ok[list(reasons)] = False
    return feats, ok, reasons


def detection_table(p_ai: dict[str, np.ndarray], is_ai: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """Per condition the binary numbers; with `groups` (e.g. each AI row's generator) also per group:
    that group's AI rows against every human row."""
    from artlens.evaluate.metrics import binary_detection

    out: dict = {"conditions": {c: binary_detection(p, is_ai) for c, p in p_ai.items()}}
    if groups is not None:
        by: dict = {}
        values = sorted({str(g) for g, a in zip(groups, is_ai) if a and g is not None and g == g})
        for g in values:
            rows = (~is_ai) | (is_ai & (groups.astype(str) == g))
            by[g] = {c: binary_detection(p[rows], is_ai[rows]) for c, p in p_ai.items()}
        out["by_group"] = by
    return out


def robustness_section(model, df, ok, enc, group_by, max_rows, batch_size, progress, out: Path, files) -> dict:
    """The evaluation report's robustness numbers: the origin task re-scored on re-encoded,
    resized and cropped copies of a sample of the readable rows (plot written under `out`)."""
    try:
        task_name, p_ai = origin_scorer(model)
    except ValueError as exc:
        return {"error": str(exc)}
    if "origin" not in df.columns:
        return {"error": "the data has no 'origin' column (human / ai)"}
    origin = df["origin"].astype("string").str.lower()
    sel = df[ok & origin.isin(["human", "ai"]).to_numpy()]
    if sel.empty or sel["origin"].str.lower().nunique() < 2:
        return {"error": "robustness needs readable rows of both origins (human and ai)"}
    sample = sample_rows(sel, max_rows)
    rows = sample.index.to_numpy()
    # "original" is embedded again in the same pass: an encoder whose output depends on the batch
    # (dynamically quantised ONNX) would otherwise differ from the transformed runs for that reason.
    conditions = dict(CONDITIONS)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("robustness"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress, transient=True)
    with bar:
        job = bar.add_task("robustness", total=len(rows))
        cond_feats, cond_ok, reasons = embed_conditions(
            sample["path"].astype(str).tolist(), enc, conditions, batch_size=min(batch_size, 16),
            on_progress=lambda n: bar.advance(job, n),
        )
    keep = cond_ok
    scores = {}
    for c in conditions:
        scores[c] = p_ai(model.predict_proba(cond_feats[c][keep]))
    is_ai = is_ai_labels(sample["origin"].to_numpy()[keep])
    groups = None
    if group_by and group_by in sample.columns:
        groups = sample[group_by].to_numpy(dtype=object)[keep]
    table = detection_table(scores, is_ai, groups)
    res = {
        "task": task_name,
        "rows": int(keep.sum()),
        "rows_available": int(len(sel)),
        "sampled": bool(len(sample) < len(sel)),
        "failed": [{"path": str(sample["path"].iloc[i]), "reason": r} for i, r in reasons.items()],
        "group_by": group_by if groups is not None else None,
        **table,
    }
    files["robustness"] = plots.robustness_png(table["conditions"], out / "robustness.png")
    return res
