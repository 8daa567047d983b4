"""Deterministic train/test split by a stable hash and a seed, paraphrases kept together.

A record's side is fixed by the canonical question of its near-duplicate
cluster's first member, so paraphrases that survived dedup still land on the
same side and test questions do not leak into training.
"""

from __future__ import annotations

import hashlib
from collections import Counter

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


def share_warning(records: int, test: int, test_size: float, groups: list[int] | None) -> str | None:
    """A sentence when the test share is far from ``test_size`` (off by more than half of it).

    Near-duplicate clusters go to one side whole, so one big cluster (a corpus built
    from a few templates, one question asked a thousand ways) can swing the share.
    """
    if test_size <= 0 or records < 20 or abs(test / records - test_size) <= test_size / 2:
        return None
    largest = Counter(groups).most_common(1)[0][1] if groups else 1
    return (f"the test split holds {test / records:.1%} of the kept rows instead of about {test_size:.0%}: "
            f"the largest near-duplicate cluster has {largest} rows ({largest / records:.0%}) and a cluster goes "
            "to one side whole; check the inputs for templated or repeated questions.")
