"""Deduplication: exact (normalised hash) and near-duplicate (MinHash/LSH on character n-grams).

Chinese has no spaces, so shingles are character n-grams of the user turns.
Among duplicates the preferred record wins: hand-labelled over feedback over
distilled, then the earliest. ``near_groups`` clusters records at a lower
threshold so that the split can keep paraphrases on the same side.

LSH banding follows datasketch's ``MinHashLSH`` (its bands and rows for the
threshold; two records are candidates when all values of one band are equal),
but the band keys are computed for all records at once with numpy (100k records:
~35 s -> a few seconds). A shared bucket only proposes a pair (rows at most
``BUCKET_NEIGHBOURS`` apart in it, so a bucket of thousands stays linear):
``dedup`` merges a pair when its n-gram Jaccard reaches the threshold (exact
where the MinHash estimate is near it), ``near_groups`` when its MinHash
agreement does. Unchecked buckets merged distinct questions that
share a sentence frame (on synthetic data, 82% of the near-duplicate merges had
Jaccard < 0.7; bench/README.md).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from tqdm import tqdm

from prep.parallel import MIN_PARALLEL, map_chunks
from prep.records import Conversation, Rejected

BUCKET_NEIGHBOURS = 8  # a row is paired with this many rows on either side of it in a bucket (see bucket_pairs)
VERIFY_MARGIN = 0.15  # MinHash agreement this far below the threshold (2.6 standard deviations at 0.7 and 64
# permutations) rules a candidate pair out without an exact comparison
ORIGIN_RANK = {"labelled": 0, "feedback": 1, "distilled": 2}
_STRIP = re.compile(r"[\s\W_]+", re.UNICODE)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate settings: character n-gram size, Jaccard thresholds, permutations."""

    ngram: int = 2  # calibrated: bench/calibrate_dedup.py, figures in bench/README.md
    threshold: float = 0.7
    # LSH banding that proposes pairs, each then checked at ``threshold``. bench/calibrate_dedup.py, paraphrase
    # recall: banding at 0.7 0.859, 0.6 0.910, 0.55 0.926, exact Jaccard over all pairs 0.928; 0.55 took 1.3x the
    # time of 0.6 on 200k synthetic conversations (bench/README.md)
    candidate_threshold: float = 0.6
    split_threshold: float = 0.5
    num_perm: int = 64
    near: bool = True


@dataclass
class DedupResult:
    kept: list[Conversation]
    duplicates: list[Rejected]
    kept_hashes: np.ndarray | None  # MinHash values of the kept records, one row each


def canonical_text(text: str) -> str:
    """Lower-cased text without whitespace and punctuation, the basis of duplicate keys; a text of symbols only
    (？, ……, 😭😭😭) keeps its symbols, without whitespace (stripped, every such text was one question)."""
    return _STRIP.sub("", text.lower()) or "".join(text.split())


def shingles(text: str, n: int) -> set[str]:
    """Character n-grams of the canonical text (the whole text when shorter than n)."""
    return canonical_shingles(canonical_text(text), n)


def canonical_shingles(text: str, n: int) -> set[str]:
    """Character n-grams of an already canonical text."""
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


def _precedence(rec: Conversation, index: int) -> tuple:
    """Which of two duplicates is kept: hand-labelled over reviewed (feedback) over distilled; among reviewed
    answers the newest review (a correction made after an accept replaces it); otherwise the first read."""
    reviewed = rec.provenance.created_timestamp() if rec.provenance.origin == "feedback" else None
    newest_first = -reviewed if reviewed is not None else 0.0  # a missing or hand-edited time: ranked as the oldest
    return ORIGIN_RANK.get(rec.provenance.origin, 9), newest_first, index


