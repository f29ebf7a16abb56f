"""Origin (human / AI) and generator family, chosen on what generalises.

A probe fitted on whatever human and AI images are at hand learns their content ("not a classic
painting = AI") and calls every new kind of human work AI. So origin is trained and judged here
by groups, never by a random split:

- Rows are grouped: AI rows by generator family (`ai:flux`), human rows by kind (`human:pencil
  sketch`; the manifest's `kind` column, which a recipe can set per source). Each group weighs the same within its class, so one large source (FLUX's
  tiles, WikiArt) does not stand for its class.
- Leave-one-group-out: each family and each human kind is held out in turn and scored by a head
  that never saw it. These out-of-group scores choose the features and weight decay
  (`select_recipe`) and the operating point (`operating_point`); `benchmarks/origin.py` prints them.
- The head is logistic regression over the model's standardised features, restricted to the
  feature blocks the recipe names; it is stored as an ordinary two-label linear head.
- The operating point is a band: P(ai) >= `accept` says `ai`, <= `reject` says `human`, between
  is `unsure` (see `TaskConfig.band`). `accept` keeps every held-out human kind under `max_fpr`
  called AI; `reject` (0.5 by default) leaves weak evidence `unsure` instead of `human`.
- A recipe with `train: pairs` learns only from content-matched pairs: AI images made to imitate an
  artist ("style of <artist>") beside that artist's own paintings, each artist and class weighing
  the same. What separates such a pair is how the image was made, not what it shows; every group
  outside the pairs is then unseen by construction and scores the head as it is, and the paired
  rows are scored by artist-grouped folds (`pairs_validation`).
- A family head (multinomial, over AI rows) says which generator family an AI image resembles.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from artlens.metrics import macro_f1, softmax

log = logging.getLogger(__name__)

# CLIP ViT-B/16 features: the image embedding, then the mean patch tokens of blocks 5, 7, 9
# (artlens.models.clip.clip_features). Other backbones: `all`.
CLIP_BLOCKS = {"embedding": (0, 512), "block5": (512, 1280), "block7": (1280, 2048), "block9": (2048, 2816)}
DEFAULT_CANDIDATES = [
    {"blocks": ["all"], "weight_decay": 1e-2},
    {"blocks": ["embedding"], "weight_decay": 1e-2},
    {"blocks": ["embedding", "block9"], "weight_decay": 1e-2},
    {"blocks": ["block9"], "weight_decay": 1e-2},
    {"blocks": ["block9"], "weight_decay": 1e-1},
]
UNKNOWN_FAMILY = "unknown"  # a generator the source could not name: no family class
PAIR_FOLDS = 5  # artist-grouped folds that score the paired rows of a `train: pairs` recipe


def origin_groups(df) -> np.ndarray:
    """`ai:<family>` for AI rows (generator when no family), `human:<kind>` for human rows (their
    source when no kind); None where origin is missing."""
    origin = [o.strip().lower() if isinstance(o, str) else None for o in df["origin"].tolist()]
    fam = _col(df, "family")
    gen = _col(df, "generator")
    kind = _col(df, "kind")
    src = _col(df, "source")
    out = np.empty(len(df), dtype=object)
    for i, o in enumerate(origin):
        if o == "ai":
            out[i] = "ai:" + (fam[i] or gen[i] or "other")
        elif o == "human":
            out[i] = "human:" + (kind[i] or src[i] or "other")
        else:
            out[i] = None
    return out


def _col(df, name: str) -> list:
    if name not in df.columns:
        return [None] * len(df)
    return [v if isinstance(v, str) and v.strip() else None for v in df[name].tolist()]


def origin_content(df) -> np.ndarray:
    """Per row, what it depicts as a pairing key: the artist's slug (an AI image's imitated artist,
    a WikiArt painting's artist from its file name); None when unknown."""
    from artlens.data.taxonomy import artist_slug, wikiart_name_fields

    art = _col(df, "artist")
    if "path" in df.columns and any(a is None for a in art):
        named = wikiart_name_fields(df["path"], "artist")
        art = [a if a is not None else n for a, n in zip(art, named)]
    return np.array([artist_slug(a) if a else None for a in art], dtype=object)


