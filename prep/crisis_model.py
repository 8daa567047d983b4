"""The learned half of the crisis detector: a character n-gram logistic regression.

The lexicon in ``prep.safety`` catches what it names and nothing else: on
messages written blind to it, it missed about half of the crises (see
bench/README.md). This model generalises from labelled examples to phrasings
the lexicon does not list. It is trained at first use (under a second, plus
importing scikit-learn) from the bundled labelled messages
(``data/safety/*.csv``: text,label; see ``prep.resources``) and the seed's crisis and ordinary
questions, so no weights are stored or downloaded.
``prep.safety.detect_crisis`` ORs it with the lexicon; use that, not this.

Features are character n-grams hashed into 2^20 columns with numpy (a rolling
polynomial hash over the code points of all texts at once), so scoring is a
handful of array operations per batch (~12 us a message in batches, ~100 us
alone) rather than scikit-learn's per-call machinery or a Python loop per
n-gram: ``prep build`` scores every user turn of large inputs.
N-grams never seen in training are left out of the norm, as a fitted vocabulary
would leave them out.

A message of a few characters is scored by a second model of the same kind,
trained on the short messages of every source only (``RoutedModel``): in the
whole-message model short texts were ruled by n-grams that long messages taught
(不想去 1.00 and 想睡了 0.57 as crises, 上吊 0.17 as none), and sets of short
messages added to its training moved its scores on long ones.
"""

from __future__ import annotations

import functools
import glob
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prep.resources import data_dir

TRAINING_GLOBS = ("safety/*.csv",)  # under prep.resources.data_dir()
SEED_GLOB = "seed/*.csv"
SEED_CRISIS_CATEGORY = "危机干预"
NGRAM_RANGE = (1, 3)
REGULARISATION_C = 60.0
# Chosen by leave-one-source-out cross-validation on the training sources (bench/crisis_detector.py --cv),
# for the whole detector. With all 8,243 messages, C = 60, threshold 0.45 and lexicon floor 0.2 give recall 0.951
# at a false-positive rate of 0.091 (C = 30 at 0.45: 0.953 / 0.098; C = 10 at 0.5: 0.945 / 0.098). Recall is put
# first because a missed crisis costs more than an unneeded referral.
THRESHOLD = 0.45
# A lexicon hit counts only when the classifier gives it at least this probability (0: the lexicon alone decides).
# Same cross-validation: floor 0.3 gives 0.947 / 0.085; floor 0 (every lexicon hit counts) 0.954 / 0.146.
LEXICON_FLOOR = 0.2
# The context discounts (news and fiction, professionals, past and recovered, jokes) apply only below this score:
# the classifier has seen those contexts, and when it is this sure the message is a crisis anyway. Same
# cross-validation: recall 0.947 (no ceiling) -> 0.951 at the same FPR (0.091); 0.9 gives 0.950, 0.7 0.952 (the
# same FPR: a few more of the 3,323 crisis messages, too few to move the ceiling on).
DISCOUNT_CEILING = 0.8


# Messages of at most SHORT_CHARS word characters are scored by the short-message model, trained on every
# labelled message of at most SHORT_TRAINING_CHARS (a margin, so texts near the limit have neighbours in training).
# The SHORT_ONLY_SOURCES train only that model: they were written as short chat messages (bench/README.md).
SHORT_CHARS = 10
SHORT_TRAINING_CHARS = 16
SHORT_ONLY_SOURCES = ("crisis_train_short2", "crisis_train_short3", "crisis_train_short_slang")
_NOT_WORD = re.compile(r"[\s\W_]+")


def text_length(text: str) -> int:
    """A text's length in word characters: no spaces, punctuation or emoji."""
    return len(_NOT_WORD.sub("", text))


def is_short(text: str) -> bool:
    """Whether the short-message model scores ``text`` (a cleaned message)."""
    return text_length(text) <= SHORT_CHARS


HASH_BITS = 20
_POLY = np.uint64(1_000_003)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of h * golden are well mixed
_SHIFT = np.uint64(64 - HASH_BITS)


@dataclass(frozen=True)
class NgramModel:
    """What scoring needs: per hashed n-gram idf (0 where unseen in training) and idf x coefficient."""

    idf: np.ndarray
    weight: np.ndarray
    intercept: float

    def probability(self, text: str) -> float:
        return float(self.probabilities([text])[0])

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """The probability of crisis for each text, all texts in one vectorised pass."""
        text_of, grams, counts = keyed_ngrams(texts)
        tf, idf = 1.0 + np.log(counts), self.idf[grams]
        norm = np.sqrt(np.bincount(text_of, weights=(tf * idf) ** 2, minlength=len(texts)))
        dot = np.bincount(text_of, weights=tf * self.weight[grams], minlength=len(texts))
        logit = np.divide(dot, norm, out=np.zeros(len(texts)), where=norm > 0)
        return 1.0 / (1.0 + np.exp(-(logit + self.intercept)))


