"""The learned half of the crisis detector: a character n-gram logistic regression.

The lexicon in ``prep.safety`` catches what it names and nothing else: on
messages written blind to it, it missed about half of the crises (see
bench/README.md). This model generalises from labelled examples to phrasings
the lexicon does not list. It is trained at first use, in about a second, from
the bundled labelled messages (``data/safety/*.csv``: text,label) and the
seed's crisis and ordinary questions, so no weights are stored or downloaded.
``prep.safety.detect_crisis`` ORs it with the lexicon; use that, not this.

Scoring is done here in plain Python from the fitted vocabulary (a dict look-up
per n-gram, ~20 us a message) rather than through scikit-learn's per-call
machinery, because ``prep build`` scores every user turn of large inputs.
"""

from __future__ import annotations

import functools
import glob
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_GLOBS = ("data/safety/*.csv",)
SEED_GLOB = "data/seed/*.csv"
SEED_CRISIS_CATEGORY = "危机干预"
NGRAM_RANGE = (1, 3)
REGULARISATION_C = 10.0
# Chosen by leave-one-source-out cross-validation on the training sources (bench/crisis_detector.py --cv):
# recall 0.91 at a false-positive rate of 0.10 on confounder-heavy sets and 0.04 on ordinary counselling
# questions; recall is put first because a missed crisis costs more than an unneeded referral.
THRESHOLD = 0.5


@dataclass(frozen=True)
class NgramModel:
    """What scoring needs: per n-gram (idf, idf x coefficient), and the intercept."""

    terms: dict[str, tuple[float, float]]
    intercept: float

    def probability(self, text: str) -> float:
        terms = self.terms
        norm_sq, logit = 0.0, 0.0
        for gram, count in Counter(_ngrams(text)).items():
            term = terms.get(gram)
            if term is None:
                continue
            tf = 1.0 if count == 1 else 1.0 + math.log(count)
            norm_sq += (tf * term[0]) ** 2
            logit += tf * term[1]
        if norm_sq:
            logit /= math.sqrt(norm_sq)
        return 1.0 / (1.0 + math.exp(-(logit + self.intercept)))


def _ngrams(text: str) -> list[str]:
    low, high = NGRAM_RANGE
    text = " ".join(text.split())
    return [text[start:start + size] for size in range(low, high + 1) for start in range(len(text) - size + 1)]


def training_examples(root: Path = ROOT) -> tuple[list[str], list[int]]:
    """Labelled user messages: the safety sets plus the seed's questions (危机干预 = crisis)."""
    import pandas as pd

    texts: list[str] = []
    labels: list[int] = []
    for pattern in TRAINING_GLOBS:
        for path in sorted(glob.glob(str(root / pattern))):
            frame = pd.read_csv(path, dtype={"text": str}).dropna(subset=["text", "label"])
            texts += frame.text.tolist()
            labels += frame.label.astype(int).tolist()
    for path in sorted(glob.glob(str(root / SEED_GLOB))):
        frame = pd.read_csv(path, dtype=str).dropna(subset=["question"])
        texts += frame.question.tolist()
        labels += (frame.category == SEED_CRISIS_CATEGORY).astype(int).tolist()
    return texts, labels


def fit(texts: list[str], labels: list[int], prepare=lambda text: text) -> NgramModel:
    """Fit TF-IDF (sublinear, l2) + balanced logistic regression and keep only what scoring needs."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer=lambda text: _ngrams(prepare(text)), sublinear_tf=True)
    features = vectorizer.fit_transform(texts)
    classifier = LogisticRegression(C=REGULARISATION_C, max_iter=5000, class_weight="balanced").fit(features, labels)
    coefficients = classifier.coef_[0]
    idf = vectorizer.idf_
    terms = {gram: (float(idf[index]), float(idf[index] * coefficients[index])) for gram, index in vectorizer.vocabulary_.items()}
    return NgramModel(terms, float(classifier.intercept_[0]))


@functools.lru_cache(maxsize=1)
def bundled_model(prepare) -> NgramModel | None:
    """The model trained on the bundled data (once per process); None, with a warning, when there is none."""
    texts, labels = training_examples()
    if len(set(labels)) < 2:
        warnings.warn(f"no labelled crisis messages under {ROOT / 'data'}; the crisis detector runs on its lexicon alone")
        return None
    return fit(texts, labels, prepare)
