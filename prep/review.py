"""``prep review``: a person picks the good candidate answers or writes a corrected one.

Accepted answers go to ``data/feedback/REVIEWER_TIME.jsonl`` as alpaca items
with ``origin: feedback``, the reviewer, the time and the candidate they came
from; ``prep build`` reads them as hand-labelled data with provenance
``feedback``. Decisions come from the terminal, or from a JSONL file for
scripts: ``{"case_id": "C001", "accept": [0, 2]}`` or
``{"case_id": "C001", "correction": "..."}`` (or ``"skip": true``). A later review of the same case wins
over an earlier one in ``prep build`` (it keeps the newest reviewed answer of a question, and every answer that
one review accepted). ``{"case_id": "C001", "withdraw": true}`` takes back every answer earlier reviews accepted
or wrote for the question: it writes a withdrawal line that ``prep build`` applies (``prep.feedback``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from prep.errors import PrepError
from prep.fsutil import atomic_write_text
from prep.prompts import DEFAULT_SYSTEM_PROMPT
from prep.readers.decode import json_lines
from prep.resources import feedback_dir
from prep.safety import crises_in_dialogues, ensure_referral

FEEDBACK_DIR = feedback_dir()
CANDIDATE_KEYS = {"case_id": str, "question": str, "sample": int, "reply_guarded": str}
DECISION_KEYS = ("case_id", "accept", "correction", "skip", "withdraw")
DECISION_FORMS = ('{"case_id": ..., "accept": [0, 2]}, {"case_id": ..., "correction": "..."}, {"case_id": ..., "skip": true} '
                  'or {"case_id": ..., "withdraw": true}')


def load_candidates(path: Path) -> dict[str, list[dict]]:
    """Candidates grouped by case, in file order."""
    groups: dict[str, list[dict]] = {}
    for number, candidate in json_lines(path, "candidates file"):
        if not (isinstance(candidate, dict) and all(_is(candidate.get(k), t) for k, t in CANDIDATE_KEYS.items())
                and _is_history(candidate.get("history"))):
            raise PrepError(f"{path}: line {number} is not a candidate (JSON with case_id, question, sample and "
                            "reply_guarded, and a history of [question, answer] pairs of text if any, as prep eval writes).")
        group = groups.setdefault(candidate["case_id"], [])
        if any(c["sample"] == candidate["sample"] or c["question"] != candidate["question"] for c in group):
            raise PrepError(f"{path}: line {number} repeats case {candidate['case_id']} (sample {candidate['sample']}, or "
                            "another question under the same id); expected the candidates of one prep eval.")
        group.append(candidate)
    if not groups:
        raise PrepError(f"{path}: holds no candidates; expected the candidates.jsonl of a prep eval.")
    return groups


def _is_history(history: object) -> bool:
    return history is None or (isinstance(history, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(text, str) for text in pair) for pair in history))


def _is(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def load_decisions(path: Path, groups: dict[str, list[dict]]) -> dict[str, dict]:
    """Decisions by case, each checked against the candidates it decides on."""
    decisions = {}
    for number, decision in json_lines(path, "--accept"):
        problem = _decision_problem(decision, groups)
        if not problem and decision["case_id"] in decisions:  # which one was meant? (the last silently won)
            problem = f"decides on case {decision['case_id']} a second time"
        if problem:
            raise PrepError(f"{path}: line {number} {problem}; expected {DECISION_FORMS}.")
        decisions[decision["case_id"]] = decision
    return decisions


def _decision_problem(decision: object, groups: dict[str, list[dict]]) -> str | None:
    if isinstance(decision, json.JSONDecodeError):
        return f"is not valid JSON ({decision.msg}, column {decision.colno})"
    if not isinstance(decision, dict):
        return f"is a JSON {type(decision).__name__}, not an object"
    unknown = sorted(set(decision) - set(DECISION_KEYS))
    if unknown:  # a misspelt key (acept, corection) silently skipped the case
        return f"has the unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} (known: {', '.join(DECISION_KEYS)})"
    if not isinstance(decision.get("case_id"), str):
        return f"has case_id {decision.get('case_id')!r}, not the text of a case id"
    for flag in ("skip", "withdraw"):
        if not isinstance(decision.get(flag, False), bool):
            return f"has {flag} {decision[flag]!r}, not true or false"
    if decision["case_id"] not in groups:
        return f"decides on case {decision['case_id']}, which the candidates file does not have"
    accept, correction = decision.get("accept"), decision.get("correction")
    if accept is not None and not (isinstance(accept, list) and all(_is(n, int) for n in accept)):
        return f"has accept {accept!r}, not a list of sample numbers"
    samples = {c["sample"] for c in groups[decision["case_id"]]}
    if accept and not set(accept) <= samples:
        return f"accepts samples {sorted(set(accept) - samples)} that case {decision['case_id']} does not have ({sorted(samples)})"
    if correction is not None and not isinstance(correction, str):
        return f"has a correction that is not text ({type(correction).__name__})"
    given = [key for key in DECISION_KEYS[1:] if decision.get(key) not in (None, False, [])]
    if len(given) > 1:  # (the correction silently won over the accepted samples)
        return f"gives {' and '.join(given)} at once; one decision per case"
    return None


def ask_terminal(case_id: str, candidates: list[dict]) -> dict:
    """Show the K answers of one question and read the reviewer's decision."""
    print(f"\n=== {case_id} [{candidates[0].get('kind', '')}]")
    for question, answer in candidates[0].get("history") or []:
        print(f"    来访者: {question}\n    助手: {answer}")
    print(f"    来访者: {candidates[0]['question']}")
    if candidates[0].get("reference"):
        print(f"    参考答案: {candidates[0]['reference']}")
    for candidate in candidates:
        print(f"  [{candidate['sample']}] {candidate['reply_guarded']}")
    samples = {c["sample"] for c in candidates}
    while True:
        answer = input("accept which (e.g. 0,2), e = write a correction, s = skip, "
                       "w = withdraw the answers earlier reviews kept for this question, q = quit: ").strip().lower()
        if answer == "q":
            return {"quit": True}
        if answer == "w":
            return {"withdraw": True}
        if answer == "s" or not answer:
            return {"skip": True}
        if answer == "e":
            text = input("corrected answer: ").strip()
            return {"correction": text} if text else {"skip": True}
        if re.fullmatch(r"\d+(\s*,\s*\d+)*", answer) and {int(x) for x in answer.split(",")} <= samples:
            return {"accept": [int(x) for x in answer.split(",")]}
        print(f"please answer with sample numbers ({', '.join(map(str, sorted(samples)))}), e, s, w or q")


