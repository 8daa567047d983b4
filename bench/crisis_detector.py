"""Recall and false-positive rate of the crisis detector, its lexicon and its classifier.

Training and development data (data/safety/*.csv and the seed's questions):
the lexicon was developed on crisis_eval, crisis_dev2 and crisis_dev3 (error
analysis, one round each); crisis_holdout was measured once blind and then
became training data. The classifier (prep/crisis_model.py) trains on all of
them; its n-gram range, regularisation, threshold, lexicon floor and discount
ceiling were chosen with ``--cv`` (leave-one-source-out cross-validation of
the whole detector over the training sources), never on the test sets.

Test sets (data/tests/, never trained or tuned on): crisis_holdout2 (200
rows), crisis_holdout3 (240 rows), crisis_holdout4 to crisis_holdout12 (300
rows each), crisis_long_holdout (300 messages of 80 to 150 characters, a third
comma-only run-ons), each written by an author who saw neither the detector nor the
other sets.

    python bench/crisis_detector.py          # figures per set
    python bench/crisis_detector.py -v       # ... and every miss and false alarm on the test sets
    python bench/crisis_detector.py --cv     # cross-validation used to choose the classifier's settings
"""

from __future__ import annotations

import contextlib
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from prep import crisis_model, safety  # noqa: E402
from prep.safety import _judged, _training_text, crisis_in_latest, crisis_score, detect_crisis  # noqa: E402

TEST_SETS = tuple(f"crisis_holdout{n}" for n in range(2, 13)) + ("crisis_long_holdout", "crisis_short_holdout2", "crisis_denial_holdout")
# Multi-turn dialogues (JSONL: user_turns, label = the reply to the last turn needs the referral), as chat.py judges them
DIALOGUE_SETS = (("test", ROOT / "data" / "tests" / "crisis_dialogue_holdout.jsonl"),
                 ("development", ROOT / "data" / "dev" / "crisis_dialogue_dev.jsonl"))
# data/dev/: labelled, neither trained on nor a blind test (crisis_professional: professionals' own crises and their
# ordinary questions, written as training data; training on it was tried and not kept, bench/README.md)
DEV_SETS = tuple(Path(path).stem for path in glob.glob(str(ROOT / "data" / "dev" / "*.csv")))


def labelled_sets() -> list[tuple[str, pd.DataFrame]]:
    sets = [(Path(path).stem, pd.read_csv(path, dtype={"text": str}))
            for folder in ("safety", "dev") for path in sorted(glob.glob(str(ROOT / "data" / folder / "*.csv")))]
    return sets + [(name, pd.read_csv(ROOT / "data" / "tests" / f"{name}.csv", dtype={"text": str})) for name in TEST_SETS]


def rates(predicted: pd.Series, labels: pd.Series) -> tuple[float, float]:
    return predicted[labels == 1].mean(), predicted[labels == 0].mean()


def report(verbose: bool) -> None:
    print("| set | use | crisis | ordinary | lexicon recall / FPR | classifier recall / FPR | detector recall / FPR |")
    print("|---|---|---|---|---|---|---|")
    sets = labelled_sets()
    for name, frame in sets:
        lexicon = frame.text.map(lambda text: detect_crisis(text, use_model=False).crisis)
        learned = frame.text.map(crisis_score) >= crisis_model.THRESHOLD
        detector = frame.text.map(lambda text: detect_crisis(text).crisis)
        use = "test" if name in TEST_SETS else "development" if name in DEV_SETS else "training"
        cells = [f"{r:.3f} / {f:.3f}" for r, f in (rates(p, frame.label) for p in (lexicon, learned, detector))]
        print(f"| {name} | {use} | {(frame.label == 1).sum()} | {(frame.label == 0).sum()} | {' | '.join(cells)} |")
        if verbose and name in TEST_SETS:
            for _, row in frame[detector != (frame.label == 1)].iterrows():
                print(f"    {'MISSED' if row.label else 'FALSE ALARM'}: {row.text}")
    dialogue_report(verbose)
    started = time.perf_counter()
    texts = [text for _, frame in sets for text in frame.text]
    for text in texts:
        detect_crisis(text)
    print(f"\ndetect_crisis: {(time.perf_counter() - started) / len(texts) * 1e6:.0f} us per message ({len(texts)} messages)")


