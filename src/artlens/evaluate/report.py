"""report.html: one self-contained page (pictures embedded as data URIs) over an evaluation folder.

Built from `metrics.json`'s content and the PNGs beside it, so the page can be regenerated from the
folder alone (`write_report(json.load(...), folder)`).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

CSS = """
:root { --ink:#1d2430; --muted:#5f6b7a; --line:#e3e7ee; --bg:#f6f7f9; --card:#fff;
        --accent:#1f5fa8; --good:#2e7d32; --bad:#c62828; --warn:#b26a00; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#17212f; color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:600; letter-spacing:.2px; }
header .meta { color:#b8c2cf; font-size:13.5px; }
header .meta code { color:#dfe6ee; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 40px; font-size:14px; }
nav a { color:var(--accent); text-decoration:none; margin-right:18px; white-space:nowrap; }
nav a:hover { text-decoration:underline; }
main { max-width:1280px; margin:0 auto; padding:24px 40px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:22px 26px;
          margin:0 0 24px; }
h2 { margin:0 0 14px; font-size:21px; font-weight:600; }
h3 { margin:22px 0 10px; font-size:16px; font-weight:600; color:#2c3644; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:6px 0 8px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:128px; background:#fbfcfd; }
.card .v { font-size:24px; font-weight:600; }
.card .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.5px; }
table { border-collapse:collapse; font-size:13.5px; margin:6px 0 10px; }
th, td { padding:5px 12px; border-bottom:1px solid var(--line); text-align:right; }
th:first-child, td:first-child { text-align:left; }
th { background:#f1f4f8; font-weight:600; color:#334; }
tr:hover td { background:#fafbfd; }
.num-good { color:var(--good); font-weight:600; } .num-bad { color:var(--bad); font-weight:600; }
figure { margin:10px 0 16px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { font-size:12.5px; color:var(--muted); margin-top:4px; }
.row { display:flex; flex-wrap:wrap; gap:20px; align-items:flex-start; }
.row figure { flex:1 1 420px; }
details { margin:8px 0; } summary { cursor:pointer; color:var(--accent); font-weight:500; }
pre { background:#f4f6f9; padding:12px; border-radius:6px; overflow:auto; font-size:12.5px; }
.note { color:var(--warn); font-size:13.5px; } .muted { color:var(--muted); font-size:13.5px; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" loading="lazy">'


def _fig(out: Path, name: str | None, alt: str, caption: str = "") -> str:
    if not name or not (out / name).is_file():
        return ""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{_img(out / name, alt)}{cap}</figure>"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _anchor(name: str) -> str:
    return "task-" + "".join(ch if ch.isalnum() else "-" for ch in name)


def _task_section(name: str, m: dict, files: dict, galleries: dict, out: Path) -> str:
    e = html.escape
    parts = [f'<section id="{_anchor(name)}"><h2>Task: {e(name)} <span class="muted">(column <code>{e(str(m.get("column")))}</code>)</span></h2>']
    notes = []
    if m.get("missing_label"):
        notes.append(f"{m['missing_label']} row(s) have no {e(str(m.get('column')))} label and were left out.")
    if m.get("unknown_label_rows"):
        shown = ", ".join(f"{e(k)} ({v})" for k, v in m.get("unknown_label", {}).items())
        notes.append(f"{m['unknown_label_rows']} row(s) carry labels the model does not know: {shown}.")
    if m.get("unreadable_with_label"):
        notes.append(f"{m['unreadable_with_label']} labelled image(s) could not be read.")
    if m.get("skipped"):
        parts.append(f'<p class="note">Not evaluated: {e(m["skipped"])}.</p>')
        parts += [f'<p class="note">{n}</p>' for n in notes]
        return "".join(parts) + "</section>"

    cards = [
        ("images", f"{m['n']}"), ("accuracy", _pct(m.get("accuracy"))), ("macro F1", _num(m.get("macro_f1"))),
        ("balanced acc.", _pct(m.get("balanced_accuracy"))), ("ECE", _num(m.get("ece"))),
    ]
    if m.get("roc_auc") is not None:
        cards.append(("ROC AUC", _num(m["roc_auc"])))
    parts.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{e(k)}</div></div>' for k, v in cards
    ) + "</div>")
    parts += [f'<p class="note">{n}</p>' for n in notes]

    topk = ", ".join(f"top-{k} {_pct(v)}" for k, v in (m.get("top_k_accuracy") or {}).items())
    rows = [
        ["macro", _num(m.get("macro_precision")), _num(m.get("macro_recall")), _num(m.get("macro_f1"))],
        ["weighted", _num(m.get("weighted_precision")), _num(m.get("weighted_recall")), _num(m.get("weighted_f1"))],
    ]
    parts.append('<div class="row"><div>' + _table(["average", "precision", "recall", "F1"], rows) + "</div>")
    sel = (
        f"Answers at or above the unsure threshold ({m.get('threshold', 0):.2f}): coverage {_pct(m.get('coverage'))}, "
        f"accuracy {_pct(m.get('selective_accuracy'))}."
    )
    parts.append(f'<div><p class="muted">{e(topk)}<br>{e(sel)}<br>Mean confidence {_pct(m.get("mean_confidence"))}; '
                 f'log loss {_num(m.get("log_loss"))}.</p></div></div>')

    parts.append(_fig(out, files.get(f"confusion_{name}"), f"{name} confusion matrix",
                      "Row-normalised: each row shows where the images of one true class went."))
    parts.append('<div class="row">'
                 + _fig(out, files.get(f"f1_{name}"), f"{name} F1 per class", "F1 per class, support in brackets.")
                 + _fig(out, files.get(f"reliability_{name}"), f"{name} reliability diagram",
                        "Bars under the diagonal: over-confident; above: under-confident.")
                 + "</div>")
    g = galleries.get(name, {})
    if g.get("mistakes"):
        parts.append("<h3>Most confident mistakes</h3>" + _fig(out, g["mistakes"], f"{name} mistakes"))
    if g.get("successes"):
        parts.append("<h3>Most confident correct answers</h3>" + _fig(out, g["successes"], f"{name} successes"))

    pc = m.get("per_class", {})
    pc_rows = [[e(k), _num(v["precision"]), _num(v["recall"]), _num(v["f1"]), str(v["support"])]
               for k, v in sorted(pc.items(), key=lambda kv: -(kv[1]["f1"] or 0))]
    parts.append(f"<details><summary>Per-class table ({len(pc)} classes)</summary>"
                 + _table(["class", "precision", "recall", "F1", "support"], pc_rows) + "</details>")
    rep = out / f"classification_report_{name}.txt"
    if rep.is_file():
        parts.append("<details><summary>scikit-learn classification report</summary><pre>"
                     + e(rep.read_text(encoding="utf-8")) + "</pre></details>")
    bg = m.get("by_group")
    if bg:
        parts.append(f"<h3>By {e(str(bg.get('column')))}</h3>")
        if bg.get("error"):
            parts.append(f'<p class="note">{e(bg["error"])}</p>')
        else:
            gr = bg.get("groups", {})
            if gr and "auc" in next(iter(gr.values())):
                parts.append('<p class="muted">Each row: that group\'s AI images against all human images.</p>')
                parts.append(_table(
                    ["group", "AI images", "human images", "AUC", "accuracy", "AI recall", "FPR on human"],
                    [[e(k), str(v["n_ai"]), str(v["n_human"]), _num(v["auc"]), _pct(v["accuracy"]),
                      _pct(v["tpr_ai"]), _pct(v["fpr_human"])] for k, v in gr.items()],
                ))
            else:
                parts.append(_table(["group", "images", "accuracy", "macro F1"],
                                    [[e(k), str(v["n"]), _pct(v["accuracy"]), _num(v["macro_f1"])] for k, v in gr.items()]))
    return "".join(parts) + "</section>"


def _robustness_section(r: dict, files: dict, out: Path) -> str:
    e = html.escape
    parts = ['<section id="robustness"><h2>Robustness of AI detection</h2>']
    if r.get("error"):
        return parts[0] + f'<p class="note">{e(r["error"])}</p></section>'
    sampled = f" (a stratified sample of {r['rows_available']})" if r.get("sampled") else ""
    parts.append(f'<p class="muted">Task <code>{e(r["task"])}</code>: {r["rows"]} test images{sampled} re-scored '
                 "after each change; P(ai) ≥ 0.5 counts as AI.</p>")
    conds = r.get("conditions", {})
    base = conds.get("original", {})
    rows = []
    for c, v in conds.items():
        d = None if v.get("auc") is None or base.get("auc") is None else v["auc"] - base["auc"]
        delta = "" if d is None or c == "original" else f' <span class="{"num-bad" if d < -0.02 else "muted"}">({d:+.3f})</span>'
        rows.append([e(c), _num(v.get("auc")) + delta, _pct(v.get("accuracy")), _pct(v.get("tpr_ai")), _pct(v.get("fpr_human"))])
    parts.append(_table(["condition", "AUC (Δ)", "accuracy", "AI recall", "FPR on human"], rows))
    parts.append(_fig(out, files.get("robustness"), "robustness plot"))
    by = r.get("by_group")
    if by:
        names = list(conds)
        parts.append(f"<h3>AUC by {e(str(r.get('group_by')))} (that group's AI images vs all human images)</h3>")
        parts.append(_table(["group"] + names, [[e(g)] + [_num(v[c].get("auc")) for c in names] for g, v in by.items()]))
    if r.get("failed"):
        parts.append(f'<p class="note">{len(r["failed"])} image(s) failed under a transform.</p>')
    return "".join(parts) + "</section>"


def _curves_section(c: dict, files: dict, out: Path) -> str:
    e = html.escape
    if c.get("error"):
        return f'<section id="curves"><h2>Training curves</h2><p class="note">{e(c["error"])}</p></section>'
    best = f" Lowest validation loss at epoch {c['best_epoch_val_loss']}." if "best_epoch_val_loss" in c else ""
    return ('<section id="curves"><h2>Training curves</h2>'
            f'<p class="muted">From <code>{e(c.get("source", ""))}</code>, {len(c.get("epochs", []))} epoch(s).{best}</p>'
            + _fig(out, files.get("training_curves"), "training curves") + "</section>")


def render_html(metrics: dict, out_dir: str | os.PathLike) -> str:
    out = Path(out_dir)
    e = html.escape
    files = metrics.get("files", {})
    galleries = metrics.get("galleries", {})
    model, data = metrics.get("model", {}), metrics.get("data", {})
    tasks = metrics.get("tasks", {})
    split = data.get("split") or "all rows"
    meta = (f"model <code>{e(str(model.get('path') or model.get('backbone')))}</code> "
            f"({e(str(model.get('mode')))}, backbone {e(str(model.get('backbone')))}) · data <code>{e(str(data.get('source')))}</code> "
            f"· split {e(str(split))} · {data.get('embedded', 0)} of {data.get('rows', 0)} images read · {e(str(metrics.get('created', '')))}")
    nav = ['<a href="#summary">Summary</a>'] + [f'<a href="#{_anchor(t)}">{e(t)}</a>' for t in tasks]
    if "robustness" in metrics:
        nav.append('<a href="#robustness">Robustness</a>')
    if "training_curves" in metrics:
        nav.append('<a href="#curves">Training curves</a>')
    nav.append('<a href="#issues">Data issues</a>')

    summary_rows = []
    for t, m in tasks.items():
        if m.get("skipped"):
            summary_rows.append([f'<a href="#{_anchor(t)}">{e(t)}</a>', "0", "–", "–", "–", "–", "–", '<span class="note">skipped</span>'])
            continue
        summary_rows.append([
            f'<a href="#{_anchor(t)}">{e(t)}</a>', str(m["n"]), str(m["n_classes"]), _pct(m.get("accuracy")),
            _pct(m.get("balanced_accuracy")), _num(m.get("macro_f1")), _num(m.get("ece")), _pct(m.get("coverage")),
        ])
    body = ['<section id="summary"><h2>Summary</h2>'
            + _table(["task", "images", "classes", "accuracy", "balanced acc.", "macro F1", "ECE", "coverage"], summary_rows)]
    for note in ([data["note"]] if data.get("note") else []) + list(metrics.get("warnings") or []):
        body.append(f'<p class="note">{e(note)}</p>')
    body.append("</section>")
    body += [_task_section(t, m, files, galleries, out) for t, m in tasks.items()]
    if "robustness" in metrics:
        body.append(_robustness_section(metrics["robustness"], files, out))
    if "training_curves" in metrics:
        body.append(_curves_section(metrics["training_curves"], files, out))

    issues = ['<section id="issues"><h2>Data issues</h2>']
    bad = metrics.get("unreadable") or []
    if bad:
        issues.append(f'<p class="note">{len(bad)} image(s) could not be read (listed in unreadable.csv).</p>')
        issues.append(_table(["file", "reason"], [[e(str(b.get("path"))), e(str(b.get("reason")))] for b in bad[:50]]))
    else:
        issues.append('<p class="muted">Every image was read.</p>')
    o = metrics.get("outliers", {})
    issues.append(f'<p class="muted">{o.get("rows", 0)} misclassified or low-confidence (&lt; 0.5) answers are listed '
                  f'in <code>{e(o.get("file", "outliers.csv"))}</code>.</p></section>')
    body += issues

    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>artlens evaluation</title><style>{CSS}</style></head><body>"
            f"<header><h1>artlens evaluation</h1><div class=\"meta\">{meta}</div></header>"
            f"<nav>{''.join(nav)}</nav><main>{''.join(body)}</main></body></html>\n")


def write_report(metrics: dict, out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    from artlens.paths import atomic_write_text

    out = Path(out_dir)
    path = Path(path) if path else out / "report.html"
    atomic_write_text(path, render_html(metrics, out))
    return path