def review(candidates_path: Path, reviewer: str, decisions_path: Path | None = None, out_dir: Path = FEEDBACK_DIR,
           ask: Callable[[str, list[dict]], dict] = ask_terminal) -> tuple[Path | None, dict]:
    """Apply decisions to the candidates; write accepted answers as feedback data. ``counts`` counts cases
    (accepted, corrected, skipped) and the accepted answers.

    An interactive review stopped by end of input or Ctrl-C keeps the decisions made so far, as ``q`` does
    (``counts["interrupted"]``). A correction to a crisis gets the hotline referral, as accepted answers have it. A
    withdrawal is a line with an empty answer and ``withdraw: true`` (``counts["withdrawn"]`` counts them).
    """
    if not reviewer.strip():
        raise PrepError("--reviewer is required: every accepted answer records who accepted it.")
    groups = load_candidates(candidates_path)
    decisions = load_decisions(decisions_path, groups) if decisions_path else None
    now = datetime.now(timezone.utc)
    rows, counts = [], {"accepted": 0, "answers": 0, "corrected": 0, "withdrawn": 0, "skipped": 0, "referral_added": 0,
                       "interrupted": False}
    for case_id, candidates in groups.items():
        try:
            decision = decisions.get(case_id, {"skip": True}) if decisions is not None else ask(case_id, candidates)
        except (EOFError, KeyboardInterrupt):
            counts["interrupted"] = True
            break
        if decision.get("quit"):
            break
        first = candidates[0]
        # Asked with the default prompt: none written, so that prep build --system gives the rows the run's prompt.
        system = first.get("system") if first.get("system") != DEFAULT_SYSTEM_PROMPT else None
        base = {"input": "", **({"system": system} if system else {}), "history": first.get("history") or [],
                "origin": "feedback", "reviewer": reviewer, "reviewed_at": now.isoformat(timespec="milliseconds"),
                "case_id": case_id, "candidates": str(candidates_path)}
        if decision.get("withdraw"):
            rows.append({"instruction": first["question"], "output": "", "sample": None, "withdraw": True, **base})
            counts["withdrawn"] += 1
            continue
        correction = (decision.get("correction") or "").strip()
        if correction:
            crisis = first.get("crisis")
            if not isinstance(crisis, bool):  # candidates of an older prep eval: judge what the user said
                crisis = crises_in_dialogues([[q for q, _ in base["history"]] + [first["question"]]])[0]
            output, added = ensure_referral(correction) if crisis else (correction, False)
            rows.append({"instruction": first["question"], "output": output, "sample": None, **base})
            counts["corrected"] += 1
            counts["referral_added"] += added
            continue
        accepted = [c for c in candidates if c["sample"] in set(decision.get("accept") or [])]
        for candidate in accepted:
            rows.append({"instruction": candidate["question"], "output": candidate["reply_guarded"], "sample": candidate["sample"], **base})
        counts["accepted" if accepted else "skipped"] += 1
        counts["answers"] += len(accepted)
    if not rows:
        return None, counts
    out = _new_feedback_file(Path(out_dir), reviewer, now)
    atomic_write_text(out, "".join(_json_line(row) for row in rows))
    return out, counts


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _new_feedback_file(out_dir: Path, reviewer: str, now: datetime) -> Path:
    """A file name of its own for this review: the reviewer's name (Chinese kept) and the time, and a number when
    that is taken, so an earlier review (another reviewer in the same second, or the same one) is never replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepError(f"--out-dir {out_dir}: is a file; expected a folder for feedback data.")
    name = re.sub(r"[^\w-]+", "_", reviewer.strip())[:32].strip("_") or "reviewer"
    stem = f"{name}_{now.strftime('%Y%m%dT%H%M%S')}"
    out, number = out_dir / f"{stem}.jsonl", 1
    while out.exists():
        number += 1
        out = out_dir / f"{stem}-{number}.jsonl"
    return out
