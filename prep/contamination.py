"""Which evaluation questions a model was trained on, read from its run's manifest.

A reviewed answer fed back into training (``prep review`` -> ``prep build``) makes its question a training
question: the next ``prep eval`` on the same plan then measures how well the model recalls it, not how well it
answers a question it has not seen. ``prep eval`` marks such cases and scores the others apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from prep.dedup import canonical_text
from prep.errors import PrepError
from prep.fsutil import file_sha256
from prep.readers import read_path
from prep.records import Conversation


def trained_questions(run_manifest: str | Path | None) -> set[str] | None:
    """The canonical text of every user turn in the dataset files the run trained on (``run_manifest.json``'s
    ``datasets``, paths as the run saw them from its working folder); None when that cannot be known: no manifest
    (an endpoint, a model from elsewhere), or none of its dataset files left as the run read them (same SHA-256)."""
    if not run_manifest:
        return None
    manifest_path = Path(run_manifest)
    try:
        datasets = json.loads(manifest_path.read_text(encoding="utf-8")).get("datasets")
    except (OSError, ValueError, AttributeError):
        return None
    found = [(_dataset_file(name, manifest_path.parent), sha) for name, sha in datasets.items()] if isinstance(datasets, dict) else []
    # A file rebuilt since the run (another hash) is not what it trained on: what it trained on is then unknown.
    files = [file for file, sha in found if file is not None and file_sha256(file) == sha]
    if not files:
        return None
    questions: set[str] = set()
    for file in files:
        try:
            records = [item for item in read_path(file) if isinstance(item, Conversation)]
        except PrepError:  # changed into something unreadable since the run: what it held is unknown
            continue
        questions.update(canonical_text(turn.content) for rec in records for turn in rec.turns if turn.role == "user")
    return questions


def _dataset_file(name: str, run_dir: Path) -> Path | None:
    """A dataset path of the manifest: as written (relative to where the run started: run_sft.sh runs from the
    repository root, two folders above runs/NAME), else None."""
    path = Path(name)
    for candidate in (path, run_dir.parent.parent / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return candidate
    return None


def is_trained_on(question: str, questions: set[str] | None) -> bool | None:
    """Whether ``question`` was a training question; None when the training data is unknown."""
    return None if questions is None else canonical_text(question) in questions
