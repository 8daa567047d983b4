"""Deterministic train/test split by a stable hash of the canonical question and a seed."""

from __future__ import annotations

import hashlib

from prep.dedup import canonical_text
from prep.records import Conversation


def split_bucket(question: str, seed: int) -> float:
    """A number in [0, 1) fixed by the question and the seed, the same on every machine."""
    digest = hashlib.sha256(f"{seed}\x1f{canonical_text(question)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(records: list[Conversation], test_size: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Return (train, test); the same question always lands on the same side."""
    train, test = [], []
    for rec in records:
        (test if split_bucket(rec.first_question, seed) < test_size else train).append(rec)
    return train, test
