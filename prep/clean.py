"""Cleaning steps: each a pure function over records returning kept + rejected-with-reason.

Steps, in pipeline order: ``normalise`` -> ``validate`` -> ``scrub`` ->
``crisis_rule``. Each returns a :class:`StepResult`; none mutates its input.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace

from prep.parallel import MIN_PARALLEL, map_chunks
from prep.pii import scrub_pii
from prep.records import Conversation, Rejected, Turn
from prep.safety import detect_crises, prepare_detector, refers_to_help
from prep.textformat import format_text


@dataclass
class StepResult:
    """What one cleaning step kept, what it rejected, and what it counted."""

    kept: list[Conversation]
    rejected: list[Rejected] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Limits:
    """Length limits in characters (token limits come with the tokenizer, later)."""

    max_turn_chars: int = 4000
    max_total_chars: int = 12000
    min_answer_chars: int = 2


# Full-width punctuation that Chinese text uses on purpose: NFKC would turn it into ASCII.
_KEEP_FULLWIDTH = {chr(c) for c in range(0xFF01, 0xFF5F)} - {chr(c) for c in range(0xFF10, 0xFF1A)} - {
    chr(c) for c in range(0xFF21, 0xFF3B)} - {chr(c) for c in range(0xFF41, 0xFF5B)}
_ZERO_WIDTH = re.compile(r"[\u200b-\u200f\u2060\ufeff]")
_LEFTOVER_TAGS = re.compile(r"</?s>|<\|(?:begin_of_text|end_of_text|eot_id|start_header_id|end_header_id|im_start|im_end)\|>|\[/?INST\]")
_ROLE_PREFIX = re.compile(r"^\s*(?:\*\*|__)?(?:Assistant|Human|回答|答|回复|问题|问|A|Q)(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*", re.IGNORECASE)
# A teacher's "as an AI" opener, only where it is one: at the start of a line (after a list bullet), or after
# punctuation (首先，作为一个AI，… / 你好～作为AI，…), and followed by a comma or by 我 / I. 作为AI工程师, "as an aid" and
# "Speaking as an AI, I" are not, and user turns are never touched. The lead is kept.
_AI_DISCLAIMER = re.compile(
    r"(?P<lead>(?:^|\n)[ \t]*(?:[-*•][ \t]*)?|[。！？!?.;；：:，,…～~、][ \t]*)(?:(?:作为|身为)(?:一[个名位])?(?:AI语言模型|AI助手|人工智能(?:语言)?(?:模型|助手)|语言模型|人工智能|AI)(?:[，,]|(?=我))"
    r"|As an AI(?: language model| assistant)?(?:,\s*|\s+(?=I\b)))",
    re.IGNORECASE,
)
_SPACES = re.compile(r"[ \t\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_REPEATED_CHAR = re.compile(r"(.)\1{29,}", re.DOTALL)
_REPEATED_CHUNK = re.compile(r"(.{2,10}?)\1{14,}", re.DOTALL)


# Characters NFKC would spell out in ASCII although Chinese text uses them on purpose: the ellipsis (…… would
# become ......) and enclosed numbers (①, ⑴, ㈠ would become 1, (1), (一)).
_KEEP_AS_WRITTEN = {"\u2026", "\u2025"} | {chr(c) for c in range(0x2460, 0x2500)} | {chr(c) for c in range(0x3200, 0x3300)}
# They are parked in the Private Use Area while NFKC runs, then put back.
_PARK = {ord(ch): 0xF0000 + ord(ch) for ch in _KEEP_FULLWIDTH | _KEEP_AS_WRITTEN}
_UNPARK = {v: k for k, v in _PARK.items()}


def _excerpt(rec: Conversation) -> str:
    """What a rejected row keeps to be looked at: every turn (the answer that lacked a referral, the repetitive one), in
    the <s>Human: text format prep build reads back; cut at 2,000 characters when written."""
    return format_text(rec.turns)


def nfkc_keep_chinese_punctuation(text: str) -> str:
    """NFKC (full-width letters and digits, compatibility forms) that leaves ，！？：（）, …… and ① alone."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text.translate(_PARK)).translate(_UNPARK)


