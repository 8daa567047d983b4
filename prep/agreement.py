"""Multi-annotator agreement (the seed's 多人标注、交叉验证).

When the same question (canonical text of all its user turns) was labelled by two or more annotators,
their labels are compared: the category, and the keep/reject verdict where a
``verdict`` column exists. Agreement is Cohen's kappa for two annotators and
Fleiss' kappa (variable raters per item) for more.

Resolution rule, per question and label kind:
- a strict majority wins: rows that agree with it go on (dedup then keeps one of
  them), rows that do not are rejected as ``annotator_disagreement``;
- a majority verdict of "reject" rejects every row of the question as
  ``annotator_rejected``;
- a tie holds every row of the question back as ``annotator_conflict``;
every question with any disagreement is written to ``NAME_conflicts.jsonl`` for review.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from prep.dedup import canonical_text
from prep.records import Conversation, Rejected

KEEP_WORDS = {"keep", "1", "yes", "y", "true", "ok", "保留", "是", "通过", "接受", "采用", "留", "√", "✓", "✔"}
REJECT_WORDS = {"reject", "0", "no", "n", "false", "删除", "删", "否", "拒绝", "不通过", "丢弃", "不保留", "不采用", "弃用",
                "×", "✗", "✘", "x"}


_ONE_OR_ZERO = re.compile(r"^([01])\.0+$")


def verdict_of(value: str | None) -> str | None:
    """Map a free-form keep/reject cell onto "keep", "reject" or None."""
    word = (value or "").strip().lower()
    word = _ONE_OR_ZERO.sub(r"\1", word)  # a number from JSON or a spreadsheet: 1.0 is 1, 0.0 is 0
    return "keep" if word in KEEP_WORDS else "reject" if word in REJECT_WORDS else None


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over items both labelled; None when undefined."""
    if not pairs:
        return None
    observed = sum(a == b for a, b in pairs) / len(pairs)
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(left[k] * right[k] for k in left) / len(pairs) ** 2
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(items: list[list[str]]) -> float | None:
    """Fleiss' kappa over items each rated by two or more raters (counts may vary)."""
    items = [labels for labels in items if len(labels) >= 2]
    if not items:
        return None
    totals: Counter = Counter()
    agreement = []
    for labels in items:
        counts = Counter(labels)
        n = len(labels)
        totals.update(counts)
        agreement.append((sum(c * c for c in counts.values()) - n) / (n * (n - 1)))
    observed = sum(agreement) / len(agreement)
    all_ratings = sum(totals.values())
    expected = sum((c / all_ratings) ** 2 for c in totals.values())
    return None if expected == 1 else (observed - expected) / (1 - expected)


@dataclass
class AgreementResult:
    kept: list[Conversation]
    rejected: list[Rejected] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def _labels(group: list[Conversation], kind: str) -> list[tuple[int, str, str]]:
    """(position, annotator, label) for rows of a group that carry a label of this kind."""
    found = []
    for position, rec in enumerate(group):
        label = rec.category if kind == "category" else verdict_of(rec.meta.get("verdict"))
        if label:
            found.append((position, rec.provenance.annotator, label))
    return found


def _kappa(groups: list[list[Conversation]], kind: str) -> dict:
    per_item = [[label for _, _, label in _labels(g, kind)] for g in groups]
    if not any(per_item):
        return {"method": None, "kappa": None, "items": 0}
    annotators = sorted({rec.provenance.annotator for g in groups for rec in g})
    if len(annotators) == 2:
        by_item = [{a: label for _, a, label in _labels(g, kind)} for g in groups]
        pairs = [(item[annotators[0]], item[annotators[1]]) for item in by_item if len(item) == 2]
        return {"method": "cohen", "kappa": _round(cohen_kappa(pairs)), "items": len(pairs)}
    pairwise = {}
    for a, b in combinations(annotators, 2):
        pairs = []
        for g in groups:
            item = {ann: label for _, ann, label in _labels(g, kind)}
            if a in item and b in item:
                pairs.append((item[a], item[b]))
        if pairs:
            pairwise[f"{a}|{b}"] = _round(cohen_kappa(pairs))
    return {"method": "fleiss", "kappa": _round(fleiss_kappa(per_item)), "items": sum(len(x) >= 2 for x in per_item),
            "pairwise_cohen": pairwise}


