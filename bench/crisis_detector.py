"""Recall and false-positive rate of the crisis detector on each labelled set.

crisis_eval.csv, crisis_dev2.csv and crisis_dev3.csv were used to develop the
lexicon (error analysis, one round each, each written independently by a
different author); crisis_holdout.csv was written independently and never
tuned on, so its figures are the honest estimate.

    python bench/crisis_detector.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from prep.safety import detect_crisis  # noqa: E402


def main() -> None:
    print("| set | crisis | ordinary | recall | false-positive rate |")
    print("|---|---|---|---|---|")
    for name in ("crisis_eval", "crisis_dev2", "crisis_dev3", "crisis_holdout"):
        frame = pd.read_csv(ROOT / "data" / "tests" / f"{name}.csv", dtype={"text": str, "label": int})
        predicted = frame.text.map(lambda text: detect_crisis(text).crisis)
        positives, negatives = frame.label == 1, frame.label == 0
        print(f"| {name} | {positives.sum()} | {negatives.sum()} | {predicted[positives].mean():.3f} | {predicted[negatives].mean():.3f} |")
        if "-v" in sys.argv:
            for _, row in frame[predicted != (frame.label == 1)].iterrows():
                print(f"    {'MISSED' if row.label else 'FALSE ALARM'}: {row.text}")


if __name__ == "__main__":
    main()
