"""Deduplication: exact (normalised hash) and near-duplicate (MinHash/LSH on character n-grams).

Chinese has no spaces, so shingles are character n-grams of the question.
Among duplicates the preferred record wins: hand-labelled over feedback over
distilled, then the earliest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from prep.records import Conversation, Rejected

ORIGIN_RANK = {"labelled": 0, "feedback": 1, "distilled": 2}
_STRIP = re.compile(r"[\s\W_]+", re.UNICODE)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate settings: character n-gram size, Jaccard threshold, permutations."""

    ngram: int = 3
    threshold: float = 0.7
    num_perm: int = 64
    near: bool = True


def canonical_text(text: str) -> str:
    """Lower-cased text without whitespace and punctuation, the basis of duplicate keys."""
    return _STRIP.sub("", text.lower())


def shingles(text: str, n: int) -> set[str]:
    """Character n-grams of the canonical text (the whole text when shorter than n)."""
    text = canonical_text(text)
    if len(text) <= n:
        return {text}
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def _exact_key(rec: Conversation) -> str:
    joined = "\x1f".join(canonical_text(t.content) for t in rec.turns)
    return hashlib.blake2b(joined.encode("utf-8"), digest_size=16).hexdigest()


def dedup(records: list[Conversation], config: DedupConfig = DedupConfig()) -> tuple[list[Conversation], list[Rejected]]:
    """Return (kept, duplicates); each duplicate names the kept record it duplicates."""
    order = sorted(range(len(records)), key=lambda i: (ORIGIN_RANK.get(records[i].provenance.origin, 9), i))
    seen: dict[str, int] = {}
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm) if config.near else None
    shingle_sets = [sorted(t.encode("utf-8") for t in shingles(records[i].user_text(), config.ngram)) for i in order] if lsh else []
    hashes = MinHash.bulk(shingle_sets, num_perm=config.num_perm) if lsh else []
    kept_ids, duplicates = [], []
    for position, index in enumerate(order):
        rec = records[index]
        key = _exact_key(rec)
        twin = seen.get(key)
        kind = "exact_duplicate"
        if twin is None and lsh is not None:
            candidates = lsh.query(hashes[position])
            twin = min(candidates) if candidates else None
            kind = "near_duplicate"
        if twin is not None:
            original = records[twin].provenance
            duplicates.append(Rejected(kind, rec.provenance, detail=f"duplicate of {original.source} {original.location}", raw=rec.first_question[:500]))
            continue
        seen[key] = index
        if lsh is not None:
            lsh.insert(index, hashes[position])
        kept_ids.append(index)
    return [records[i] for i in sorted(kept_ids)], duplicates
