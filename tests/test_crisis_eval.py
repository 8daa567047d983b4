"""The crisis detector against the team's labelled set (data/tests/crisis_eval.csv).

Targets from the chat issue: recall >= 0.95 and false-positive rate <= 0.05,
on messages that include confounders (累死了, 笑死, 死磕, news, fiction, past
and recovered). The sets here were used to develop the lexicon (error
analysis); data/tests/crisis_holdout.csv was written independently and never
tuned on: bench/crisis_detector.py reports all of them.
"""

import pandas as pd
import pytest

from conftest import ROOT
from prep.safety import detect_crisis


def rates(path):
    frame = pd.read_csv(path, dtype={"text": str, "label": int})
    predicted = frame.text.map(lambda text: detect_crisis(text).crisis)
    positives, negatives = frame[frame.label == 1], frame[frame.label == 0]
    recall = predicted[positives.index].mean()
    false_positive_rate = predicted[negatives.index].mean()
    return len(positives), len(negatives), recall, false_positive_rate


@pytest.mark.parametrize("name", ["crisis_eval.csv", "crisis_dev2.csv", "crisis_dev3.csv"])
def test_detector_meets_recall_and_false_positive_targets(name):
    positives, negatives, recall, fpr = rates(ROOT / "data" / "tests" / name)
    assert positives >= 60 and negatives >= 60
    assert recall >= 0.95, f"recall {recall:.3f}"
    assert fpr <= 0.05, f"false-positive rate {fpr:.3f}"
