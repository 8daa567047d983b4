"""Reviewed answers (``prep review``'s feedback) in ``prep build``: withdrawals, and answers hand-labelled rows overrule.

A review can take back what earlier reviews accepted for a question (the ``withdraw`` decision): it writes a
withdrawal line, the dialogue with an empty answer and ``"withdraw": true``. ``apply_withdrawals`` drops every
reviewed answer to the same dialogue (history and question) reviewed before the withdrawal, and the withdrawal line
itself, each rejected with its reason; an accept made after the withdrawal trains again.
"""

from __future__ import annotations

from collections import defaultdict

from prep.clean import StepResult, normalise_text
from prep.dedup import canonical_text
from prep.records import Conversation, Rejected

WITHDRAW_KEY = "withdraw"


def is_withdrawal(rec: Conversation) -> bool:
    """Whether a record is a review's withdrawal line rather than an answer to train."""
    return rec.provenance.origin == "feedback" and rec.meta.get(WITHDRAW_KEY) is True


def _dialogue_key(rec: Conversation) -> tuple[str, ...]:
    """The dialogue an answer answers: every turn but the last (the answer), as canonical text after the build's
    normalisation (this step runs before it: ＡＰＰ in one review and APP in another are one question)."""
    return tuple(canonical_text(normalise_text(turn.content)) for turn in rec.turns[:-1])


def undated_withdrawals(records: list[Conversation]) -> str | None:
    """A warning for withdrawals whose ``reviewed_at`` is not a time (hand-edited): they cannot say which reviews came
    before them, so they withdraw nothing."""
    undated = [rec for rec in filter(is_withdrawal, records) if rec.provenance.created_timestamp() is None]
    if not undated:
        return None
    where = ", ".join(sorted({f"{rec.provenance.source} {rec.provenance.location}" for rec in undated})[:3])
    return (f"{len(undated)} withdrawal{'s' * (len(undated) != 1)} withdrew nothing: reviewed_at is not an ISO time "
            f"({where}); write it as prep review does, e.g. 2026-01-03T08:00:00.000+08:00.")


def apply_withdrawals(records: list[Conversation]) -> StepResult:
    """Drop the withdrawal lines and the reviewed answers they withdraw (see the module docstring)."""
    withdrawals: dict[tuple[str, ...], list[Conversation]] = defaultdict(list)
    for rec in filter(is_withdrawal, records):
        withdrawals[_dialogue_key(rec)].append(rec)
    if not withdrawals:
        return StepResult(records)
    kept, rejected, withdrawn = [], [], defaultdict(int)
    for rec in records:
        if is_withdrawal(rec):
            continue
        withdrawal = _withdrawn_by(rec, withdrawals)
        if withdrawal is None:
            kept.append(rec)
            continue
        withdrawn[id(withdrawal)] += 1
        where = withdrawal.provenance
        rejected.append(Rejected("withdrawn_in_review", rec.provenance, twin=where, raw=rec.first_question[:500],
                                 detail=f"withdrawn by {where.annotator or 'a reviewer'} at {where.created} ({where.source} {where.location})"))
    for group in withdrawals.values():
        for rec in group:
            count = withdrawn[id(rec)]
            rejected.append(Rejected("review_withdrawal", rec.provenance, raw=rec.first_question[:500],
                                     detail=f"a withdrawal, not an answer: it withdrew {count} earlier reviewed answer{'s' * (count != 1)}"))
    return StepResult(kept, rejected)


def _withdrawn_by(rec: Conversation, by_dialogue: dict[tuple[str, ...], list[Conversation]]) -> Conversation | None:
    """The newest withdrawal of ``rec``'s dialogue that takes it back: a reviewed answer of another review, reviewed
    before it (an answer without a readable review time counts as the oldest). Reviews are timed to the millisecond,
    so an accept made right after a withdrawal (a script's next command) is not taken back with it. Only reviewed
    answers are keyed (the other rows of a large build are not)."""
    withdrawals = by_dialogue.get(_dialogue_key(rec), []) if rec.provenance.origin == "feedback" else []
    if not withdrawals:
        return None
    reviewed = rec.provenance.created_timestamp()
    later = [(when, w) for w in withdrawals if (when := w.provenance.created_timestamp()) is not None
             and w.provenance.source != rec.provenance.source and (reviewed is None or reviewed < when)]
    return max(later, key=lambda pair: pair[0])[1] if later else None


def overruled_by_labelled(duplicates: list[Rejected]) -> int:
    """Reviewed answers dropped as duplicates of hand-labelled rows (which win in dedup)."""
    return sum(item.provenance.origin == "feedback" and item.twin is not None and item.twin.origin == "labelled"
               for item in duplicates)
