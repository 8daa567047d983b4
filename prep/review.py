"""``prep review``: a person picks the good candidate answers or writes a corrected one.

Accepted answers go to ``data/feedback/REVIEWER_TIME.jsonl`` as alpaca items
with ``origin: feedback``, the reviewer, the time and the candidate they came
from; ``prep build`` reads them as hand-labelled data with provenance
``feedback``. Decisions come from the terminal, or from a JSONL file for
scripts: ``{"case_id": "C001", "accept": [0, 2]}`` or
``{"case_id": "C001", "correction": "..."}`` (or ``"skip": true``).
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
from prep.resources import feedback_dir

FEEDBACK_DIR = feedback_dir()


def load_candidates(path: Path) -> dict[str, list[dict]]:
    """Candidates grouped by case, in file order."""
    groups: dict[str, list[dict]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PrepError(f"{path}: no such candidates file; run 'prep eval' first.") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            candidate = json.loads(line)
            groups.setdefault(candidate["case_id"], []).append(candidate)
        except (json.JSONDecodeError, KeyError):
            raise PrepError(f"{path}: line {number} is not a candidate (JSON with case_id).") from None
    return groups


def load_decisions(path: Path) -> dict[str, dict]:
    decisions = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            decision = json.loads(line)
            decisions[decision["case_id"]] = decision
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PrepError(f"{path}: line {number} is not a decision (JSON with case_id and accept/correction/skip).") from None
    return decisions


def ask_terminal(case_id: str, candidates: list[dict]) -> dict:
    """Show the K answers of one question and read the reviewer's decision."""
    print(f"\n=== {case_id} [{candidates[0]['kind']}] {candidates[0]['question']}")
    if candidates[0].get("reference"):
        print(f"    参考答案: {candidates[0]['reference']}")
    for candidate in candidates:
        print(f"  [{candidate['sample']}] {candidate['reply']}")
    while True:
        answer = input("accept which (e.g. 0,2), e = write a correction, s = skip, q = quit: ").strip().lower()
        if answer == "q":
            return {"quit": True}
        if answer == "s" or not answer:
            return {"skip": True}
        if answer == "e":
            text = input("corrected answer: ").strip()
            return {"correction": text} if text else {"skip": True}
        if re.fullmatch(r"\d+(\s*,\s*\d+)*", answer):
            return {"accept": [int(x) for x in answer.split(",")]}
        print("please answer with sample numbers, e, s or q")


def review(candidates_path: Path, reviewer: str, decisions_path: Path | None = None, out_dir: Path = FEEDBACK_DIR,
           ask: Callable[[str, list[dict]], dict] = ask_terminal) -> tuple[Path | None, dict]:
    """Apply decisions to the candidates; write accepted answers as feedback data."""
    if not reviewer.strip():
        raise PrepError("--reviewer is required: every accepted answer records who accepted it.")
    groups = load_candidates(candidates_path)
    decisions = load_decisions(decisions_path) if decisions_path else None
    now = datetime.now(timezone.utc)
    rows, counts = [], {"accepted": 0, "corrected": 0, "skipped": 0}
    for case_id, candidates in groups.items():
        decision = decisions.get(case_id, {"skip": True}) if decisions is not None else ask(case_id, candidates)
        if decision.get("quit"):
            break
        base = {"input": "", "system": DEFAULT_SYSTEM_PROMPT, "origin": "feedback", "reviewer": reviewer,
                "reviewed_at": now.isoformat(timespec="seconds"), "case_id": case_id, "candidates": str(candidates_path)}
        if decision.get("correction"):
            rows.append({"instruction": candidates[0]["question"], "output": decision["correction"], "sample": None, **base})
            counts["corrected"] += 1
            continue
        accepted = [c for c in candidates if c["sample"] in set(decision.get("accept") or [])]
        for candidate in accepted:
            rows.append({"instruction": candidate["question"], "output": candidate["reply_guarded"], "sample": candidate["sample"], **base})
        counts["accepted" if accepted else "skipped"] += len(accepted) or 1
    if not rows:
        return None, counts
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", reviewer)[:32] or "reviewer"
    out = Path(out_dir) / f"{safe}_{now.strftime('%Y%m%dT%H%M%S')}.jsonl"
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return out, counts
