"""Calibrate the near-duplicate n-gram size and Jaccard threshold on short Chinese questions.

Positives: each seed question against light paraphrases of itself (a particle
added, 怎么办 -> 该怎么办, an adverb inserted, a clause dropped or moved) — the
edits a teacher makes when it repeats a question. Negatives: every pair of
distinct seed questions of the same category (the hardest real negatives).
Exact Jaccard on character n-grams, so the figures do not depend on MinHash noise;
then what ``prep.dedup.dedup`` (MinHash LSH candidates, checked by exact Jaccard)
does with each pair at its default settings.

    python bench/calibrate_dedup.py [SEED_DIR]
"""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prep.dedup import DedupConfig, dedup, shingles  # noqa: E402
from prep.records import Conversation, Provenance, Turn  # noqa: E402


def paraphrases(question: str, rng: random.Random) -> list[str]:
    clauses = [c for c in question.replace("？", "，").replace("。", "，").split("，") if c]
    variants = [
        question + "呢",
        question.replace("怎么办", "该怎么办才好") if "怎么办" in question else question + "，怎么办",
        question.replace("我", "我真的", 1),
        "最近" + question,
        question.replace("，", "，其实", 1),
    ]
    if len(clauses) >= 3:
        variants.append("，".join(clauses[:-1]))  # last clause dropped
        moved = clauses[1:] + clauses[:1]
        variants.append("，".join(moved))  # first clause moved to the end
    return [v for v in variants if v != question]


TEMPLATES = ["我最近总是{x}，怎么办？", "{x}让我很痛苦，该怎么调整？", "我是大学生，{x}，有什么建议吗？", "{x}，我是不是有问题？"]
CONCERNS = ["失眠", "很焦虑", "和父母吵架", "刚刚失恋", "考试失利", "被同事排挤", "拖延", "很自卑", "不想上班", "和对象冷战",
            "孩子不听话", "想念去世的奶奶"]


def hard_negatives() -> list[tuple[str, str]]:
    """Same sentence frame, different concern: short questions that must NOT be merged."""
    return [(t.format(x=a), t.format(x=b)) for t in TEMPLATES for a, b in itertools.combinations(CONCERNS, 2)]


def jaccard(a: str, b: str, n: int) -> float:
    x, y = shingles(a, n), shingles(b, n)
    return len(x & y) / len(x | y)


def main() -> None:
    seed_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "data" / "seed"
    frame = pd.concat([pd.read_csv(p, dtype=str) for p in sorted(seed_dir.glob("*.csv"))], ignore_index=True)
    rng = random.Random(0)
    positives = [(q, p) for q in frame.question for p in paraphrases(q, rng)]
    negatives = [(a, b) for _, group in frame.groupby("category") for a, b in itertools.combinations(group.question, 2)]
    negatives += hard_negatives()
    positives += [(t.format(x=c), p) for t in TEMPLATES for c in CONCERNS for p in paraphrases(t.format(x=c), rng)]
    print(f"{len(frame)} questions (median {int(frame.question.str.len().median())} chars), "
          f"{len(positives)} paraphrase pairs, {len(negatives)} distinct pairs (same category, and same frame with another concern)\n")
    print("| n | threshold | recall (paraphrases caught) | false-positive rate (distinct pairs merged) | F1 |")
    print("|---|---|---|---|---|")
    best = None
    for n in (2, 3, 4):
        pos = [jaccard(a, b, n) for a, b in positives]
        neg = [jaccard(a, b, n) for a, b in negatives]
        for threshold in (0.4, 0.5, 0.6, 0.7, 0.8):
            tp = sum(s >= threshold for s in pos)
            fp = sum(s >= threshold for s in neg)
            recall, fpr = tp / len(pos), fp / len(neg)
            precision = tp / (tp + fp) if tp + fp else 1.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            print(f"| {n} | {threshold} | {recall:.3f} | {fpr:.4f} | {f1:.3f} |")
            if best is None or f1 > best[0]:
                best = (f1, n, threshold)
    print(f"\nbest F1 {best[0]:.3f} at n={best[1]}, threshold={best[2]}")
    config = DedupConfig()
    merged = lambda pairs: sum(pair_merged(a, b, config) for a, b in pairs)
    print(f"\nprep.dedup.dedup at its defaults (n={config.ngram}, threshold {config.threshold}, LSH candidates at "
          f"{config.candidate_threshold}, {config.num_perm} permutations), each pair deduplicated on its own: "
          f"recall {merged(positives) / len(positives):.3f}, false-merge rate {merged(negatives) / len(negatives):.4f}")


def pair_merged(first: str, second: str, config: DedupConfig) -> bool:
    records = [Conversation([Turn("user", text), Turn("assistant", "-")], Provenance("pairs", f"row {i}")) for i, text in enumerate((first, second))]
    return bool(dedup(records, config).duplicates)


if __name__ == "__main__":
    main()