def content_pairs(content: np.ndarray, is_ai: np.ndarray) -> np.ndarray:
    """Rows whose content key occurs in both classes (an artist's paintings and AI imitations)."""
    known = np.array([c is not None for c in content])
    both = set(content[known & is_ai]) & set(content[known & ~is_ai])
    return known & np.isin(content, list(both))


def pair_weights(content: np.ndarray, is_ai: np.ndarray) -> np.ndarray:
    """Each (content, class) cell the same total weight."""
    key = np.array([f"{c}|{int(a)}" for c, a in zip(content, is_ai)])
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    return 1.0 / counts[inv]


def trains_on_pairs(recipe: dict) -> bool:
    return recipe.get("train", "groups") == "pairs"


def fit_head(Z: np.ndarray, is_ai: np.ndarray, groups: np.ndarray, recipe: dict, rows: np.ndarray,
             content: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """The recipe's origin head fitted on `rows` (bool): every group balanced, or with `train: pairs`
    only the content-matched pairs among them. None when a class is missing."""
    if trains_on_pairs(recipe):
        if content is None:
            raise ValueError("origin: a `train: pairs` recipe needs content keys (artists) per row")
        rows = rows & content_pairs(np.where(rows, content, None), is_ai)
        if len(set(is_ai[rows])) < 2:
            return None
        w = pair_weights(content[rows], is_ai[rows])
    else:
        if len(set(is_ai[rows])) < 2:
            return None
        w = group_weights(groups[rows], is_ai[rows])
    return fit_binary(Z[rows], is_ai[rows], w, recipe["weight_decay"], block_mask(Z.shape[1], recipe["blocks"]))


def group_weights(groups: np.ndarray, is_ai: np.ndarray) -> np.ndarray:
    """Each group the same share of its class; each class half of the total."""
    w = np.zeros(len(groups), np.float64)
    for cls in (True, False):
        names = sorted(set(groups[is_ai == cls]))
        for g in names:
            m = groups == g
            w[m] = 0.5 / (len(names) * m.sum())
    return w


def block_mask(dim: int, blocks: list[str]) -> np.ndarray:
    """Boolean (dim,) of the feature columns a recipe uses."""
    if "all" in blocks:
        return np.ones(dim, bool)
    m = np.zeros(dim, bool)
    for b in blocks:
        if b not in CLIP_BLOCKS or CLIP_BLOCKS[b][1] > dim:
            raise ValueError(f"origin: unknown feature block {b!r} for {dim}-d features (known: all, {', '.join(CLIP_BLOCKS)})")
        lo, hi = CLIP_BLOCKS[b]
        m[lo:hi] = True
    return m


def fit_binary(Z: np.ndarray, y: np.ndarray, w: np.ndarray, weight_decay: float, cols: np.ndarray,
               max_iter: int = 300) -> tuple[np.ndarray, float]:
    """Weighted logistic regression on standardised features `Z`, over columns `cols`.
    Returns (weights over all columns, zero outside `cols`; bias)."""
    import torch
    import torch.nn.functional as F

    Xt = torch.as_tensor(np.ascontiguousarray(Z[:, cols]), dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    wt = torch.as_tensor(w / w.sum(), dtype=torch.float32)
    W = torch.zeros(Xt.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (wt * F.binary_cross_entropy_with_logits(Xt @ W + b, yt, reduction="none")).sum()
        loss = loss + 0.5 * weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    full = np.zeros(Z.shape[1], np.float32)
    full[cols] = W.detach().numpy()
    return full, float(b.detach()[0])


@dataclass
class GroupValidation:
    """Out-of-group scores: each row scored by a head fitted without its group."""

    recipe: dict
    scores: np.ndarray  # logit of P(ai), per row
    groups: np.ndarray
    is_ai: np.ndarray
    table: dict = field(default_factory=dict)  # group -> {n, called_ai (at P >= .5)}

    def auc(self) -> float:
        """Group-balanced ROC AUC of the out-of-group scores (every group weighs the same)."""
        from sklearn.metrics import roc_auc_score

        w = 1.0 / np.array([np.sum(self.groups == g) for g in self.groups])
        return float(roc_auc_score(self.is_ai, self.scores, sample_weight=w))

    def rates(self, threshold_p: float) -> dict[str, float]:
        """Per group: the share with P(ai) >= threshold_p."""
        z = _logit(threshold_p)
        return {str(g): float(np.mean(self.scores[self.groups == g] >= z)) for g in sorted(set(self.groups))}


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def leave_one_group_out(Z: np.ndarray, is_ai: np.ndarray, groups: np.ndarray, recipe: dict,
                        held: list[str] | None = None, cap: int | None = 1500, seed: int = 0,
                        progress=None, content: np.ndarray | None = None) -> GroupValidation:
    """Score every row of the `held` groups (default: all) with a head fitted on the other groups.
    `cap` rows per group at most in each fit (the weights already balance groups; a pairs recipe
    uses all its pairs)."""
    rng = np.random.default_rng(seed)
    use = np.ones(len(groups), bool)
    if cap and not trains_on_pairs(recipe):
        use[:] = False
        for g in sorted(set(groups)):
            idx = np.nonzero(groups == g)[0]
            use[rng.permutation(idx)[:cap]] = True
    scores = np.full(len(groups), np.nan, np.float32)
    held = sorted(set(groups)) if held is None else held
    for n, g in enumerate(held):
        out = groups == g
        head = fit_head(Z, is_ai, groups, recipe, use & ~out, content)
        if head is None:
            continue
        scores[out] = Z[out] @ head[0] + head[1]
        if progress:
            progress(n + 1, len(held), g)
    return _validation(recipe, scores, groups, is_ai)


def _validation(recipe: dict, scores: np.ndarray, groups: np.ndarray, is_ai: np.ndarray) -> GroupValidation:
    done = ~np.isnan(scores)
    v = GroupValidation(recipe, scores[done], groups[done], is_ai[done])
    v.table = {g: {"n": int(np.sum(v.groups == g)), "called_ai": round(r, 4)} for g, r in v.rates(0.5).items()}
    return v


def pairs_validation(Z: np.ndarray, is_ai: np.ndarray, groups: np.ndarray, content: np.ndarray, recipe: dict,
                     folds: int = PAIR_FOLDS, progress=None) -> GroupValidation:
    """Out-of-sample scores of a `train: pairs` recipe: rows outside the pairs (every other family and
    human kind, every unpaired painting) by the head fitted on all pairs, which never saw them; the
    paired rows by `folds` artist-grouped folds (an artist's paintings and imitations together)."""
    from sklearn.model_selection import GroupKFold

    pairs = content_pairs(content, is_ai)
    scores = np.full(len(groups), np.nan, np.float32)
    head = fit_head(Z, is_ai, groups, recipe, np.ones(len(groups), bool), content)
    if head is None:
        raise ValueError("origin: a `train: pairs` recipe needs artists with both paintings and AI imitations")
    scores[~pairs] = Z[~pairs] @ head[0] + head[1]
    idx = np.nonzero(pairs)[0]
    n_folds = min(folds, len(set(content[idx])))
    for k, (tr_i, te_i) in enumerate(GroupKFold(n_folds).split(idx, groups=content[idx].astype(str))):
        rows = np.zeros(len(groups), bool)
        rows[idx[tr_i]] = True
        fold = fit_head(Z, is_ai, groups, recipe, rows, content)
        if fold is not None:
            scores[idx[te_i]] = Z[idx[te_i]] @ fold[0] + fold[1]
        if progress:
            progress(k + 1, n_folds, "pairs")
    return _validation(recipe, scores, groups, is_ai)


def validate(Z, is_ai, groups, recipe: dict, content: np.ndarray | None = None, **kw) -> GroupValidation:
    """A candidate's out-of-group scores: pairs recipes by `pairs_validation`, the others by
    `leave_one_group_out`."""
    if trains_on_pairs(recipe):
        return pairs_validation(Z, is_ai, groups, content, recipe, progress=kw.get("progress"))
    return leave_one_group_out(Z, is_ai, groups, recipe, content=content, **kw)


def select_recipe(Z, is_ai, groups, candidates: list[dict] | None = None, max_fpr: float = 0.02,
                  content: np.ndarray | None = None, **kw) -> tuple[dict, list[dict], GroupValidation]:
    """The candidate whose held-out families are most often called AI at its own operating point
    (at most `max_fpr` of each held-out human kind called AI); ties go to the out-of-group AUC.
    Returns the recipe, every candidate's numbers and the chosen one's validation."""
    results, runs = [], []
    for c in candidates or DEFAULT_CANDIDATES:
        if trains_on_pairs(c) and (content is None or not content_pairs(content, is_ai).any()):
            log.info("origin candidate %s skipped: no artist has both paintings and AI imitations", c)
            continue
        v = validate(Z, is_ai, groups, c, content=content, **kw)
        runs.append(v)
        fpr = [r["called_ai"] for g, r in v.table.items() if g.startswith("human:")]
        rec = [r["called_ai"] for g, r in v.table.items() if g.startswith("ai:")]
        op = operating_point(v, max_fpr=max_fpr, reject=0.5)
        rec_op = [r["called_ai"] for g, r in op["validation"].items() if g.startswith("ai:")]
        results.append({"recipe": c, "auc": round(v.auc(), 4), "mean_ai_recall": round(float(np.mean(rec)), 4),
                        "max_human_called_ai": round(float(np.max(fpr)), 4),
                        "accept": op["accept"], "mean_ai_recall_at_accept": round(float(np.mean(rec_op)), 4),
                        "table": v.table})
        log.info("origin candidate %s: %s", c, {k: v_ for k, v_ in results[-1].items() if k != "table"})
    if not results:
        raise ValueError("origin: no candidate recipe could be validated (pairs recipes need artists with both "
                         "paintings and AI imitations)")
    best = max(range(len(results)), key=lambda i: (results[i]["mean_ai_recall_at_accept"], results[i]["auc"]))
    return results[best]["recipe"], results, runs[best]


def operating_point(v: GroupValidation, max_fpr: float = 0.02, max_unsure: float = 0.2,
                    human_groups: list[str] | None = None, reject: float | None = None) -> dict:
    """The band from out-of-group scores.

    `accept`: the lowest P(ai) at which every held-out human group in `human_groups` (default: all)
    has at most `max_fpr` called AI. `reject`: given (e.g. 0.5: `human` only where the head finds
    human the likelier), capped at `accept`; or, when None, the lowest P(ai) such that no held-out
    group has more than `max_unsure` of its rows in [reject, accept).
    """
    hg = [str(g) for g in sorted(set(v.groups)) if g.startswith("human:")]
    if human_groups is not None:
        hg = [g for g in hg if g in set(human_groups)]
    z_acc = max(float(np.quantile(v.scores[v.groups == g], 1 - max_fpr, method="higher")) for g in hg)
    z_acc = np.nextafter(np.float32(z_acc), np.float32(np.inf))
    names = [str(g) for g in sorted(set(v.groups))]

    def band_ok(z: float) -> bool:  # the band only grows as z falls: binary search
        return all(np.mean((v.scores[v.groups == g] >= z) & (v.scores[v.groups == g] < z_acc)) <= max_unsure for g in names)

    cands = np.sort(np.unique(v.scores[v.scores < z_acc]))[::-1] if reject is None else np.zeros(0)
    lo, hi = 0, len(cands)  # cands[:lo] are known to pass
    while lo < hi:
        mid = (lo + hi) // 2
        if band_ok(float(cands[mid])):
            lo = mid + 1
        else:
            hi = mid
    z_rej = float(cands[lo - 1]) if lo else float(z_acc)
    if reject is not None:
        z_rej = min(_logit(reject), float(z_acc))
    accept, reject = 1 / (1 + np.exp(-float(z_acc))), 1 / (1 + np.exp(-z_rej))
    called = v.rates(accept)
    unsure = {g: float(np.mean((v.scores[v.groups == g] >= z_rej) & (v.scores[v.groups == g] < z_acc))) for g in names}
    return {
        "accept": float(accept), "reject": float(reject),
        "max_fpr": max_fpr, "max_unsure": max_unsure, "human_groups": hg,
        "validation": {g: {"n": int(np.sum(v.groups == g)), "called_ai": round(called[g], 4),
                           "unsure": round(unsure[g], 4)} for g in names},
    }


def origin_temperature(v: GroupValidation, per_group: int = 500, seed: int = 0) -> float:
    """The temperature that calibrates P(ai) on the out-of-group scores, every group the same
    number of rows (`per_group`, drawn with replacement from a smaller group), so the probability a
    user sees is right on average over families and kinds the head never saw (a strongly
    regularised head's raw P(ai) hugs 0.5)."""
    from artlens.train.calibrate import fit_temperature

    rng = np.random.default_rng(seed)
    rows = []
    for g in sorted(set(v.groups)):
        idx = np.nonzero(v.groups == g)[0]
        rows.append(rng.choice(idx, per_group, replace=len(idx) < per_group))
    rows = np.concatenate(rows)
    s = v.scores[rows].astype(np.float64)
    return fit_temperature(np.stack([-s / 2, s / 2], axis=1), v.is_ai[rows].astype(int))


def calibrated_band(v: GroupValidation, cfg: dict) -> tuple[float, GroupValidation, dict]:
    """(temperature, the validation on calibrated scores, its operating point) for a recipe's
    `origin` settings (`max_fpr`, `max_unsure`, `reject`): what the shipped band is set from."""
    temperature = origin_temperature(v)
    v = GroupValidation(v.recipe, v.scores / temperature, v.groups, v.is_ai, v.table)
    reject = cfg.get("reject", 0.5)
    op = operating_point(v, float(cfg.get("max_fpr", 0.02)), float(cfg.get("max_unsure", 0.2)),
                         reject=None if reject is None else float(reject))
    return temperature, v, op


def fit_family(Z: np.ndarray, families: np.ndarray, weight_decay: float = 1e-2, folds: int = 5,
               seed: int = 0, content: np.ndarray | None = None) -> dict[str, Any]:
    """Multinomial head over AI rows' families (`unknown` left out): weights, bias, labels, a
    temperature fitted on out-of-fold logits, and the out-of-fold macro-F1 / accuracy.

    `content` (per row: the prompt or imitated artist) keeps one content on one side of every
    fold, so the tiles of one prompt do not vouch for each other."""
    from sklearn.model_selection import StratifiedGroupKFold

    from artlens.train.calibrate import fit_temperature
    from artlens.train.fitting import _logits, fit_linear

    keep = np.array([isinstance(f, str) and f != UNKNOWN_FAMILY for f in families])
    labels = sorted(set(families[keep]))
    counts = {lab: int(np.sum(families[keep] == lab)) for lab in labels}
    labels = [lab for lab in labels if counts[lab] >= folds]  # too few to learn or to validate
    keep &= np.isin(families, labels)
    y = np.array([labels.index(f) for f in families[keep]])
    X = Z[keep]
    oof = np.zeros((len(y), len(labels)), np.float32)
    groups = np.arange(len(y)) if content is None else np.asarray(
        [c if isinstance(c, str) and c else f"#{i}" for i, c in enumerate(content[keep])], dtype=object)
    for tr, te in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(X, y, groups):
        head = fit_linear(X[tr], y[tr], len(labels), weight_decay, class_weight="balanced")
        oof[te] = _logits(head, X[te])
    temperature = fit_temperature(oof, y)
    head = fit_linear(X, y, len(labels), weight_decay, class_weight="balanced")
    lin = head[0]
    pred = oof.argmax(1)
    return {
        "labels": labels, "weight": lin.weight.detach().numpy().astype(np.float32),
        "bias": lin.bias.detach().numpy().astype(np.float32), "temperature": float(temperature),
        "metrics": {"n": int(len(y)), "counts": {lab: counts[lab] for lab in labels},
                    "folds": f"{folds} stratified folds" + ("" if content is None else ", grouped by prompt / artist"),
                    "oof_accuracy": round(float(np.mean(pred == y)), 4),
                    "oof_macro_f1": round(float(macro_f1(y, pred)), 4),
                    "oof_mean_top_prob": round(float(softmax(oof / temperature).max(1).mean()), 4)},
    }


# ----------------------------------------------------------------------------- the model's task
def add_origin(model, X: np.ndarray, df, cfg: dict, progress=None):
    """`model` with its origin task (band, validation) and family task replaced by ones trained
    here on features `X` of the manifest rows `df` (`origin`, `family`, `kind` columns)."""
    from artlens.models.artmodel import ArtModel, TaskConfig

    groups = origin_groups(df)
    have = np.array([g is not None for g in groups])
    if not have.any() or len({str(g).split(":")[0] for g in groups[have]}) < 2:
        raise ValueError("origin: the data needs both human and ai rows in an `origin` column")
    Z = model.normalise(X[have])
    groups = groups[have].astype(str)
    is_ai = np.char.startswith(groups, "ai:")
    kw = {"cap": cfg.get("cap", 1500), "progress": progress}
    max_fpr = float(cfg.get("max_fpr", 0.02))
    content = origin_content(df)[have]
    recipe, candidates, v = select_recipe(Z, is_ai, groups, cfg.get("candidates"), max_fpr=max_fpr, content=content, **kw)
    temperature, v, op = calibrated_band(v, cfg)
    w, b = fit_head(Z, is_ai, groups, recipe, np.ones(len(groups), bool), content)
    band = {"label": "ai", "accept": op["accept"], "reject": op["reject"]}
    if cfg.get("check"):
        band["check"] = {"jpeg_quality": int(cfg["check"]["jpeg_quality"]), "scale": float(cfg["check"]["scale"])}
    tasks = [t for t in model.tasks if t.name not in ("origin", "family")]
    tensors = {k: v_ for k, v_ in model.tensors.items()
               if not k.startswith(("heads.origin.", "heads.family.", "openset.origin.", "openset.family."))}
    tasks.append(TaskConfig(name="origin", labels=["human", "ai"], column="origin", band=band, temperature=temperature))
    # Two logits +-s/2 give softmax P(ai) = sigmoid(s), s = w.x + b.
    tensors["heads.origin.0.weight"] = np.stack([-w / 2, w / 2]).astype(np.float32)
    tensors["heads.origin.0.bias"] = np.array([-b / 2, b / 2], np.float32)
    metrics = {"recipe": recipe, "candidates": candidates, "auc_out_of_group": round(v.auc(), 4),
               "temperature": round(temperature, 4),
               "operating_point": op}
    if cfg.get("family", True):
        fam = np.array(_col(df, "family"), dtype=object)[have]
        fam_ai = fam[is_ai]
        if len({f for f in fam_ai if f and f != UNKNOWN_FAMILY}) >= 2:
            prompts = np.array([p or a for p, a in zip(_col(df, "prompt"), _col(df, "artist"))], dtype=object)[have]
            f = fit_family(Z[is_ai], fam_ai, content=prompts[is_ai])
            tasks.append(TaskConfig(name="family", labels=f["labels"], column="family", temperature=f["temperature"],
                                    attach={"task": "origin", "when": "ai", "key": "family"}))
            tensors["heads.family.0.weight"] = f["weight"]
            tensors["heads.family.0.bias"] = f["bias"]
            metrics["family"] = f["metrics"]
    config = dict(model.config)
    config["tasks"] = [asdict(t) for t in tasks]
    config["metrics"] = {**(config.get("metrics") or {}), "origin": metrics}
    return ArtModel(config, tensors)