def _own_verdicts(records: list[Conversation], cross_labelled: set[int]) -> dict[int, tuple[str, str]]:
    """Rows to drop on their own verdict cell: unknown words anywhere, "reject" where no other annotator voted."""
    drop: dict[int, tuple[str, str]] = {}
    for index, rec in enumerate(records):
        cell = rec.meta.get("verdict")
        if cell and str(cell).strip() and verdict_of(cell) is None:
            drop[index] = ("unknown_verdict", f"verdict '{cell}' is neither a keep word ({', '.join(sorted(KEEP_WORDS))}) "
                                              f"nor a reject word ({', '.join(sorted(REJECT_WORDS))})")
        elif index not in cross_labelled and verdict_of(cell) == "reject":
            drop[index] = ("annotator_rejected", f"rejected by {rec.provenance.annotator or 'its annotator'}")
    return drop


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def resolve(records: list[Conversation]) -> AgreementResult:
    """Compute agreement on multiply-labelled questions and apply the resolution rule.

    A row's own verdict counts even where nobody else labelled its question: a lone "reject" is rejected
    (``annotator_rejected``), and a verdict cell that is neither a keep nor a reject word is rejected
    (``unknown_verdict``) rather than read as no verdict, which would train on it.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, rec in enumerate(records):
        if rec.provenance.annotator:
            groups[canonical_text(rec.user_text())].append(index)  # the whole dialogue: many open with 你好
    multi = {key: idx for key, idx in groups.items() if len({records[i].provenance.annotator for i in idx}) >= 2}
    drop = _own_verdicts(records, {i for idx in multi.values() for i in idx})
    conflicts = []
    for key, indices in multi.items():
        group = [records[i] for i in indices]
        for kind in ("category", "verdict"):
            labels = _labels(group, kind)
            votes = Counter(label for _, _, label in labels)
            if len(votes) < 1 or (len(votes) == 1 and kind == "category"):
                continue
            (top, top_count), *rest = votes.most_common()
            tie = bool(rest) and rest[0][1] == top_count
            if kind == "verdict" and not tie and top == "reject":
                for i in indices:
                    drop.setdefault(i, ("annotator_rejected", f"majority of annotators rejected it ({dict(votes)})"))
            elif tie:
                for i in indices:
                    drop.setdefault(i, ("annotator_conflict", f"{kind} tie between annotators ({dict(votes)})"))
            else:
                for position, annotator, label in labels:
                    if label != top:
                        drop.setdefault(indices[position], ("annotator_disagreement", f"{kind} '{label}' by {annotator} lost to '{top}'"))
            if len(votes) > 1:
                conflicts.append({
                    "question": group[0].first_question,
                    "kind": kind,
                    "labels": [{"annotator": a, "label": l, "source": group[p].provenance.source, "location": group[p].provenance.location}
                               for p, a, l in labels],
                    "resolution": "tie: held back for review" if tie else f"majority: {top}",
                })
    result = AgreementResult([rec for i, rec in enumerate(records) if i not in drop], conflicts=conflicts)
    for i, (reason, detail) in sorted(drop.items()):
        result.rejected.append(Rejected(reason, records[i].provenance, detail=detail, raw=records[i].first_question[:500]))
    if not multi:
        result.stats = {"items": 0}
        return result
    multi_groups = [[records[i] for i in idx] for idx in multi.values()]
    result.stats = {
        "items": len(multi),
        "annotators": sorted({records[i].provenance.annotator for idx in multi.values() for i in idx}),
        "category": _kappa(multi_groups, "category"),
        "verdict": _kappa(multi_groups, "verdict"),
        "conflicts": len(conflicts),
        "rule": "strict majority wins; a tie holds the question back for review; a majority 'reject' verdict drops it",
    }
    return result