def normalise_text(text: str, answer: bool = False) -> str:
    """NFKC except Chinese full-width punctuation, no zero-width characters, tidy whitespace, no artefacts;
    in an ``answer``, no "as an AI" opener either."""
    text = nfkc_keep_chinese_punctuation(text)
    text = _ZERO_WIDTH.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _LEFTOVER_TAGS.sub("", text)
    text = _ROLE_PREFIX.sub("", text)  # first: 答：作为一个AI助手，… opens with the disclaimer once the label is gone
    if answer:
        text = _AI_DISCLAIMER.sub(r"\g<lead>", text)
    lines = [line.strip() for line in _SPACES.sub(" ", text).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def normalise(records: list[Conversation]) -> StepResult:
    """Normalise every turn and the system prompt."""
    kept = [
        replace(
            rec,
            turns=[Turn(t.role, normalise_text(t.content, answer=t.role == "assistant")) for t in rec.turns],
            system=normalise_text(rec.system) if rec.system else rec.system,
        )
        for rec in records
    ]
    return StepResult(kept)


def _problem(rec: Conversation, limits: Limits) -> tuple[str, str] | None:
    if not rec.turns:
        return "empty", "no turns"
    if any(not t.content for t in rec.turns):
        return "empty_turn", "a turn has no text"
    expected = ["user", "assistant"] * (len(rec.turns) // 2 + 1)
    if [t.role for t in rec.turns] != expected[: len(rec.turns)] or rec.turns[-1].role != "assistant":
        return "bad_roles", "roles must alternate user/assistant and end on the assistant"
    if len(rec.final_answer) < limits.min_answer_chars:
        return "too_short", f"answer under {limits.min_answer_chars} characters"
    longest = max(len(t.content) for t in rec.turns)
    if longest > limits.max_turn_chars:
        return "too_long", f"a turn has {longest} characters (limit {limits.max_turn_chars})"
    total = sum(len(t.content) for t in rec.turns)
    if total > limits.max_total_chars:
        return "too_long", f"{total} characters in all (limit {limits.max_total_chars})"
    for turn in rec.turns:
        if _REPEATED_CHAR.search(turn.content) or _REPEATED_CHUNK.search(turn.content):
            return "repetition", "the same characters repeated many times"
    return None


def validate(records: list[Conversation], limits: Limits = Limits()) -> StepResult:
    """Reject empty, badly ordered, over-long and repetitive conversations."""
    result = StepResult([])
    for rec in records:
        problem = _problem(rec, limits)
        if problem:
            result.rejected.append(Rejected(problem[0], rec.provenance, detail=problem[1], raw=_excerpt(rec)))
        else:
            result.kept.append(rec)
    return result


def token_limit(records: list[Conversation], token_counts: list[int], cutoff_len: int) -> StepResult:
    """Reject conversations longer than ``cutoff_len`` tokens: LLaMA-Factory would silently cut them. Kept ones
    carry their count (``meta["tokens"]``) for the report."""
    result = StepResult([])
    for rec, count in zip(records, token_counts):
        if count > cutoff_len:
            result.rejected.append(Rejected("too_many_tokens", rec.provenance, detail=f"{count} tokens (cutoff_len {cutoff_len})", raw=_excerpt(rec)))
        else:
            result.kept.append(replace(rec, meta={**rec.meta, "tokens": count}))
    return result


def scrub(records: list[Conversation]) -> StepResult:
    """Replace personal data in every turn and the system prompt with placeholders, counting each kind."""
    result = StepResult([])
    for rec in records:
        turns = []
        for turn in rec.turns:
            text, counts = scrub_pii(turn.content)
            result.counts.update(counts)
            turns.append(Turn(turn.role, text))
        system, counts = scrub_pii(rec.system) if rec.system else (rec.system, Counter())
        result.counts.update(counts)
        result.kept.append(replace(rec, turns=turns, system=system))
    return result


def crisis_rule(records: list[Conversation]) -> StepResult:
    """Keep a crisis conversation only if every answer after a crisis message refers to help."""
    result = StepResult([])
    user_turns = [(n, i) for n, rec in enumerate(records) for i, turn in enumerate(rec.turns) if turn.role == "user"]
    verdicts = detect_crises([records[n].turns[i].content for n, i in user_turns])
    crisis_turns: dict[int, list[int]] = {}
    for (n, i), verdict in zip(user_turns, verdicts):
        if verdict.crisis:
            crisis_turns.setdefault(n, []).append(i)
    for n, rec in enumerate(records):
        crisis_at = crisis_turns.get(n, [])
        unsafe = any(i + 1 < len(rec.turns) and not refers_to_help(rec.turns[i + 1].content) for i in crisis_at)
        if unsafe:
            result.rejected.append(
                Rejected("crisis_without_referral", rec.provenance, detail="a crisis message is answered without a referral", raw=_excerpt(rec))
            )
        else:  # marked, so the report counts the crisis conversations that survive dedup and agreement too
            result.kept.append(replace(rec, meta={**rec.meta, "crisis": True}) if crisis_at else rec)
    return result


def _chain(records: list[Conversation], limits: Limits) -> StepResult:
    """normalise -> validate -> scrub -> crisis_rule over one chunk of records."""
    total = StepResult(records)
    for step in (normalise, lambda recs: validate(recs, limits), scrub, crisis_rule):
        result = step(total.kept)
        total = StepResult(result.kept, total.rejected + result.rejected, total.counts + result.counts)
    return total


def run_steps(records: list[Conversation], limits: Limits = Limits(), workers: int | None = None,
              min_parallel: int = MIN_PARALLEL) -> StepResult:
    """The per-record steps, in worker processes for large inputs (the steps are pure, so chunks are independent).

    Kept records stay in input order; rejected ones are grouped by chunk.
    """
    prepare_detector()  # here, once: forked workers inherit it instead of each training it
    results = map_chunks(_chain, records, limits, workers=workers, min_parallel=min_parallel, chunks_per_worker=2)
    if len(results) == 1:
        return results[0]
    return StepResult([r for res in results for r in res.kept], [r for res in results for r in res.rejected],
                      sum((res.counts for res in results), Counter()))
