"""Deterministic train/test split by a stable hash and a seed, paraphrases and shared turns kept together.

A record's side is fixed by the canonical user text of its group's first member.
A group joins near duplicates (paraphrases that survived dedup) and dialogues
that share a user turn, so neither a test question nor a later turn of a test
dialogue is trained on.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

from prep.dedup import canonical_text
from prep.records import Conversation

# A user turn links the dialogues it appears in when it says something (this many characters, canonical) and is
# not a pleasantry that many dialogues share (谢谢，我会试试的): those would chain unrelated dialogues together.
MIN_SHARED_TURN_CHARS = 6
MAX_SHARED_TURN_RECORDS = 10
# Shared turns link dialogues transitively (A shares a follow-up with B, B another with C…): a link that would make
# a group larger than this share of the records (or MAX_SHARED_TURN_RECORDS) is left out, so chains of generic
# follow-ups cannot put most of a corpus on one side.
MAX_GROUP_SHARE = 0.01


def split_bucket(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the key and the seed, the same on every machine."""
    digest = hashlib.sha256(f"{seed}\x1f{canonical_text(key)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_groups(records: list[Conversation], near: list[int] | None = None) -> list[int]:
    """Per record, the index of its group's first member: ``near`` clusters (``near[i]`` is record i's cluster
    representative) joined with the dialogues that share a user turn, up to a group size (MAX_GROUP_SHARE)."""
    by_turn: dict[str, set[int]] = defaultdict(set)
    for index, rec in enumerate(records):
        for turn in rec.turns:
            text = canonical_text(turn.content) if turn.role == "user" else ""
            if len(text) >= MIN_SHARED_TURN_CHARS:
                by_turn[text].add(index)
    groups = _Groups(list(near) if near else list(range(len(records))))  # near[i] is already its cluster's first member
    limit = max(MAX_SHARED_TURN_RECORDS, int(MAX_GROUP_SHARE * len(records)))
    for members in sorted(sorted(members) for members in by_turn.values() if 1 < len(members) <= MAX_SHARED_TURN_RECORDS):
        for other in members[1:]:
            groups.join(members[0], other, limit)
    return [groups.first(index) for index in range(len(records))]


class _Groups:
    """Union-find over record indices, each group named by its smallest index, joins bounded in size."""

    def __init__(self, first: list[int]):
        self.parent = list(first)
        self.size = Counter(first)

    def first(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def join(self, left: int, right: int, limit: int) -> None:
        left, right = self.first(left), self.first(right)
        if left != right and self.size[left] + self.size[right] <= limit:
            left, right = min(left, right), max(left, right)
            self.parent[right] = left
            self.size[left] += self.size.pop(right)


def split(records: list[Conversation], test_size: float, seed: int, groups: list[int] | None = None) -> tuple[list[Conversation], list[Conversation]]:
    """Return (train, test). ``groups[i]`` is the index of record i's group's first member (see
    :func:`split_groups`); without it, each record is its own group."""
    train, test = [], []
    for index, rec in enumerate(records):
        key = records[groups[index]].user_text() if groups else rec.user_text()
        (test if split_bucket(key, seed) < test_size else train).append(rec)
    if not train:  # one group, or a few rows, all drawn for test: training needs them more than a test does
        return test, []
    return train, test


def share_warning(records: int, test: int, test_size: float, groups: list[int] | None) -> str | None:
    """A sentence when the test share is far from ``test_size`` (off by more than half of it).

    Near-duplicate clusters go to one side whole, so one big cluster (a corpus built
    from a few templates, one question asked a thousand ways) can swing the share.
    """
    if test_size <= 0 or records < 20 or abs(test / records - test_size) <= test_size / 2:
        return None
    largest = Counter(groups).most_common(1)[0][1] if groups else 1
    share = f"the test split holds {test / records:.1%} of the kept rows instead of about {test_size:.0%}"
    if records * test_size < 10:  # a row's side is a hash: a few expected test rows can all miss by chance
        return (f"{share}: with {records} rows that can happen by chance (a row's side is fixed by a hash of its question); "
                "use more rows, or another --seed.")
    if largest / records < test_size / 2 and test / records < test_size / 2:  # no group is big enough to explain it
        return (f"{share}: were the inputs an earlier build's training file? Its rows are the ones this --seed sends to "
                "training again; build from that build's inputs, or use another --seed.")
    return (f"{share}: the largest group (near duplicates and dialogues sharing a turn) has {largest} rows ({largest / records:.0%}) "
            "and a group goes to one side whole; check the inputs for templated or repeated questions.")
