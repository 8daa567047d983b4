"""Deterministic train/test split by a stable hash and a seed, paraphrases kept together.

A record's side is fixed by the canonical question of its near-duplicate
cluster's first member, so paraphrases that survived dedup still land on the
same side and test questions do not leak into training.
"""

from __future__ import annotations

import hashlib

from prep.dedup import canonical_text
from prep.records import Conversation


def split_bucket(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the key and the seed, the same on every machine."""
    digest = hashlib.sha256(f"{seed}\x1f{canonical_text(key)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(records: list[Conversation], test_size: float, seed: int, groups: list[int] | None = None) -> tuple[list[Conversation], list[Conversation]]:
    """Return (train, test). ``groups[i]`` is the index of record i's cluster representative."""
    train, test = [], []
    for index, rec in enumerate(records):
        key = records[groups[index]].first_question if groups else rec.first_question
        (test if split_bucket(key, seed) < test_size else train).append(rec)
    return train, test