@dataclass(frozen=True)
class RoutedModel:
    """Short texts (``SHORT_CHARS``) to the short-message model, the others to the whole-message model."""

    whole: NgramModel
    short: NgramModel

    def probabilities(self, texts: list[str]) -> np.ndarray:
        short = np.array([is_short(text) for text in texts], dtype=bool)
        scores = np.zeros(len(texts))
        for model, chosen in ((self.whole, ~short), (self.short, short)):
            if chosen.any():
                scores[chosen] = model.probabilities([text for text, take in zip(texts, chosen) if take])
        return scores


def keyed_ngrams(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct (text index, hashed character n-gram) pair in ``texts`` and its count, sorted by text.

    Whitespace runs count as one space. The texts are concatenated and hashed with a rolling polynomial hash
    in one pass; n-grams that would straddle two texts are dropped.
    """
    low, high = NGRAM_RANGE
    normal = [" ".join(text.split()) for text in texts]
    codes = np.frombuffer("".join(normal).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), [len(text) for text in normal])
    rolling, keys = codes, []
    for size in range(1, high + 1):
        if size > 1:
            rolling = rolling[:-1] * _POLY + codes[size - 1:]
        if size >= low:
            inside = owner[: len(owner) - size + 1] == owner[size - 1:]
            hashed = (((rolling[inside] + np.uint64(size)) * _GOLDEN) >> _SHIFT).astype(np.int64)
            keys.append((owner[: len(owner) - size + 1][inside] << HASH_BITS) | hashed)
    keys, counts = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
    return keys >> HASH_BITS, keys & ((1 << HASH_BITS) - 1), counts


def training_examples(root: Path | None = None) -> tuple[list[str], list[int], list[str]]:
    """Labelled user messages and the source of each: the safety sets (file stem) plus the seed's questions
    ("seed"; 危机干预 = crisis), under ``root`` (default: the bundled data folder)."""
    import pandas as pd

    root = data_dir() if root is None else root

    texts: list[str] = []
    labels: list[int] = []
    sources: list[str] = []
    for pattern in TRAINING_GLOBS:
        for path in sorted(glob.glob(str(root / pattern))):
            frame = pd.read_csv(path, dtype={"text": str}).dropna(subset=["text", "label"])
            texts += frame.text.tolist()
            labels += frame.label.astype(int).tolist()
            sources += [Path(path).stem] * len(frame)
    for path in sorted(glob.glob(str(root / SEED_GLOB))):
        frame = pd.read_csv(path, dtype=str).dropna(subset=["question"])
        texts += frame.question.tolist()
        labels += (frame.category == SEED_CRISIS_CATEGORY).astype(int).tolist()
        sources += ["seed"] * len(frame)
    return texts, labels, sources


def fit(texts: list[str], labels: list[int], prepare=lambda text: text) -> NgramModel:
    """Fit TF-IDF (sublinear, l2) + balanced logistic regression and keep only what scoring needs."""
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    text_of, grams, occurrences = keyed_ngrams([prepare(text) for text in texts])
    seen, compact = np.unique(grams, return_inverse=True)  # fit on the columns that occur, not all 2^20
    counts = csr_matrix((occurrences.astype(float), (text_of, compact)), shape=(len(texts), len(seen)))
    tfidf = TfidfTransformer(sublinear_tf=True)
    classifier = LogisticRegression(C=REGULARISATION_C, max_iter=5000, class_weight="balanced").fit(tfidf.fit_transform(counts), labels)
    idf, weight = np.zeros(1 << HASH_BITS), np.zeros(1 << HASH_BITS)
    idf[seen] = tfidf.idf_
    weight[seen] = tfidf.idf_ * classifier.coef_[0]
    return NgramModel(idf, weight, float(classifier.intercept_[0]))


def fit_routed(texts: list[str], labels: list[int], sources: list[str], prepare=lambda text: text) -> RoutedModel:
    """The whole-message model (every source but the short-only ones) and the short-message model (every source's
    messages of at most ``SHORT_TRAINING_CHARS``)."""
    whole = [n for n, source in enumerate(sources) if source not in SHORT_ONLY_SOURCES]
    short = [n for n, text in enumerate(texts) if text_length(prepare(text)) <= SHORT_TRAINING_CHARS]
    whole_model = fit([texts[n] for n in whole], [labels[n] for n in whole], prepare)
    if len({labels[n] for n in short}) < 2:  # labelled data without short messages of both kinds: one model
        return RoutedModel(whole_model, whole_model)
    return RoutedModel(whole_model, fit([texts[n] for n in short], [labels[n] for n in short], prepare))


@functools.lru_cache(maxsize=1)
def bundled_model(prepare) -> RoutedModel | None:
    """The models trained on the bundled data (once per process); None, with a warning, when there is none."""
    texts, labels, sources = training_examples()
    if len(set(labels)) < 2:
        warnings.warn(f"no labelled crisis messages under {data_dir()}; the crisis detector runs on its lexicon alone")
        return None
    return fit_routed(texts, labels, sources, prepare)