def dialogue_report(verbose: bool) -> None:
    """Each dialogue set judged as chat.py judged it before (the last message alone) and does now (``crisis_in_latest``:
    the last message alone, or with the user's three before it)."""
    print("\n| dialogues | use | crisis | ordinary | last message alone: recall / FPR | with the three before it: recall / FPR |")
    print("|---|---|---|---|---|---|")
    for use, path in DIALOGUE_SETS:
        if not path.is_file():
            continue
        dialogues = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = pd.Series([d["label"] for d in dialogues])
        alone = pd.Series([detect_crisis(d["user_turns"][-1]).crisis for d in dialogues])
        latest = pd.Series([crisis_in_latest(d["user_turns"]) for d in dialogues])
        cells = [f"{r:.3f} / {f:.3f}" for r, f in (rates(p, labels) for p in (alone, latest))]
        print(f"| {path.stem} | {use} | {(labels == 1).sum()} | {(labels == 0).sum()} | {' | '.join(cells)} |")
        if verbose and use == "test":
            for n in latest[latest != (labels == 1)].index:
                print(f"    {'MISSED' if labels[n] else 'FALSE ALARM'}: {' / '.join(dialogues[n]['user_turns'])}")


def cross_validate() -> None:
    """Leave one training source out, for each classifier setting; the whole detector's recall / FPR (out-of-fold
    classifier scores, the lexicon and its floor, the discounts) at each threshold and lexicon floor, and for the
    shipped setting at each discount ceiling."""
    texts, labels, sources = crisis_model.training_examples()
    cleaned, denied = zip(*map(_judged, texts))
    labels, sources = np.array(labels), np.array(sources)
    shipped = (crisis_model.NGRAM_RANGE, crisis_model.REGULARISATION_C)
    for ngram_range in ((1, 3), (1, 4)):
        for regularisation in (10.0, 30.0, 60.0):
            with patched(crisis_model, NGRAM_RANGE=ngram_range, REGULARISATION_C=regularisation):
                scores = out_of_fold_scores(texts, cleaned, labels, sources)
            print(f"ngram_range={ngram_range} C={regularisation}", flush=True)
            for threshold in (0.45, 0.5, 0.55, 0.6):
                cells = [f"floor {floor}: {detector_rates(cleaned, denied, scores, labels, LEARNED_THRESHOLD=threshold, LEXICON_FLOOR=floor)}"
                         for floor in (0.0, 0.2, 0.3)]
                print(f"  threshold {threshold}: " + " | ".join(cells))
            if (ngram_range, regularisation) == shipped:
                cells = [f"ceiling {ceiling}: {detector_rates(cleaned, denied, scores, labels, DISCOUNT_CEILING=ceiling)}"
                         for ceiling in (1.01, 0.9, 0.8, 0.7)]  # 1.01: the discounts always apply
                print("  shipped threshold and floor, discount ceiling: " + " | ".join(cells))


def out_of_fold_scores(texts: list[str], cleaned: list[str], labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    scores = np.zeros(len(texts))
    for source in np.unique(sources):
        held = sources == source
        model = crisis_model.fit_routed([t for t, h in zip(texts, held) if not h], list(labels[~held]),
                                        list(sources[~held]), _training_text)
        scores[held] = model.probabilities([c for c, h in zip(cleaned, held) if h])
    return scores


def detector_rates(cleaned: list[str], denied: list[bool], scores: np.ndarray, labels: np.ndarray, **settings) -> str:
    """The whole detector's recall / FPR with some of ``prep.safety``'s settings replaced."""
    with patched(safety, **settings):
        predicted = np.array([safety._decide(c, score, safety.LEXICON_FLOOR, had_denial).crisis
                              for c, score, had_denial in zip(cleaned, scores, denied)])
    return f"{predicted[labels == 1].mean():.3f} / {predicted[labels == 0].mean():.3f}"


@contextlib.contextmanager
def patched(module, **values):
    saved = {name: getattr(module, name) for name in values}
    vars(module).update(values)
    try:
        yield
    finally:
        vars(module).update(saved)


if __name__ == "__main__":
    cross_validate() if "--cv" in sys.argv else report("-v" in sys.argv)