def _same_review_case(rec: Conversation, kept: Conversation) -> bool:
    """Several answers one review accepted for one case are alternatives the reviewer chose, not duplicates."""
    return rec.meta.get("review_case") is not None and rec.meta.get("review_case") == kept.meta.get("review_case")


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
    """Drop exact and near duplicates; each duplicate names the kept record it duplicates.

    A near duplicate's user turns have a character n-gram Jaccard similarity of at least ``config.threshold``
    with a record already kept (the measure ``bench/calibrate_dedup.py`` calibrated; computed exactly where the
    MinHash estimate is near the threshold, see ``similar_pairs``); it names the most similar one. LSH buckets, banded for the lower ``config.candidate_threshold``, only propose
    the pairs to compare: a shared bucket alone merged distinct questions (8 of 7,467 distinct seed pairs, e.g.
    失眠 vs 考试失利 in the same sentence frame) and missed paraphrases just above the threshold.
    """
    order = sorted(range(len(records)), key=lambda i: _precedence(records[i], i))
    hashes = signatures(records, config) if config.near and records else None
    if hashes is not None:  # near duplicates are found among distinct user texts, so 10,000 copies of 你好 are one text
        ids: dict[str, int] = {}
        text_of = [ids.setdefault(canonical_text(rec.user_text()), len(ids)) for rec in records]
        firsts = np.zeros(len(ids), dtype=np.int64)
        firsts[text_of[::-1]] = np.arange(len(records))[::-1]  # the first record of each distinct text
        texts = list(ids)
        grams = functools.lru_cache(maxsize=1 << 12)(lambda text: canonical_shingles(texts[text], config.ngram))
        similar = similar_pairs(grams, hashes[firsts], config)
        kept_with_text = [-1] * len(ids)  # per distinct user text, the record kept with it (at most one)
        merged_into = [-1] * len(ids)  # per distinct user text of a near duplicate, the kept text it joined
    seen: dict[str, int] = {}
    kept_ids, duplicates = [], []
    for index in tqdm(order, desc="dedup", unit="rec", disable=None, leave=False):
        rec = records[index]
        key = _exact_key(rec)
        twin, detail = seen.get(key), ""
        if twin is None and hashes is not None:
            text = text_of[index]
            twin_text, similarity = _nearest_kept_text(text, similar, kept_with_text, merged_into, grams, config.threshold)
            if twin_text is not None:
                twin, detail = kept_with_text[twin_text], f" (Jaccard {similarity:.2f})"
                merged_into[text] = twin_text
        if twin is not None and not _same_review_case(rec, records[twin]):
            original = records[twin].provenance
            duplicates.append(Rejected("near_duplicate" if detail else "exact_duplicate", rec.provenance,
                                       detail=f"duplicate of {original.source} {original.location}{detail}",
                                       raw=rec.first_question[:500], twin=original))
            continue
        seen.setdefault(key, index)
        if hashes is not None and kept_with_text[text_of[index]] < 0:
            kept_with_text[text_of[index]] = index
        kept_ids.append(index)
    kept_ids.sort()
    return DedupResult([records[i] for i in kept_ids], duplicates, hashes[kept_ids] if hashes is not None else None)


def _nearest_kept_text(text: int, similar: dict, kept_with_text: list[int], merged_into: list[int], grams,
                       threshold: float) -> tuple[int | None, float]:
    """The kept text most similar to ``text`` (Jaccard >= threshold) and the similarity, or (None, 0.0).

    Candidates are its similar texts that are kept and, for those that were merged as near duplicates, the
    kept texts they joined (checked exactly here): pairs are listed only between nearby members of a bucket,
    so in a run of near-identical records most pairs are with records that are duplicates themselves."""
    if kept_with_text[text] >= 0:
        return text, 1.0
    best, best_similarity, joined = None, 0.0, set()
    for other, similarity in similar.get(text, ()):
        if kept_with_text[other] >= 0:
            if (similarity, -kept_with_text[other]) > (best_similarity, -kept_with_text[best] if best is not None else 1):
                best, best_similarity = other, similarity
        elif merged_into[other] >= 0:
            joined.add(merged_into[other])
    mine = grams(text)
    for other in joined - ({best} if best is not None else set()):
        theirs = grams(other)
        similarity = len(mine & theirs) / len(mine | theirs)
        if similarity >= threshold and (similarity, -kept_with_text[other]) > (best_similarity, -kept_with_text[best] if best is not None else 1):
            best, best_similarity = other, similarity
    return best, best_similarity


