"""Report figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Every function writes one PNG and returns its path. Sizes scale with the number of classes so a
27-style confusion matrix or a 100-artist F1 chart stays readable.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 110
GOOD, BAD, ACCENT, MUTED = "#2e7d32", "#c62828", "#1f5fa8", "#9e9e9e"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def display_label(label: str, width: int = 28) -> str:
    text = str(label).replace("_", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------- per task
def confusion_matrix_png(
    norm: np.ndarray, labels: Sequence[str], path, *, counts: np.ndarray | None = None, title: str = ""
) -> Path:
    """Row-normalised confusion matrix heat map. Values are written in the cells up to 15 classes."""
    n = len(labels)
    side = float(np.clip(2.8 + 0.38 * n, 5.0, 34.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    names = [display_label(x) for x in labels]
    if counts is not None:  # true-class support beside each row name
        names_y = [f"{nm} ({int(s)})" for nm, s in zip(names, counts.sum(axis=1))]
    else:
        names_y = names
    tick_fs = 10 if n <= 12 else 8 if n <= 30 else 6
    ax.set_xticks(np.arange(n), labels=names, rotation=60 if n > 6 else 30, ha="right",
                  rotation_mode="anchor", fontsize=tick_fs)
    ax.set_yticks(np.arange(n), labels=names_y, fontsize=tick_fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)" if counts is not None else "true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                v = norm[i, j]
                if v >= 0.005:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8 if n > 8 else 10,
                            color="white" if v > 0.55 else "#222")
    ax.set_title(title or "Confusion matrix (rows sum to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return _save(fig, path)


def per_class_f1_png(per_class: dict, path, *, title: str = "") -> Path:
    """Horizontal bars of F1 per class (best at the top), support written beside each bar."""
    items = [(k, v) for k, v in per_class.items() if v.get("support", 0) > 0]
    items.sort(key=lambda kv: (kv[1]["f1"] or 0.0))
    n = max(len(items), 1)
    fig = _figure(6.4, float(np.clip(1.2 + 0.3 * n, 2.4, 40.0)))
    ax = fig.add_subplot()
    f1 = [v["f1"] or 0.0 for _, v in items]
    colors = [GOOD if x >= 0.8 else ACCENT if x >= 0.5 else BAD for x in f1]
    ax.barh(np.arange(len(items)), f1, color=colors, height=0.7)
    ax.set_yticks(np.arange(len(items)), labels=[display_label(k, 32) for k, _ in items],
                  fontsize=9 if n <= 30 else 7)
    for i, (_, v) in enumerate(items):
        ax.text(min(v["f1"] or 0.0, 1.0) + 0.01, i, f"{(v['f1'] or 0):.2f}  (n={v['support']})",
                va="center", fontsize=8, color="#333")
    ax.set_xlim(0, 1.22)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "F1 per class")
    return _save(fig, path)


def reliability_png(rel: dict, path, *, ece: float | None = None, title: str = "") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts underneath."""
    edges = np.asarray(rel["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in rel["confidence"]])
    counts = np.asarray(rel["count"])
    fig = _figure(5.6, 6.0)
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1])
    ax = fig.add_subplot(gs[0])
    ax.bar(centers, np.nan_to_num(acc), width=width, color=ACCENT, edgecolor="white", label="accuracy")
    gap = np.where(np.isnan(acc), 0, conf - acc)
    ax.bar(centers, gap, bottom=np.nan_to_num(acc), width=width, color=BAD, alpha=0.25,
           edgecolor=BAD, hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="#555", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title((title or "Reliability") + (f"  (ECE {ece:.3f})" if ece is not None else ""))
    ax2 = fig.add_subplot(gs[1], sharex=ax)
    ax2.bar(centers, counts, width=width, color=MUTED, edgecolor="white")
    ax2.set_xlabel("confidence (top probability)")
    ax2.set_ylabel("images")
    return _save(fig, path)


def gallery_png(items: Sequence[dict], path, *, title: str = "", ncols: int = 6, thumb: int = 200) -> Path | None:
    """Grid of thumbnails with captions. `items`: dicts with `path`, `caption`, `ok` (caption colour).

    Files that cannot be read get a grey tile with the reason instead of failing the grid.
    """
    if not items:
        return None
    from PIL import Image, ImageOps

    from artlens.data.images import ImageDecodeError, load_image

    ncols = max(1, min(ncols, len(items)))
    nrows = int(np.ceil(len(items) / ncols))
    cell = 2.3
    fig = _figure(cell * ncols, (cell + 0.45) * nrows + (0.4 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items):
        try:
            img = ImageOps.contain(load_image(item["path"]), (thumb, thumb), Image.Resampling.LANCZOS)
            # Letterbox on a square tile so portraits and landscapes share one grid without gaps.
            tile = Image.new("RGB", (thumb, thumb), (243, 244, 246))
            tile.paste(img, ((thumb - img.width) // 2, (thumb - img.height) // 2))
            ax.imshow(np.asarray(tile))
        except (ImageDecodeError, OSError) as exc:
            ax.imshow(np.full((8, 8, 3), 220, dtype=np.uint8))
            ax.text(4, 4, textwrap.fill(str(getattr(exc, "reason", exc)), 20), ha="center", va="center", fontsize=6)
        caption = "\n".join(textwrap.shorten(line, 34, placeholder="…") for line in item["caption"].split("\n"))
        ax.set_title(caption, fontsize=8.5, color=GOOD if item.get("ok") else BAD, loc="center")
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------------------- run level
def curves_png(per_epoch, groups: dict[str, list[str]], path, *, title: str = "Training curves") -> Path:
    """Loss (left) and accuracy-like scores (right) per epoch; validation lines dashed."""
    from matplotlib.ticker import MaxNLocator

    panels = [(k, v) for k, v in groups.items() if v]
    fig = _figure(5.2 * max(len(panels), 1), 4.0)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    palette = [f"C{i}" for i in range(10)]
    for ax, (name, cols) in zip(axes, panels):
        # train and val of the same quantity share a colour; validation is dashed
        keys = list(dict.fromkeys(_curve_key(c) for c in cols))
        for c in cols:
            s = per_epoch[c].dropna()
            style = "--" if c.lower().startswith("val") else "-"
            ax.plot(s.index, s.values, style, marker="o", ms=3, label=c,
                    color=palette[keys.index(_curve_key(c)) % len(palette)])
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("loss" if name == "loss" else "accuracy / F1")
        epochs = [int(e) for e in per_epoch.index]
        if 0 < len(epochs) <= 20:
            ax.set_xticks(epochs)
            ax.set_xlim(min(epochs) - 0.3, max(epochs) + 0.3)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return _save(fig, path)


def _curve_key(column: str) -> str:
    low = column.lower()
    for prefix in ("train", "val"):
        if low.startswith(prefix):
            return low[len(prefix):].lstrip("_/")
    return low


def robustness_png(conditions: dict[str, dict], path, *, title: str = "AI detection under image changes") -> Path:
    """One panel per number (AUC, accuracy, FPR on human work), a bar per condition, values written.

    Each panel zooms on its own range: on a good detector the differences are a few points.
    """
    names = list(conditions)
    keys = [("auc", "AUC", ACCENT), ("accuracy", "accuracy", GOOD), ("fpr_human", "FPR on human work", BAD)]
    y = np.arange(len(names))[::-1]
    fig = _figure(11.0, 1.0 + 0.42 * len(names))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (k, lab, col) in zip(axes, keys):
        vals = np.array([np.nan if conditions[n].get(k) is None else conditions[n][k] for n in names], float)
        ax.barh(y, np.nan_to_num(vals), color=col, height=0.65)
        finite = vals[np.isfinite(vals)]
        if k == "fpr_human":
            lo, hi = 0.0, max(0.1, float(finite.max()) * 1.25 if finite.size else 0.1)
        else:
            lo = min(0.9, float(finite.min()) - 0.05) if finite.size else 0.0
            lo, hi = max(0.0, np.floor(lo * 20) / 20), 1.0
        ax.set_xlim(lo, hi + (hi - lo) * 0.22)  # room for the value labels
        ax.set_xticks([t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9])
        for yi, v in zip(y, vals):
            ax.text(max(v, lo) if np.isfinite(v) else lo, yi, f" {v:.3f}" if np.isfinite(v) else " n/a",
                    va="center", fontsize=8.5)
        ax.set_title(lab, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels=names)
    fig.suptitle(title)
    return _save(fig, path)
