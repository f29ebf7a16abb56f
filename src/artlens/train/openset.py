"""Open-set rules: is this painting by one of the classes a head knows at all?

A head trained on 25 artists names one of them for any painting; an open-set rule sends paintings
that look like none of them to `unknown artist`. Each method gives a *known score* per image
(higher = more like a known class), and a rule keeps the head's answer when the score is at or
above a threshold. The scores are `ArtModel.known_scores`, the ones `ArtModel.open_set_reject` applies
at prediction; this module only fits the rules (thresholds), in the form stored in `TaskConfig.unknown`:

| method     | known score                                   | rule rejects when          |
|------------|-----------------------------------------------|----------------------------|
| `max_prob` | top softmax probability (temperature applied) | prob < threshold           |
| `energy`   | T * logsumexp(z / T) of the raw logits        | energy (= -score) > threshold |
| `centroid` | max cosine to the classes' embedding centroids | cosine < threshold        |
| `background` | best known class's share of softmax([logits, background logits]) | share < threshold |

The centroid rule needs its centroids in the model as the tensor `openset.<task>.centroids`; the
background rule linear "someone else" logits trained beside the head on paintings by other
artists (outlier exposure, Hendrycks et al. 2019), as `openset.<task>.background.weight` (n, dim)
and `.bias` (n,) over the model's standardised features: one row per background class (the
artist task gives each kept-out artist with enough paintings a class of its own, the rest share one).
Thresholds are chosen on validation data that holds out whole classes (unknown artists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from artlens import metrics as M
from artlens.metrics import l2_normalize as l2n
from artlens.models.artmodel import ArtModel

METHODS = ArtModel.OPEN_SET_METHODS
DEFAULT_LABEL = "unknown artist"


def class_centroids(features: np.ndarray, y: Sequence[int], n_classes: int) -> np.ndarray:
    """`(n_classes, dim)` unit vectors: the mean direction of each class's (L2-normalised) embeddings."""
    x = l2n(features)
    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    for c in range(n_classes):
        members = x[y == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no training embeddings: cannot build its centroid")
        out[c] = members.mean(axis=0)
    return l2n(out)


def rule_threshold(method: str, score_threshold: float) -> float:
    """The threshold stored in the rule for a known-score threshold (energy rules compare -score)."""
    return -float(score_threshold) if method == "energy" else float(score_threshold)


def make_rule(method: str, score_threshold: float, label: str = DEFAULT_LABEL, **extra) -> dict:
    """A `TaskConfig.unknown` rule that keeps rows whose known score is >= `score_threshold`."""
    if method not in METHODS:
        raise ValueError(f"unknown open-set method {method!r}")
    rule = {"method": method, "threshold": round(rule_threshold(method, score_threshold), 6), "label": label}
    if method == "energy":
        rule["energy_temperature"] = float(extra.pop("energy_temperature", 1.0))
    rule.update(extra)
    return rule


@dataclass
class OperatingPoint:
    """Rates of a rule at one threshold (`keep` = score >= threshold)."""

    threshold: float  # in known-score space
    known_accepted: float  # known-class paintings given a name (any name)
    known_correct: float  # known-class paintings given their correct name
    known_misattributed: float  # known-class paintings given a wrong known name
    unknown_rejected: float  # unknown-class paintings called `unknown`
    false_attribution_rate: float  # unknown-class paintings given a known name (1 - unknown_rejected)
    n_known: int = 0
    n_unknown: int = 0
    criterion: str = ""

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def operating_point(
    threshold: float, known: np.ndarray, correct: np.ndarray, unknown: np.ndarray, criterion: str = ""
) -> OperatingPoint:
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    correct = np.asarray(correct, dtype=bool)
    keep_k = known >= threshold
    rej_u = unknown < threshold
    nk, nu = max(len(known), 1), max(len(unknown), 1)
    return OperatingPoint(
        threshold=float(threshold),
        known_accepted=float(keep_k.sum() / nk),
        known_correct=float((keep_k & correct).sum() / nk),
        known_misattributed=float((keep_k & ~correct).sum() / nk),
        unknown_rejected=float(rej_u.sum() / nu),
        false_attribution_rate=float(1.0 - rej_u.sum() / nu) if len(unknown) else float("nan"),
        n_known=int(len(known)),
        n_unknown=int(len(unknown)),
        criterion=criterion,
    )


def _rates(cuts: np.ndarray, known: np.ndarray, correct: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known correct and kept, unknown rejected) shares for every cut (keep = score >= cut)."""
    good = np.sort(known[correct])
    unk = np.sort(unknown)
    kc = (len(good) - np.searchsorted(good, cuts, side="left")) / max(len(known), 1)
    ur = np.searchsorted(unk, cuts, side="left") / max(len(unk), 1)
    return kc, ur


def choose_threshold(
    known: np.ndarray,
    correct: np.ndarray,
    unknown: np.ndarray,
    *,
    target_known: float = 0.8,
    target_unknown: float | None = None,
) -> OperatingPoint:
    """The threshold of a known score, chosen on validation data.

    (To aim at the share of known paintings that keep *a* name rather than their correct one,
    pass `correct` all True.)

    `known`/`correct`: scores of known-class paintings and whether the head names them correctly;
    `unknown`: scores of paintings by held-out classes. Cuts lie half-way between neighbouring
    scores (never on a sample). In order of preference:

    1. `both`: when a cut keeps >= `target_known` of the known paintings with their correct name
       *and* rejects >= `target_unknown` of the unknown ones, the cut with the largest margin over
       both targets (max of min(slack_known, slack_unknown)): the most robust to a new sample;
    2. `closest`: when each target can be met but not both at once, the cut with the smallest
       shortfall (the same max of min(slack_known, slack_unknown)), so neither target is given up;
    3. `known` (no `target_unknown`): among cuts that meet `target_known`, the one maximising
       known-correct + unknown-rejected (ties: the middle one), so no threshold is raised further
       than rejection repays;
    4. `balanced`: when even the head's accuracy is under `target_known`, the same sum over all cuts.
    """
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(known) == 0:
        raise ValueError("choosing a threshold needs known-class validation paintings")
    s = np.unique(np.r_[known, unknown])
    span = max(float(s[-1] - s[0]), 1e-6)
    cuts = np.r_[s[0] - 1e-3 * span, (s[1:] + s[:-1]) / 2, s[-1] + 1e-3 * span]
    kc, ur = _rates(cuts, known, correct, unknown)
    eps = 1e-9
    feasible = kc >= target_known - eps
    if target_unknown is not None and len(unknown):
        margin = np.minimum(kc - target_known, ur - target_unknown)
        both = feasible & (ur >= target_unknown - eps)
        if both.any() or feasible.any():
            # The largest min(slack) meets both targets whenever some cut does; when none does it is
            # the cut closest to both (smallest shortfall), rather than one giving up the unknown target.
            i = _middle(np.flatnonzero(margin >= margin.max() - eps))
            crit = (f"both: known_correct>={target_known:g}, unknown_rejected>={target_unknown:g}" if both.any() else
                    f"closest: no cut meets both targets, max min(known_correct-{target_known:g}, unknown_rejected-{target_unknown:g})")
            return operating_point(float(cuts[i]), known, correct, unknown, criterion=crit)
    total = kc + ur
    if feasible.any():
        total = np.where(feasible, total, -np.inf)
        crit = f"known: known_correct>={target_known:g}, max known_correct+unknown_rejected"
    else:
        crit = "balanced: max known_correct+unknown_rejected"
    i = _middle(np.flatnonzero(total >= total.max() - eps))
    return operating_point(float(cuts[i]), known, correct, unknown, criterion=crit)



def balanced_point(known: np.ndarray, correct: np.ndarray, unknown: np.ndarray) -> float:
    """The best any threshold does on both at once: max over cuts of min(share of known paintings
    kept with their correct name, share of unknown ones rejected). Threshold-free, like AUROC, but
    bounded by the head's accuracy: what the artist task's candidates are compared on."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    s = np.unique(np.r_[known, unknown])
    cuts = np.r_[s[0] - 1.0, (s[1:] + s[:-1]) / 2, s[-1] + 1.0]
    kc, ur = _rates(cuts, known, np.asarray(correct, bool), unknown)
    return float(np.minimum(kc, ur).max())

def _middle(idx: np.ndarray) -> int:
    return int(idx[len(idx) // 2])


def calibrate_scores(
    known_scores_by_method: dict[str, np.ndarray],
    correct: np.ndarray,
    unknown_scores_by_method: dict[str, np.ndarray],
    *,
    methods: Sequence[str] = METHODS,
    target_known: float = 0.8,
    target_unknown: float | None = 0.8,
    known_rate: str = "accepted",
    label: str = DEFAULT_LABEL,
    select_by: str = "auroc",
) -> tuple[str, dict, dict[str, dict]]:
    """The open-set choice from known scores already computed: `(best method, its rule, per-method
    {"auroc", "operating_point"})`.

    `known_scores_by_method[m]`: scores of validation paintings of the head's classes (`correct`:
    whether the head names each one correctly); `unknown_scores_by_method[m]`: scores of paintings
    by classes the head never saw (whole artists held out). They may come from one held-out split or
    be out-of-fold scores of a cross-fitting (`artlens.train.artist`). `select_by` is `auroc`
    (threshold-free separation), `balanced` (`balanced_point`: the best min(known kept with their
    correct name, unknown rejected) any threshold reaches, the two targets at once) or
    `unknown_rejected` (rejection at the chosen threshold).
    `known_rate`: what `target_known` counts, `accepted` (known paintings the rule leaves a name:
    the rule's own cost) or `correct` (known paintings keeping their correct name, bounded by the
    head's accuracy).
    """
    if known_rate not in ("correct", "accepted"):
        raise ValueError(f"known_rate must be 'correct' or 'accepted', not {known_rate!r}")
    if select_by not in ("auroc", "balanced", "unknown_rejected"):
        raise ValueError(f"select_by must be auroc, balanced or unknown_rejected, not {select_by!r}")
    correct = np.asarray(correct, dtype=bool)
    target_correct = correct if known_rate == "correct" else np.ones_like(correct)
    sk, su = known_scores_by_method, unknown_scores_by_method
    results: dict[str, dict] = {}
    for m in methods:
        if m not in sk or m not in su:
            continue
        if len(su[m]) == 0:
            raise ValueError("open-set calibration needs validation paintings of unknown classes")
        op = choose_threshold(sk[m], target_correct, su[m], target_known=target_known, target_unknown=target_unknown)
        if known_rate == "accepted":  # report the real correct-name share at that cut
            crit = op.criterion.replace("known_correct>=", "known_named>=").replace("max known_correct+", "max known_named+")
            crit = crit.replace("min(known_correct-", "min(known_named-")
            op = operating_point(op.threshold, sk[m], correct, su[m], criterion=crit)
        results[m] = {"auroc": round(M.auroc(sk[m], su[m]), 6), "balanced": round(balanced_point(sk[m], correct, su[m]), 6),
                      "operating_point": op.as_dict()}
    if not results:
        raise ValueError("no open-set method could be scored (the centroid method needs centroids)")

    def key(m: str) -> tuple:
        r = results[m]
        op = r["operating_point"]
        if select_by == "balanced":
            return (r["balanced"], r["auroc"])
        return (r["auroc"], op["unknown_rejected"]) if select_by == "auroc" else (op["unknown_rejected"], r["auroc"])

    best = max(results, key=key)
    rule = make_rule(best, results[best]["operating_point"]["threshold"], label=label)
    return best, rule, results