def similar_pairs(grams, hashes: np.ndarray, config: DedupConfig) -> dict[int, list[tuple[int, float]]]:
    """Per text (``grams(text)`` gives its n-grams, ``hashes`` its MinHash row), the other texts whose character
    n-gram Jaccard similarity with it is >= ``config.threshold``, with the similarity.

    Only pairs that share an LSH bucket (banded for ``config.candidate_threshold``) are considered. A pair whose
    MinHash agreement is more than ``VERIFY_MARGIN`` below the threshold is ruled out and one more than that
    above it is ruled in (its agreement stands for the similarity); only the pairs in between, where the
    estimate could be wrong, are compared exactly.
    """
    ids = band_ids(hashes, config.candidate_threshold, config.num_perm)
    low, high = config.threshold - VERIFY_MARGIN, config.threshold + VERIFY_MARGIN
    kept = []
    for pairs in bucket_pairs(ids):
        agreement = _agreement(hashes, pairs)
        keep = agreement >= low
        kept.append((pairs[keep], agreement[keep]))
    pairs = np.concatenate([p for p, _ in kept]) if kept else np.empty((0, 2), dtype=np.int64)
    agreement = np.concatenate([a for _, a in kept]) if kept else np.empty(0)
    keys = pairs[:, 0] * len(ids) + pairs[:, 1]
    order = np.argsort(keys, kind="stable")  # np.unique's hash table is several times slower on millions of keys
    first = order[np.r_[True, keys[order][1:] != keys[order][:-1]]] if len(keys) else order
    keys = keys[first]
    similar: dict[int, list[tuple[int, float]]] = {}
    for key, estimate in zip(keys.tolist(), agreement[first].tolist()):
        left, right = divmod(key, len(ids))
        if estimate < high:
            mine, theirs = grams(left), grams(right)
            estimate = len(mine & theirs) / len(mine | theirs)
            if estimate < config.threshold:
                continue
        similar.setdefault(left, []).append((right, estimate))
        similar.setdefault(right, []).append((left, estimate))
    return similar


def bucket_pairs(ids: np.ndarray) -> Iterator[np.ndarray]:
    """The pairs of rows (i < j) that share a bucket id of ``band_ids`` and lie at most ``BUCKET_NEIGHBOURS``
    apart in it, in batches; a pair that shares several buckets may come more than once. All pairs of a bucket
    grew quadratically: 2,000 near-identical questions (我今年{i}岁，…) are 2 million pairs."""
    members, opens = _by_bucket(ids)
    starts = np.flatnonzero(opens)
    ends = np.repeat(np.r_[starts[1:], len(members)], np.diff(np.r_[starts, len(members)]))  # each position's bucket end
    position, offset = np.arange(len(members)), 1
    while offset <= BUCKET_NEIGHBOURS:  # pair each position with the one `offset` further on in its bucket
        position = position[position + offset < ends[position]]
        if not len(position):
            return
        for batch in np.array_split(position, max(1, len(position) // 1_000_000)):
            pair = np.stack([members[batch], members[batch + offset]], axis=1)
            yield np.sort(pair, axis=1)
        offset += 1


def _by_bucket(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``band_ids`` listed bucket by bucket (a row once per bucket it is in), and where each
    bucket's run opens (True at its first position)."""
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    members = np.repeat(np.arange(len(ids)), ids.shape[1])[order]
    return members, np.r_[True, flat[order][1:] != flat[order][:-1]]


def _agreement(matrix: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The share of MinHash values each pair of rows agrees on (the estimated Jaccard similarity), in chunks."""
    if not len(pairs):
        return np.empty(0)
    return np.concatenate([(matrix[chunk[:, 0]] == matrix[chunk[:, 1]]).mean(axis=1)
                           for chunk in np.array_split(pairs, max(1, len(pairs) // 50_000))])


def near_groups(matrix: np.ndarray, threshold: float, num_perm: int) -> list[int]:
    """Per record, the index of its cluster's first member; clusters join records whose estimated
    Jaccard similarity is >= ``threshold``, transitively.

    LSH buckets only propose pairs; each record is linked to its bucket's first record when
    their MinHash signatures agree on at least ``threshold`` of the values. Unverified
    buckets chain everything: at 0.5 (14 bands of 4) a pair at Jaccard 0.3 shares a bucket
    11% of the time, and 66,537 synthetic questions fell into one cluster, which put every
    record on the same side of the split.
    """
    members, opens = _by_bucket(band_ids(matrix, threshold, num_perm))
    heads = members[np.maximum.accumulate(np.where(opens, np.arange(len(members)), 0))]
    pairs = np.unique(np.stack([heads, members], axis=1)[heads != members], axis=0)
    return first_members(len(matrix), pairs[_agreement(matrix, pairs) >= threshold])


def first_members(count: int, pairs: np.ndarray) -> list[int]:
    """Per item of ``count``, the smallest index of its connected component under the (i, j) ``pairs``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if count else 0, count, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(count))
    return first[labels].tolist()
