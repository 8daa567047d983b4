"""Deduplication: exact (normalised hash) and near-duplicate (MinHash/LSH on character n-grams).

Chinese has no spaces, so shingles are character n-grams of the user turns.
Among duplicates the preferred record wins: hand-labelled over feedback over
distilled, then the earliest. ``near_groups`` clusters records at a lower
threshold so that the split can keep paraphrases on the same side.

LSH banding follows datasketch's ``MinHashLSH`` exactly (its bands and rows for
the threshold; two records are candidates when all values of one band are equal),
but the band keys are computed for all records at once with numpy and clusters
come from a sparse graph's connected components: the same candidates, without
datasketch's per-record Python storage (100k records: ~35 s -> a few seconds).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import numpy as np

from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from tqdm import tqdm

from prep.parallel import MIN_PARALLEL, map_chunks
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
    kept_hashes: np.ndarray | None  # MinHash values of the kept records, one row each


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


def _signature_matrix(texts: list[str], ngram: int, num_perm: int) -> np.ndarray:
    """len(texts) x num_perm MinHash values (datasketch's) of the texts' character n-grams."""
    sets = [[s.encode("utf-8") for s in shingles(text, ngram)] for text in texts]
    try:
        hashes = MinHash.bulk(sets, num_perm=num_perm, hashfunc=_shingle_hash)
    finally:
        _shingle_hash.cache_clear()
    return np.stack([h.hashvalues for h in hashes]) if hashes else np.empty((0, num_perm), dtype=np.uint64)


def signatures(records: list[Conversation], config: DedupConfig, workers: int | None = None,
               min_parallel: int = MIN_PARALLEL) -> np.ndarray:
    """MinHash of each record's user turns, one row per record; in worker processes for large inputs."""
    texts = [rec.user_text() for rec in records]
    return np.concatenate(map_chunks(_signature_matrix, texts, config.ngram, config.num_perm, workers=workers,
                                     min_parallel=min_parallel))


def _exact_key(rec: Conversation) -> str:
    joined = "\x1f".join(canonical_text(t.content) for t in rec.turns)
    return hashlib.blake2b(joined.encode("utf-8"), digest_size=16).hexdigest()


def band_ids(matrix: np.ndarray, threshold: float, num_perm: int) -> np.ndarray:
    """records x bands array: equal ids in a column mean equal band values (an LSH candidate pair).

    Ids are distinct across bands, so one id identifies a (band, bucket) pair.
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # only for its bands (b) and rows (r)
    ids = np.empty((len(matrix), lsh.b), dtype=np.int64)
    for band in range(lsh.b):
        block = np.ascontiguousarray(matrix[:, band * lsh.r:(band + 1) * lsh.r])
        rows = block.view(np.dtype((np.void, block.itemsize * lsh.r))).reshape(-1)  # one opaque value per row
        _, inverse = np.unique(rows, return_inverse=True)  # equal ids <=> equal band values
        ids[:, band] = inverse.reshape(-1) + band * len(matrix)
    return ids


def dedup(records: list[Conversation], config: DedupConfig = DedupConfig()) -> DedupResult:
    """Drop exact and near duplicates; each duplicate names the kept record it duplicates."""
    order = sorted(range(len(records)), key=lambda i: (ORIGIN_RANK.get(records[i].provenance.origin, 9), i))
    hashes = signatures(records, config) if config.near and records else None
    buckets = band_ids(hashes, config.threshold, config.num_perm).tolist() if hashes is not None else None
    kept_in_bucket: dict[int, int] = {}  # (band, bucket) id -> smallest kept record index in it
    seen: dict[str, int] = {}
    kept_ids, duplicates = [], []
    for index in tqdm(order, desc="dedup", unit="rec", disable=None, leave=False):
        rec = records[index]
        key = _exact_key(rec)
        twin, kind = seen.get(key), "exact_duplicate"
        if twin is None and buckets is not None:
            candidates = [kept_in_bucket[b] for b in buckets[index] if b in kept_in_bucket]
            twin, kind = (min(candidates) if candidates else None), "near_duplicate"
        if twin is not None:
            original = records[twin].provenance
            duplicates.append(Rejected(kind, rec.provenance, detail=f"duplicate of {original.source} {original.location}", raw=rec.first_question[:500]))
            continue
        seen[key] = index
        if buckets is not None:
            for b in buckets[index]:
                if kept_in_bucket.get(b, index) >= index:
                    kept_in_bucket[b] = index
        kept_ids.append(index)
    kept_ids.sort()
    return DedupResult([records[i] for i in kept_ids], duplicates, hashes[kept_ids] if hashes is not None else None)


def near_groups(matrix: np.ndarray, threshold: float, num_perm: int) -> list[int]:
    """Per record, the index of its cluster's first member; clusters join records whose estimated
    Jaccard similarity is >= ``threshold``, transitively.

    LSH buckets only propose pairs; each record is linked to its bucket's first record when
    their MinHash signatures agree on at least ``threshold`` of the values. Unverified
    buckets chain everything: at 0.5 (14 bands of 4) a pair at Jaccard 0.3 shares a bucket
    11% of the time, and 66,537 synthetic questions fell into one cluster, which put every
    record on the same side of the split.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(matrix)
    ids = band_ids(matrix, threshold, num_perm).reshape(-1)
    order = np.argsort(ids, kind="stable")
    members = np.repeat(np.arange(count), ids.size // count)[order]
    starts = np.r_[True, ids[order][1:] != ids[order][:-1]]
    heads = members[np.maximum.accumulate(np.where(starts, np.arange(ids.size), 0))]
    pairs = np.unique(np.stack([heads, members], axis=1)[heads != members], axis=0)
    similar = np.concatenate([(matrix[chunk[:, 0]] == matrix[chunk[:, 1]]).mean(axis=1) >= threshold
                              for chunk in np.array_split(pairs, max(1, len(pairs) // 50_000))])
    left, right = pairs[similar, 0], pairs[similar, 1]
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, count, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(count))
    return first[labels].tolist()
