"""Deduplication: exact (normalised hash) and near-duplicate (MinHash/LSH on character n-grams).

Chinese has no spaces, so shingles are character n-grams of the user turns.
Among duplicates the preferred record wins: hand-labelled over feedback over
distilled, then the earliest. ``near_groups`` clusters records at a lower
threshold so that the split can keep paraphrases on the same side.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from tqdm import tqdm

from prep.records import Conversation, Rejected

ORIGIN_RANK = {"labelled": 0, "feedback": 1, "distilled": 2}
_STRIP = re.compile(r"[\s\W_]+", re.UNICODE)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate settings: character n-gram size, Jaccard thresholds, permutations."""

    ngram: int = 2  # calibrated: bench/calibrate_dedup.py, figures in bench/README.md
    threshold: float = 0.7
    split_threshold: float = 0.5
    num_perm: int = 64
    near: bool = True


@dataclass
class DedupResult:
    kept: list[Conversation]
    duplicates: list[Rejected]
    kept_hashes: list[MinHash] | None


def canonical_text(text: str) -> str:
    """Lower-cased text without whitespace and punctuation, the basis of duplicate keys."""
    return _STRIP.sub("", text.lower())


def shingles(text: str, n: int) -> set[str]:
    """Character n-grams of the canonical text (the whole text when shorter than n)."""
    text = canonical_text(text)
    if len(text) <= n:
        return {text}
    return {text[i : i + n] for i in range(len(text) - n + 1)}


# datasketch's own SHA-1 shingle hash, memoised: a corpus repeats the same few hundred thousand character
# n-grams millions of times, and hashing each occurrence was a third of the signature time.
_shingle_hash = functools.lru_cache(maxsize=1 << 20)(sha1_hash32)


def signatures(records: list[Conversation], config: DedupConfig) -> list[MinHash]:
    """MinHash of each record's user turns."""
    sets = [[s.encode("utf-8") for s in shingles(rec.user_text(), config.ngram)] for rec in records]
    try:
        return MinHash.bulk(sets, num_perm=config.num_perm, hashfunc=_shingle_hash)
    finally:
        _shingle_hash.cache_clear()


def _exact_key(rec: Conversation) -> str:
    joined = "\x1f".join(canonical_text(t.content) for t in rec.turns)
    return hashlib.blake2b(joined.encode("utf-8"), digest_size=16).hexdigest()


def dedup(records: list[Conversation], config: DedupConfig = DedupConfig()) -> DedupResult:
    """Drop exact and near duplicates; each duplicate names the kept record it duplicates."""
    order = sorted(range(len(records)), key=lambda i: (ORIGIN_RANK.get(records[i].provenance.origin, 9), i))
    hashes = signatures(records, config) if config.near else None
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm) if config.near else None
    seen: dict[str, int] = {}
    kept_ids, duplicates = [], []
    for index in tqdm(order, desc="dedup", unit="rec", disable=None, leave=False):
        rec = records[index]
        key = _exact_key(rec)
        twin, kind = seen.get(key), "exact_duplicate"
        if twin is None and lsh is not None:
            candidates = lsh.query(hashes[index])
            twin, kind = (min(candidates) if candidates else None), "near_duplicate"
        if twin is not None:
            original = records[twin].provenance
            duplicates.append(Rejected(kind, rec.provenance, detail=f"duplicate of {original.source} {original.location}", raw=rec.first_question[:500]))
            continue
        seen[key] = index
        if lsh is not None:
            lsh.insert(index, hashes[index])
        kept_ids.append(index)
    kept_ids.sort()
    return DedupResult([records[i] for i in kept_ids], duplicates, [hashes[i] for i in kept_ids] if hashes else None)


def near_groups(hashes: list[MinHash], threshold: float, num_perm: int) -> list[int]:
    """Cluster id per record: records linked by Jaccard >= ``threshold`` (transitively) share one."""
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for index, signature in enumerate(hashes):
        for other in lsh.query(signature):
            parent[find(index)] = find(other)
        lsh.insert(index, signature)
    return [find(i) for i in range(len(hashes))]
